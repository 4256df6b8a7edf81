"""`pytest --gate-against REV`: every test that uses pytest-benchmark's `benchmark` fixture, timed in this tree
and in revision REV side by side (optcv.gate.pytest_ab), judged by the gate's rule; a regression fails the test.
A test that cannot be paired runs here as pytest-benchmark alone would, and the summary says why it was not gated.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import pytest

from optcv._io import work_folder, write_json, write_text
from optcv.errors import GateSetupError
from optcv.gate.config import GateConfig
from optcv.gate.pytest_ab import GatedTest, PytestGate, run_to_dict
from optcv.gate.sessions import SessionSettings
from optcv.gate.sides import Side, same_length_trees, sides_for, subject_hash
from optcv.gate.verdict import Thresholds
from optcv.report.pytest_gate import gate_test_failure, summary_lines

NOT_GATED_MARKER = "optcv_not_ab"


def with_src_layout(side: Side) -> Side:
    """A `src/` layout's packages come from the side's tree too, before an editable install of the head's."""
    src = side.tree / "src"
    return replace(side, extra_path=(*side.extra_path, src)) if src.is_dir() else side


class ABGatePlugin:
    def __init__(self, config: pytest.Config, against: str):
        self.config, self.against = config, against
        self.nodes: list[str] = []
        self.gate: PytestGate | None = None
        self.outcomes: dict[str, GatedTest] = {}
        self.sides: tuple[Side, Side] | None = None
        self.left_out: dict[str, str] = {}  # marked optcv_not_ab: node id -> the marker's reason
        self.same_code: str | None = None  # the hash both sides share, where nothing needed timing

    @pytest.hookimpl(trylast=True)  # after -k, -m and any plugin's selection: the tests this run will run
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        benchmarked = [item for item in items if "benchmark" in getattr(item, "fixturenames", ())]
        self.nodes = [item.nodeid for item in benchmarked if not item.get_closest_marker(NOT_GATED_MARKER)]
        self.left_out = {item.nodeid: " ".join(map(str, marker.args)) for item in benchmarked
                         if (marker := item.get_closest_marker(NOT_GATED_MARKER))}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        with ExitStack() as stack:
            if self.nodes and not self.config.option.collectonly:
                self._start(stack)
            return (yield)

    def _start(self, stack: ExitStack) -> None:
        option = self.config.getoption
        try:
            thresholds = Thresholds.load(option("gate_thresholds"), option("gate_threshold"))
            revision = None if self.against == "default" else self.against  # the merge-base with main, else HEAD~1
            sides = stack.enter_context(sides_for(revision, None, self.config.rootpath, None,
                                                  user_repository=True))
            if isinstance(sides, str):
                raise GateSetupError(f"--gate-against {self.against}: {sides}")
            workdir = stack.enter_context(work_folder("optcv-pytest-gate-"))
            base, head = (with_src_layout(same_length_trees(side, workdir)) for side in sides)
            self.sides = (base, head)
            slowdown = option("gate_slowdown")  # given, even as 0, the self-test times unchanged code on purpose
            if slowdown is None and not option("gate_even_if_unchanged"):
                self.same_code = same_code(base, head)
                if self.same_code:
                    return
            session_args = [a for found in self.config.hook.pytest_gate_session_args(config=self.config)
                            for a in found]
            self.gate = PytestGate(base, head, self.nodes, GateConfig(), thresholds, workdir,
                                   SessionSettings(tuple(session_args), slowdown_pct=slowdown or 0.0))
            stack.callback(self.gate.close)
            self.gate.start()
        except GateSetupError as exc:
            raise pytest.UsageError(f"optcv: {exc}") from None

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if self.gate is None or pyfuncitem.nodeid not in self.nodes:
            return None
        outcome = self.outcomes[pyfuncitem.nodeid] = self.gate.run(pyfuncitem.nodeid)
        fixture = pyfuncitem.funcargs.get("benchmark")
        if fixture is not None:
            fixture_extra_info(fixture, outcome)
        failure = gate_test_failure(outcome)
        if failure:
            pytest.fail(failure, pytrace=False)
        if outcome.finding is None:
            return None  # not paired: the test runs here, timed by pytest-benchmark alone
        return True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.nodes or self.config.option.collectonly:
            return
        lines = summary_lines(self.against, self.sides, [self.outcomes[n] for n in self.nodes if n in self.outcomes],
                              self.gate.gone if self.gate else [], self.left_out, self.same_code)
        terminalreporter.write_sep("=", f"optcv A/B gate against {self.against}")
        for line in lines:
            terminalreporter.write_line(line)
        if self.config.getoption("gate_summary"):
            write_text(self.config.getoption("gate_summary"), "\n".join(lines) + "\n")
        if self.config.getoption("gate_json"):
            write_json(self.config.getoption("gate_json"),
                       run_to_dict(self.against, self.sides, list(self.outcomes.values()),
                                   self.gate.gone if self.gate else [], self.same_code))


def same_code(base: Side, head: Side) -> str | None:
    """The hash of what both sides' tests are made of (optcv.gate.sides.subject_hash: code, declarations, weights,
    settings), where it is the same under the same interpreter: a commit that changed only documentation, whose
    timing would compare identical code."""
    found = subject_hash(head.tree)
    return found if base.python == head.python and subject_hash(base.tree) == found else None


def fixture_extra_info(fixture: Any, outcome: GatedTest) -> None:
    """pytest-benchmark's record of the test: the head's rounds as its statistics (each round's median call), and
    both sides, the change, its interval and the verdict in `extra_info` (`--benchmark-json`)."""
    fixture.extra_info["optcv_gate"] = outcome.to_dict()
    if outcome.finding is not None and outcome.head_rounds_us:
        fixture._mode = "optcv A/B gate"  # it was used: by the sides' sessions
        stats = fixture._make_stats(1)
        for us in outcome.head_rounds_us:
            stats.update(us / 1e6)


def register(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{NOT_GATED_MARKER}(reason): not A/B-gated by --gate-against (the reason is "
                                       "said in the summary)")
    against = config.getoption("gate_against")
    if not against or against == "none" or hasattr(config, "workerinput"):  # an xdist worker never gates
        return
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("optcv: --gate-against times each test alone on the machine; drop -n (xdist)")
    config.pluginmanager.register(ABGatePlugin(config, against), "optcv-ab-gate")

