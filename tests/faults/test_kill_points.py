"""Kill points: `compare`, `tune` and `run` killed (SIGKILL) or interrupted (SIGINT) at seeded-random moments —
some at a random time into the work, some in the middle of a write (tests/faults/pause_at_write.py) — then
run again. Nothing finished may be lost, no file left corrupt, and where the work is deterministic the final
results must equal an uninterrupted run's. And Ctrl-C always ends `tune` and `run` within seconds, with Optuna's
heartbeat thread running (SQLite storage).

The fast tier runs one point per command and signal; the full tier all of them and the Ctrl-C sweep. Each point
is isolated: one that hangs or fails is reported as its own failure, its process group killed, and the others
still run; no command outlives the module."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_image_folder

HERE = Path(__file__).resolve().parent
SEED = 20261129
TIMED_WORK_FRACTION = (0.05, 0.85)  # a kill at this fraction of an uninterrupted run's work time
PARALLEL = 2  # kill points exercised at once; each command is given one thread
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1"}
EXIT_SECONDS = 10.0  # after SIGINT, the command must have exited within this
# Interrupted: the CLI's exit 130, or (rarely, after it printed "interrupted") the process ended by SIGINT itself,
# which a shell reports as 130 too. Seen 3 times in 41 interrupted `tune` runs, with and without this session's
# changes; its cause is not found yet (noted on issue 18).
INTERRUPTED = (130, -signal.SIGINT)
SWEEP = {"tune": 8, "run": 6}  # Ctrl-C moments per command (full tier), evenly spread over the work

RUN_SETTINGS = ["compare.train_size=none", "compare.test_size=none", "compare.epochs=1", "compare.seeds=1",
                "compare.optimizers=SGD,Adam", "tune.train_size=50", "tune.val_size=20", "tune.trials=3",
                "tune.epochs=2", "tune.final_epochs=1", "bench.n_single=40", "bench.chunk=20", "bench.batch_sizes=8",
                "bench.batched_images=16", "bench.calibration_calls=10"]


@dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (data, out) → arguments after `optcv`
    finished: Callable[[Path], dict[str, Any]]  # what a run folder holds as finished: must survive any kill
    outcome: Callable[[Path], Any] | None  # the deterministic final result, equal to an uninterrupted run's


def _without_timing(history: dict[str, Any]) -> dict[str, Any]:
    return {**history, "epochs": [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")}
                                  for e in history["epochs"]]}


def _compare_finished(out: Path) -> dict[str, Any]:
    """Every epoch whose history was written, and every finished model's weights."""
    found: dict[str, Any] = {}
    for history in sorted(out.glob("*/seed-*/history.json")):
        run = str(history.parent.relative_to(out))
        for epoch in json.loads(history.read_text())["epochs"]:
            found[f"{run}/epoch-{epoch['epoch']}"] = epoch
        if (history.parent / "model.pt").is_file():
            found[f"{run}/model"] = _weights(history.parent / "model.pt")
    return found


def _weights(path: Path) -> list[list[float]]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return [state[k].flatten().tolist() for k in sorted(state)]


def _compare_outcome(out: Path) -> Any:
    histories = json.loads((out / "histories.json").read_text())
    weights = {str(p.parent.relative_to(out)): _weights(p) for p in sorted(out.glob("*/seed-*/model.pt"))}
    return {name: [_without_timing(h) for h in runs] for name, runs in histories.items()}, weights


def _tune_finished(out: Path) -> dict[str, Any]:
    from optuna.trial import TrialState

    from optcv.training.study_storage import default_storage, open_study

    if not (out / "study.db").is_file():
        return {}
    study = open_study(default_storage(out, 1), "optcv")
    return {f"trial {t.number}": (t.state.name, t.value, t.params) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def _run_finished(out: Path) -> dict[str, Any]:
    """Each finished stage's output files (the report is rebuilt by every run, by design: not a result)."""
    state = out / "stages.json"
    if not state.is_file():
        return {}
    return {stage: record["outputs"] for stage, record in json.loads(state.read_text())["stages"].items()
            if stage != "report"}


def _run_outcome(out: Path) -> Any:
    results = json.loads((out / "results.json").read_text())
    summary = [{k: v for k, v in s.items() if k not in ("seconds_per_epoch", "images_per_s")}
               for s in results["compare"]["summary"]]
    return {"compare": summary, "differences": results["compare"]["differences"],
            "finished": sorted(_run_finished(out))}


COMMANDS = {
    "compare": Command("compare", lambda d, o: [
        "compare", "--data-dir", str(d), "--optimizers", "SGD", "Adam", "--epochs", "2", "--seeds", "2",
        "--out", str(o), "--quiet"], _compare_finished, _compare_outcome),
    "tune": Command("tune", lambda d, o: [
        "tune", "--data-dir", str(d), "--trials", "4", "--epochs", "2", "--train-size", "200", "--val-size", "100",
        "--batch-size", "16", "--pruner", "none", "--final-epochs", "1", "--out", str(o), "--quiet"],
        _tune_finished, None),  # a restarted sampler draws other parameters: only nothing lost is asserted
    "run": Command("run", lambda d, o: ["run", "--data-dir", str(d), "--out", str(o), "--set", *RUN_SETTINGS,
                                        "--quiet"], _run_finished, _run_outcome),
}


@dataclass(frozen=True)
class KillPoint:
    command: str
    signal: signal.Signals
    at_write: bool  # else at a time into the work
    draw: float  # which write (a fraction of the uninterrupted run's writes), or when (of its work time)
    index: int = 0  # the point's number among its command's: two draws may round alike

    @property
    def id(self) -> str:
        where = f"write-{self.draw:.2f}" if self.at_write else f"time-{self.draw:.2f}"
        return f"{self.command}-{self.index}-{self.signal.name}-{where}"


def _kill_points() -> list[KillPoint]:
    rng = random.Random(SEED)
    plan = {"compare": 8, "tune": 4, "run": 2}
    points = []
    for command, n in plan.items():
        for i in range(n):  # both signals, at a time and in a write, for every command
            points.append(KillPoint(command, (signal.SIGINT, signal.SIGKILL)[i % 2], i % 4 in (1, 2),
                                    rng.uniform(*TIMED_WORK_FRACTION), i))
    return points


KILL_POINTS = _kill_points()


def _fast(points: list[KillPoint]) -> set[str]:
    """The first point of each command and signal: the fast tier's."""
    first: dict[tuple[str, signal.Signals], str] = {}
    for point in points:
        first.setdefault((point.command, point.signal), point.id)
    return set(first.values())


KILL_POINT_PARAMS = [pytest.param(p, id=p.id, marks=() if p.id in _fast(KILL_POINTS) else pytest.mark.full)
                     for p in KILL_POINTS]
SWEEP_POINTS = [KillPoint(command, signal.SIGINT, False, low + (high - low) * (i + 0.5) / n, i)
                for command, n in SWEEP.items() for i in range(n) for low, high in [TIMED_WORK_FRACTION]]


def _start(command: Command, data: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "pause_at_write.py"), *command.argv(data, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **SUBPROCESS_ENV, **env}, preexec_fn=_as_in_a_terminal,
                            start_new_session=True)


def _end_group(process: subprocess.Popen) -> None:
    """Kill whatever is left of a command and the processes it started (tune's workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.communicate()


def _as_in_a_terminal() -> None:
    """Ctrl-C's default disposition, as a command started from a terminal has it. A CI job started in the
    background (`nohup … &`) inherits SIGINT ignored, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> bool:
    """True once `condition` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.005)
    raise TimeoutError("the command neither reached the kill point nor ended")


def _started(out: Path) -> Callable[[], bool]:
    """The work has begun once the command wrote its first file (the imports and data loading are behind it)."""
    return lambda: out.is_dir() and any(out.rglob("*.json"))


@dataclass(frozen=True)
class Reference:
    work_seconds: float  # from the first file written to the last
    writes: int
    outcome: Any


def _reference(name: str, data: Path, folder: Path) -> Reference:
    """One uninterrupted run: its work time, its number of atomic writes and its outcome."""
    command = COMMANDS[name]
    out, count = folder / "out", folder / "writes"
    process = _start(command, data, out, {"OPTCV_FAULTS_COUNT": str(count)})
    _wait_for(_started(out), process)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    writes, last_write = count.read_text().split()
    return Reference(float(last_write) - started, int(writes), command.outcome(out) if command.outcome else None)


@dataclass(frozen=True)
class KillResult:
    reached: bool  # the kill landed before the command finished
    returncode: int | None
    stderr: str
    corrupt: list[str]
    lost: list[str]
    rerun: subprocess.CompletedProcess | None
    leftover_temporaries: list[str]
    outcome: Any
    error: str | None = None  # the point could not be exercised: a hang, a failed reference run
    exit_seconds: float | None = None  # from the signal to the command's exit


def _failed(error: str) -> KillResult:
    return KillResult(False, None, "", [], [], None, [], None, error)


def _isolated(exercise: Callable[..., KillResult], *args: Any) -> KillResult:
    """One point whatever happens in it: a hang or a crash of the harness is that point's failure alone."""
    try:
        return exercise(*args)
    except Exception as exc:  # noqa: BLE001 - reported as the point's own failure
        return _failed(f"{type(exc).__name__}: {exc}")


def _exercise(point: KillPoint, data: Path, reference: Reference, folder: Path) -> KillResult:
    command = COMMANDS[point.command]
    out, marker = folder / "out", folder / "writing"
    env = {}
    if point.at_write:
        env = {"OPTCV_FAULTS_PAUSE_AT": str(max(1, round(point.draw * reference.writes))),
               "OPTCV_FAULTS_MARKER": str(marker)}
    process = _start(command, data, out, env)
    if point.at_write:
        reached = _wait_for(marker.is_file, process)
    else:
        reached = _wait_for(_started(out), process)
        time.sleep(point.draw * reference.work_seconds)
        reached = process.poll() is None
    if not reached:
        process.communicate()
        return KillResult(False, process.returncode, "", [], [], None, [], None)
    signalled = time.monotonic()
    process.send_signal(point.signal)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        _end_group(process)
        return _failed(f"still running 120 s after {point.signal.name}: killed")
    exit_seconds = time.monotonic() - signalled
    if process.returncode == 0:  # the signal met a finished command (its interpreter shutting down)
        return KillResult(False, 0, stderr, [], [], None, [], None)
    before, corrupt = command.finished(out), _unreadable_files(out)
    rerun = subprocess.run([sys.executable, "-m", "optcv", *command.argv(data, out)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, **SUBPROCESS_ENV})
    after = command.finished(out)
    lost = [key for key, value in before.items() if after.get(key) != value]
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*.tmp")]
    outcome = command.outcome(out) if command.outcome and rerun.returncode == 0 else None
    return KillResult(True, process.returncode, stderr, corrupt, lost, rerun, leftovers, outcome,
                      exit_seconds=exit_seconds)


def _interrupt(point: KillPoint, data: Path, reference: Reference, folder: Path) -> KillResult:
    """Ctrl-C at a moment of the work, and nothing else: how long the command takes to end."""
    command, out = COMMANDS[point.command], folder / "out"
    process = _start(command, data, out, {})
    _wait_for(_started(out), process)
    time.sleep(point.draw * reference.work_seconds)
    if process.poll() is not None:
        process.communicate()
        return KillResult(False, process.returncode, "", [], [], None, [], None)
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=EXIT_SECONDS * 6)
    except subprocess.TimeoutExpired:
        _end_group(process)
        return _failed(f"still running {EXIT_SECONDS * 6:.0f} s after SIGINT: killed")
    return KillResult(process.returncode != 0, process.returncode, stderr, [], [], None, [], None,
                      exit_seconds=time.monotonic() - signalled)


def _unreadable_files(out: Path) -> list[str]:
    """Every JSON, checkpoint and resume state in the folder must load; a temporary left by a kill is not data."""
    bad = []
    for path in out.rglob("*"):
        if path.name.endswith(".tmp") or not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pt":
                torch.load(path, weights_only=True)
        except Exception as exc:
            bad.append(f"{path.relative_to(out)}: {type(exc).__name__}")
    return bad


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("kill-data"), train_per_class=20, test_per_class=10)


def _selected(request: pytest.FixtureRequest, test: str) -> list[KillPoint]:
    """The points of `test` this session runs (the tier and -k decide), so the fast tier exercises only its own."""
    ids = {item.callspec.id for item in request.session.items
           if getattr(item, "originalname", None) == test and hasattr(item, "callspec")}
    points = KILL_POINTS if test == "test_kill_point" else SWEEP_POINTS
    return [p for p in points if p.id in ids]


@pytest.fixture(scope="module")
def kill_results(request: pytest.FixtureRequest, data: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, KillResult]:
    """Every selected kill point and Ctrl-C moment, two at a time (each command runs on one thread)."""
    points, sweep = _selected(request, "test_kill_point"), _selected(request, "test_ctrl_c_ends_promptly")
    needed = sorted({p.command for p in (*points, *sweep)})
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        references: dict[str, Reference | KillResult] = dict(zip(needed, pool.map(
            lambda name: _isolated(_reference, name, data, tmp_path_factory.mktemp(f"reference-{name}")), needed),
            strict=True))

        def one(point: KillPoint, exercise: Callable[..., KillResult]) -> KillResult:
            reference = references[point.command]
            if isinstance(reference, KillResult):
                return _failed(f"the uninterrupted {point.command} run failed: {reference.error}")
            found = _isolated(exercise, point, data, reference, tmp_path_factory.mktemp("kill"))
            if not found.reached and found.error is None and not point.at_write:
                # A run faster than the reference (a shared machine) can finish its work before a late moment:
                # the point is tried once more, at half the time, rather than counted as exercised or failed.
                found = _isolated(exercise, dataclasses.replace(point, draw=point.draw / 2), data, reference,
                                  tmp_path_factory.mktemp("kill"))
            return found

        results = dict(zip([p.id for p in points], pool.map(lambda p: one(p, _exercise), points), strict=True))
        results |= dict(zip([f"sweep:{p.id}" for p in sweep], pool.map(lambda p: one(p, _interrupt), sweep),
                            strict=True))
    return {**results, **{f"reference:{k}": v for k, v in references.items()}}


@pytest.mark.parametrize("point", KILL_POINT_PARAMS)
def test_kill_point(point: KillPoint, kill_results: dict[str, Any], fault_tally) -> None:
    found: KillResult = kill_results[point.id]
    assert found.error is None, found.error
    assert found.reached, "the command finished before its kill point"
    fault_tally.kill_points += 1
    for stderr in (found.stderr, found.rerun.stderr if found.rerun else ""):
        if "Traceback" in stderr:
            fault_tally.tracebacks.append(f"{point.id}: {stderr.strip().splitlines()[-1]}")
    reference: Reference = kill_results[f"reference:{point.command}"]
    outcome_differs = COMMANDS[point.command].outcome is not None and found.outcome != reference.outcome
    if found.lost or found.corrupt or outcome_differs:
        fault_tally.lost_results.append(f"{point.id}: lost {found.lost}, corrupt {found.corrupt}")
    if point.signal is signal.SIGINT:
        assert found.returncode in INTERRUPTED and "interrupted" in found.stderr, found.stderr
        assert found.exit_seconds is not None and found.exit_seconds < EXIT_SECONDS, found.exit_seconds
    else:
        assert found.returncode == -signal.SIGKILL
    assert "Traceback" not in found.stderr, found.stderr
    assert not found.corrupt
    assert found.rerun is not None and found.rerun.returncode == 0, found.rerun and found.rerun.stderr
    assert "Traceback" not in found.rerun.stderr, found.rerun.stderr
    assert not found.lost
    assert not found.leftover_temporaries, "a killed writer's temporary file outlived the next run"
    if COMMANDS[point.command].outcome is not None:
        assert found.outcome == reference.outcome


@pytest.mark.sweep
@pytest.mark.parametrize("point", SWEEP_POINTS, ids=[p.id for p in SWEEP_POINTS])
def test_ctrl_c_ends_promptly(point: KillPoint, kill_results: dict[str, Any]) -> None:
    """Ctrl-C at many moments of `tune` and `run` (SQLite storage: Optuna's heartbeat thread runs during each
    trial) ends the command with exit 130 within EXIT_SECONDS, every time. Run with --ctrl-c-sweep (14 more
    interrupted runs, about 2 minutes): it found the interrupt landing inside an Optuna storage call, which left
    SQLite locked for 60 s about once in 40 (held until the call ends since, optcv._io.interrupts_deferred)."""
    found: KillResult = kill_results[f"sweep:{point.id}"]
    assert found.error is None, found.error
    assert found.reached, "the command finished before the signal"
    assert found.returncode in INTERRUPTED and "interrupted" in found.stderr, found.stderr
    assert "Traceback" not in found.stderr, found.stderr
    assert found.exit_seconds is not None and found.exit_seconds < EXIT_SECONDS, found.exit_seconds
