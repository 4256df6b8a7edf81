"""A side's pytest session for the A/B gate of pytest-benchmark tests: `python pytest_session.py PYTEST-ARGS`.

It runs the tests the coordinator names (the node ids in the file OPTCV_GATE_NODES, in that order) as the side's own
pytest would, with one difference: a test's `benchmark(fn, ...)` or `benchmark.pedantic(...)` call does not time on
its own but serves the coordinator's timing requests (optcv.gate.pytest_ab) over two pipes (OPTCV_GATE_FDS), then
returns the callable's result, so the test's own assertions run on this side. It imports the standard library and
pytest only: the side's tree, first on PYTHONPATH, is the only code of a side it runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    del sys.path[0]  # this folder must not shadow the side's modules

import pytest  # noqa: E402


def _protocol() -> Any:
    """The gate's message types (protocol.py beside this file), loaded by path under a private name."""
    spec = importlib.util.spec_from_file_location("_optcv_gate_protocol", HERE / "protocol.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


protocol = _protocol()


class Channel:
    """The gate's messages to and from the coordinator over the two inherited pipe ends."""

    def __init__(self, fds: str):
        read_fd, write_fd = (int(fd) for fd in fds.split(","))
        self.reader = os.fdopen(read_fd, "r", buffering=1)
        self.writer = os.fdopen(write_fd, "w", buffering=1)

    def send(self, message: Any) -> None:
        self.writer.write(protocol.encode(message) + "\n")
        self.writer.flush()

    def receive(self) -> Any:
        line = self.reader.readline()
        if not line:
            os._exit(3)  # the coordinator is gone: nothing to serve
        return protocol.decode(line)


def serve(channel: Channel, node: str, samples: Samples) -> None:
    """Answer Time requests for `node` until the coordinator releases the test."""
    channel.send(protocol.AtBenchmark(node))
    samples.calibrate()  # unpinned: a pool the callable's first calls start keeps every CPU
    with timed_thread_pinned():
        while isinstance(request := channel.receive(), protocol.Time | protocol.Profile):
            if isinstance(request, protocol.Time):
                channel.send(protocol.Timed(tuple(samples.take(request.calls))))
            else:
                channel.send(samples.profile(request.calls))


class timed_thread_pinned:  # noqa: N801 (a context manager, named for what holds inside it)
    """The calling thread (the one that runs the benchmarked callable) on one CPU while it serves, the same one in
    every session of both sides, as the gate's own workers run a one-thread case: left to the scheduler, it moves
    between vCPUs, and one vCPU of a shared VM can be steadily slower than the other. Threads the test started
    before (a runtime's pool) keep their CPUs; the thread gets its own back when the test is released."""

    def __enter__(self) -> None:
        self.before = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
        if self.before and len(self.before) > 1:
            os.sched_setaffinity(0, {max(self.before)})

    def __exit__(self, *exc: object) -> None:
        if self.before:
            os.sched_setaffinity(0, self.before)


# A timed sample lasts at least this long (a batch of calls where one call is shorter, as pytest-benchmark's own
# calibration does): the clock's cost and the self-test's wait then stay a small, known part of it.
SAMPLE_NS = 20_000
# The self-test's slowdown of the head (optcv.gate.pytest_ab): a busy wait after each timed sample, inside its
# timing, of this fraction of the sample's own time; 0 on the base, where the same check runs.
SLOWDOWN = float(os.environ.get("OPTCV_GATE_SLOWDOWN_PCT", "0")) / 100
# torch.profiler's events one profile of a failing test may hold: reading them costs about 70 µs an event (6 s for
# 2,000 calls of a 47-operator torchvision transform, and a failing test takes 16 profiles). Fewer calls where a
# call has many operators; a probe of a few calls counts them.
PROFILE_EVENTS = 20_000
PROFILE_PROBE_CALLS = 3


class Samples:
    """Per-call times of the benchmarked callable, as pytest-benchmark runs it: `args`/`kwargs`, or `setup`'s
    arguments made and `teardown` run outside the timing (one call a sample, then); `iterations` calls a call."""

    def __init__(self, target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                 setup: Callable[[], Any] | None = None, teardown: Callable[..., Any] | None = None,
                 iterations: int = 1):
        self.target, self.args, self.kwargs = target, args, kwargs or {}
        self.setup, self.teardown, self.iterations = setup, teardown, iterations
        self.batch = 1 if setup or teardown else 0  # 0: not calibrated yet
        self.events_per_call = 0.0  # torch.profiler's events per call: 0, not probed yet

    def arguments(self) -> tuple[tuple, dict]:
        made = self.setup() if self.setup else None
        return made if made else (self.args, self.kwargs)

    def calibrate(self) -> None:
        """The calls per sample, from warm calls: a first call (imports, caches) can be a thousand times longer."""
        if not self.batch:
            single = min(self._sample(1) for _ in range(5))
            self.batch = max(1, -(-SAMPLE_NS // max(int(single), 1)))

    def take(self, calls: int) -> list[float]:
        self.calibrate()
        return [self._sample(self.batch) for _ in range(max(1, calls // self.batch))]

    def profile(self, calls: int) -> Any:
        """`calls` calls under torch.profiler: each operator's time per call and the rest of the call (Profiled).
        Only where the callable has imported torch: without it there is no operator to name (no ops)."""
        if "torch" not in sys.modules:
            wall_us = self._per_call_ns(calls) / 1000
            return protocol.Profiled({}, wall_us, wall_us)
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        if not self.events_per_call:
            with torch_profile(activities=[ProfilerActivity.CPU]) as probe:
                self._per_call_ns(PROFILE_PROBE_CALLS)
            self.events_per_call = max(1.0, len(probe.events()) / PROFILE_PROBE_CALLS)
        calls = max(PROFILE_PROBE_CALLS, min(calls, int(PROFILE_EVENTS / self.events_per_call)))
        with torch_profile(activities=[ProfilerActivity.CPU]) as traced:
            wall_us = self._per_call_ns(calls) / 1000
        runs = calls * self.iterations
        ops = {e.key: e.self_cpu_time_total / runs for e in traced.key_averages() if e.self_cpu_time_total > 0}
        return protocol.Profiled(ops, wall_us, max(0.0, wall_us - sum(ops.values())), calls)

    def _per_call_ns(self, calls: int) -> float:
        if self.setup or self.teardown:  # each call its own sample: its arguments are made outside the timing
            return sum(self._sample(1) for _ in range(calls)) / calls
        return self._sample(calls)

    def _sample(self, batch: int) -> float:
        args, kwargs = self.arguments()
        target, runs = self.target, batch * self.iterations
        started = time.perf_counter_ns()
        for _ in range(runs):
            target(*args, **kwargs)
        ended = time.perf_counter_ns()
        # No overshoot is carried to the next sample: a carried preemption left the next samples without a wait,
        # and the gate's medians then read +5 % as +3.2 % (benchmarks/proofs/records/pytest-gate-boundary-*).
        deadline = ended + SLOWDOWN * (ended - started)
        now = time.perf_counter_ns()
        while now < deadline:
            now = time.perf_counter_ns()
        if self.teardown is not None:
            self.teardown(*args, **kwargs)
        return (now - started) / runs

    def result(self) -> Any:
        """One more call, untimed, whose result the test gets (its assertions run on it)."""
        args, kwargs = self.arguments()
        result = self.target(*args, **kwargs)
        if self.teardown is not None:
            self.teardown(*args, **kwargs)
        return result


class ServeRounds:
    """The worker's plugin: keeps the coordinator's tests in its order, reports what happens to each, and turns
    pytest-benchmark's fixture into a server of timed calls."""

    def __init__(self, channel: Channel, wanted: list[str]):
        self.channel = channel
        self.order = {node: i for i, node in enumerate(wanted)}
        self.collect_errors: dict[str, str] = {}

    def pytest_configure(self, config: pytest.Config) -> None:
        try:
            from pytest_benchmark.fixture import BenchmarkFixture, FixtureAlreadyUsed
        except ImportError:
            self.channel.send(protocol.Fatal("pytest-benchmark is not installed for this side's interpreter "
                                             f"{sys.executable}"))
            os._exit(2)
        channel = self.channel

        def once(fixture: Any, mode: str) -> None:
            if fixture._mode:  # as pytest-benchmark: a second use fails the test (and serves nothing twice)
                raise FixtureAlreadyUsed(f"Fixture can only be used once. Previously it was used in {fixture._mode} "
                                         "mode.")
            fixture._mode = mode

        def call(fixture: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            once(fixture, "benchmark(...)")
            samples = Samples(fn, args, kwargs)
            serve(channel, fixture.fullname, samples)
            return samples.result()

        def pedantic(fixture: Any, target: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                     setup: Callable[[], Any] | None = None, teardown: Callable[..., Any] | None = None,
                     rounds: int = 1, warmup_rounds: int = 0, iterations: int = 1) -> Any:
            if iterations > 1 and setup:
                raise ValueError("Can't use more than 1 `iterations` with a `setup` function.")
            once(fixture, "benchmark.pedantic(...)")
            samples = Samples(target, args, kwargs, setup, teardown, iterations)
            serve(channel, fixture.fullname, samples)
            return samples.result()

        BenchmarkFixture.__call__ = call  # type: ignore[method-assign,assignment]
        BenchmarkFixture.pedantic = pedantic  # type: ignore[method-assign]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors[report.nodeid] = _last_line(report.longreprtext)

    @pytest.hookimpl(trylast=True)  # after any plugin that reorders (pytest-randomly): the coordinator's order
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        benchmarked = {item.nodeid: sorted(getattr(item, "fixturenames", ())) for item in items
                       if "benchmark" in getattr(item, "fixturenames", ())}
        kept = sorted((i for i in items if i.nodeid in self.order), key=lambda i: self.order[i.nodeid])
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in self.order])
        items[:] = kept
        self.channel.send(protocol.Collected({i.nodeid: benchmarked.get(i.nodeid, []) for i in kept},
                                             tuple(sorted(set(benchmarked) - set(self.order))), self.collect_errors))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or not report.passed:
            self.channel.send(protocol.SideReport(report.nodeid, report.when, report.outcome, _outcome_line(report)))

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.channel.send(protocol.Finished(nodeid))

    def pytest_sessionfinish(self) -> None:
        self.channel.send(protocol.SessionEnd())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _outcome_line(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")[:300]
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        return crash.message.splitlines()[0][:300]
    return _last_line(report.longreprtext)


def main() -> int:
    channel = Channel(os.environ["OPTCV_GATE_FDS"])
    wanted = Path(os.environ["OPTCV_GATE_NODES"]).read_text(encoding="utf-8").splitlines()
    return int(pytest.main(sys.argv[1:], plugins=[ServeRounds(channel, wanted)]))


if __name__ == "__main__":
    sys.exit(main())
