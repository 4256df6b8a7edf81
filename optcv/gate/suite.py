"""The gate's cases are the benchmark suite's tests: on optcv's own trees, `optcv gate` times the tests of
benchmarks/test_latency.py that its patterns select, each in both revisions' pytest sessions, by the engine that
`pytest benchmarks --gate-against` uses (optcv.gate.pytest_ab). A case is written once, as that test; its id is the
test's parameter (`tutorial/onnxruntime/b1/t1`)."""

from __future__ import annotations

import fnmatch
import hashlib
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from optcv.errors import GateSetupError, OptcvError
from optcv.gate.config import ALL_CASES, GateConfig
from optcv.gate.pytest_ab import GatedTest, PytestGate
from optcv.gate.sessions import SessionSettings
from optcv.gate.sides import Side
from optcv.gate.verdict import CaseFinding, Thresholds
from optcv.measure.case import CaseId

SUITE_FILE = "benchmarks/test_latency.py"
# Every case of the suite, whatever tier the caller's own run is in; the cases the gate cannot resolve are marked.
SESSION_ARGS = ("--tier", "full")
COLLECT_ARGS = ("--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:optcv", "-p", "no:randomly",
                "-o", "addopts=", "-m", "not optcv_not_ab", *SESSION_ARGS)
COLLECT_TIMEOUT_S = 300.0
Log = Callable[[str], None]


# The suite's files that shape what a case times (its test, the fixtures that build it): with the code the test
# imports, what a change must touch to need timing.
SUITE_FILES = (SUITE_FILE, "benchmarks/conftest.py", "conftest.py")


def suite_code_hash(tree: Path) -> str:
    """The hash of what the suite's cases run in `tree`: optcv's modules that the test and the harness's memory and
    instruction workers import (optcv.gate.sides.timed_code_hash), and the suite's own files."""
    from optcv.build_cache import key_of, source_closure
    from optcv.gate.sides import timed_code_hash

    files = {name: hashlib.sha256((tree / name).read_bytes()).hexdigest() if (tree / name).is_file() else None
             for name in SUITE_FILES}
    return key_of({"harness": timed_code_hash(tree), "case": source_closure(tree, ("optcv.measure.case",)),
                   "suite": files})


def param_id(node: str) -> str:
    return node[node.index("[") + 1:-1] if node.endswith("]") and "[" in node else node


def suite_cases(head: Side) -> dict[str, str]:
    """Every gated case of the head's suite (its tests not marked optcv_not_ab), case id -> node id, in order."""
    if not (head.tree / SUITE_FILE).is_file():
        raise GateSetupError(f"{head.tree} has no {SUITE_FILE}, whose tests are the gate's cases; run the gate from "
                             "a clone of optcv, or declare your own models")
    done = subprocess.run([head.python, "-m", "pytest", *COLLECT_ARGS, SUITE_FILE], cwd=head.tree, env=head.env(),
                          capture_output=True, text=True, timeout=COLLECT_TIMEOUT_S)
    nodes = [line.strip() for line in done.stdout.splitlines() if line.startswith(SUITE_FILE + "::")]
    if done.returncode != 0 or not nodes:
        said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        raise GateSetupError(f"the head's {SUITE_FILE} does not collect: {said[-1] if said else done.returncode}")
    return {param_id(node): node for node in nodes}


def select_cases(cases: Mapping[str, str], config: GateConfig) -> dict[str, str]:
    """The cases of `config`'s models and backends (a training step is PyTorch's) that match its patterns."""
    chosen = {}
    for case, node in cases.items():
        parsed = CaseId.parse(case)
        if parsed.model not in config.models or parsed.runtime not in config.backends:
            continue
        if config.cases == (ALL_CASES,) or any(fnmatch.fnmatchcase(case, p) for p in config.cases):
            chosen[case] = node
    if not chosen:
        raise OptcvError(f"no gate case matches {' '.join(config.cases)} for models {', '.join(config.models)} "
                         f"and backends {', '.join(config.backends)}; case names look like "
                         "tutorial/onnxruntime/b1/t1 or tunable/train/b64/t1 ('all': every case)")
    return chosen


@dataclass
class SuiteTiming:
    findings: list[CaseFinding] = field(default_factory=list)
    retested: list[CaseFinding] = field(default_factory=list)  # the first passes of the re-tested cases
    notes: list[str] = field(default_factory=list)
    not_compared: list[tuple[str, str]] = field(default_factory=list)


def time_suite_cases(base: Side, head: Side, cases: Mapping[str, str], config: GateConfig, thresholds: Thresholds,
                     workdir: Path, settings: SessionSettings, log: Log, progress: bool) -> SuiteTiming:
    """Each case's test timed A/B in both sides' sessions and judged (a failing or undecided one re-tested)."""
    from tqdm.auto import tqdm

    timing = SuiteTiming()
    gate = PytestGate(base, head, list(cases.values()), config, thresholds, workdir, settings)
    try:
        gate.start()
        for case, node in tqdm(cases.items(), desc="gate", unit="case", disable=not progress or None):
            _record(case, gate.run(node), timing, log)
    finally:
        gate.close()
    return timing


def _record(case: str, outcome: GatedTest, timing: SuiteTiming, log: Log) -> None:
    if outcome.finding is None:
        reason = outcome.unpaired.value if outcome.unpaired else "not timed"
        timing.not_compared.append((case, reason + (f" ({outcome.detail})" if outcome.detail else "")))
        log(f"{case}: not compared: {timing.not_compared[-1][1]}")
        return
    if outcome.head_failure:
        timing.notes.append(f"{case}: its test fails on the head: {outcome.head_failure}")
    finding = replace(outcome.finding, case=case)
    timing.findings.append(finding)
    if outcome.first_pass is not None:
        timing.retested.append(replace(outcome.first_pass, case=case))
    log(f"{case}: {finding.change_pct:+.1f} % ({finding.ci_low_pct:+.1f} … {finding.ci_high_pct:+.1f}) → "
        f"{finding.verdict.value}")
