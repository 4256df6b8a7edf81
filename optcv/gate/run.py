"""One entry point to the A/B gate, for the CLI and the benchmark suite alike."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

from optcv.data import default_cache_dir
from optcv.gate.config import GateConfig
from optcv.gate.sides import sides_for
from optcv.gate.timing import Log, measure
from optcv.gate.verdict import GateResult, Thresholds


def run_gate(config: GateConfig = GateConfig(), thresholds: Thresholds = Thresholds(), *, against: str | None = None,
             base_python: str | None = None, head_tree: Path | None = None, repo: Path | None = None,
             data_dir: str | Path | None = None, log: Log = lambda _m: None, progress: bool = False
             ) -> GateResult | str:
    """The A/B gate of the head (this source tree) against `against` (default: see
    `default_base_revision`) and/or another interpreter; or, without a second side, the reason."""
    with ExitStack() as stack:
        sides = stack.enter_context(sides_for(against, base_python, head_tree, repo))
        if isinstance(sides, str):
            return sides
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optcv-gate-")))
        return measure(*sides, config, thresholds, data_dir=data_dir, cache_dir=default_cache_dir(),
                       workdir=workdir, log=log, progress=progress)
    raise AssertionError("unreachable")
