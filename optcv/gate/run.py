"""One entry point to the gate, for the CLI and the benchmark suite alike: the A/B gate of this tree against a
base; without a base, a set-up error (or, when asked for, the ratio gate as a labelled fallback); with the same
code on both sides, nothing to time."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optcv._io import work_folder
from optcv.data import default_cache_dir
from optcv.errors import GateSetupError
from optcv.gate.compare import Log, gate_cases, measure
from optcv.gate.config import GateConfig, require_backends
from optcv.gate.ratio import DEFAULT_BASELINE, RatioFallback, run_ratio_fallback
from optcv.gate.sides import Side, sides_for, subject_hash
from optcv.gate.suite import suite_code_hash
from optcv.gate.verdict import SAME_CODE_SCHEMA, GateResult, Thresholds


@dataclass(frozen=True)
class SameCode:
    """Base and head hold the same timed optcv code under the same interpreter (a commit that changed only the
    README, the tests or the gate itself: optcv.gate.suite.suite_code_hash): timing them would compare identical
    code, so nothing was timed."""

    base: str
    head: str
    code_hash: str
    user_models: bool = False  # the sides are a user's repository: what was compared is their models' files

    @property
    def regressions(self) -> list[Any]:
        return []

    @property
    def failures(self) -> list[Any]:
        return []

    def raise_for_regressions(self) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SAME_CODE_SCHEMA, "base": self.base, "head": self.head, "code_hash": self.code_hash,
                "user_models": self.user_models}


GateOutcome = GateResult | RatioFallback | SameCode


def run_gate(config: GateConfig = GateConfig(), thresholds: Thresholds = Thresholds(), *, against: str | None = None,
             base_python: str | None = None, head_tree: Path | None = None, repo: Path | None = None,
             data_dir: str | Path | None = None, baseline: str | Path = DEFAULT_BASELINE,
             even_if_unchanged: bool = False, allow_no_base: bool = False, log: Log = lambda _m: None,
             progress: bool = False) -> GateOutcome:
    """This tree against `against` (default: see `default_base_revision`) and/or another interpreter. Without
    a base a gate that passed would have checked nothing, so that is a GateSetupError unless `allow_no_base`
    asks for the ratio gate instead."""
    with ExitStack() as stack:
        sides = stack.enter_context(sides_for(against, base_python, head_tree, repo,
                                              user_repository=config.declarations is not None,
                                              copy_head=config.copy_head_tree))
        if isinstance(sides, str):
            return _without_base(sides, config, baseline, allow_no_base, data_dir, log)
        # A selection that matches nothing is an error, also on a commit with nothing to time, so that a mistyped
        # --cases never passes for a quiet one; so is a backend this interpreter cannot run.
        cases = gate_cases(config, sides[1])
        require_backends(cases.specs)
        if not even_if_unchanged and (same := _same_code(*sides)):
            return same
        workdir = stack.enter_context(work_folder("optcv-gate-"))
        return measure(*sides, config, thresholds, data_dir=data_dir, cache_dir=default_cache_dir(),
                       workdir=workdir, log=log, progress=progress, cases=cases)
    raise AssertionError("unreachable")


def _without_base(reason: str, config: GateConfig, baseline: str | Path, allow_no_base: bool,
                  data_dir: str | Path | None, log: Log) -> RatioFallback:
    if config.declarations is not None:  # no ratios are recorded for a user's models
        raise GateSetupError(f"no base to time against: {reason}; give --against REV")
    if not allow_no_base:
        raise GateSetupError(f"no base to time against: {reason}; give --against REV, or --allow-no-base to "
                             "gate on the ratios recorded for this machine instead")
    log(f"no second side: {reason}; falling back to the ratio gate")
    return run_ratio_fallback(reason, baseline, models=config.models, data_dir=data_dir, log=log)


def _same_code(base: Side, head: Side) -> SameCode | None:
    hash_of = subject_hash if head.harness else suite_code_hash
    found = hash_of(head.source_tree)
    if base.python != head.python or hash_of(base.tree) != found:
        return None
    return SameCode(base.revision or str(base.tree), head.revision or str(head.source_tree), found,
                    user_models=head.harness is not None)
