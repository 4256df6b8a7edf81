"""Kill points: `compare`, `tune` (one worker and two), `run`, `gate` and `bisect` killed (SIGKILL to the command) or
interrupted (SIGINT to its whole process group, as Ctrl-C in a terminal) at seeded-random moments — some at a random
time into the work, some in the middle of a write (tests/faults/pause_at_write.py) — then run again. Nothing
finished may be lost, no file left corrupt, no process of the command's group left running, and where the work is
deterministic the final results must equal an uninterrupted run's.

The pull-request tier runs one point per signal of compare, tune and run; the nightly tier all of them. Each point is
isolated: one that hangs or fails is reported as its own failure, its process group killed, and the others still
run. Every wait has a time-out, and whatever ends a point, its command's whole group is gone afterwards
(tests/faults/groups.py). How fast Ctrl-C ends a command is a timing, measured alone: benchmarks/test_interrupt.py."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_image_folder
from tests.faults.groups import group_members, left_behind, output, own_group, start

HERE = Path(__file__).resolve().parent
SEED = 20261129
TIMED_WORK_FRACTION = (0.05, 0.85)  # a kill at this fraction of an uninterrupted run's work time
PARALLEL = 2  # kill points exercised at once; each command is given one thread
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1"}
SIGNAL_TIMEOUT = 120.0  # after the signal, a command still running fails its point (and its group is killed)
RUN_TIMEOUT = 600.0  # an uninterrupted run, or the run after a kill
START_TIMEOUT = 120.0  # for a command to reach its kill point
# Interrupted: the CLI's exit 130, or (rarely, after it printed "interrupted") the process ended by SIGINT itself,
# which a shell reports as 130 too. Seen 3 times in 41 interrupted `tune` runs, with and without this session's
# changes; its cause is not found yet (noted on issue 18).
INTERRUPTED = (130, -signal.SIGINT)
SWEEP = {"tune": 8, "run": 6}  # Ctrl-C moments per command (benchmarks/test_interrupt.py), evenly spread over the work

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
    in_repository: bool = False  # runs in a clone of a user's repository of five commits (tests/user_repo.py)
    pull_request_tier: bool = False  # one of its points runs in the pull-request tier too


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


def _recorded_runs(out: Path) -> dict[str, Any]:
    """The runs a command recorded in its history database (read with sqlite3: reading must not create it), and its
    JSON result where it wrote one."""
    import sqlite3

    found: dict[str, Any] = {}
    if (out / "history.sqlite").is_file():
        with sqlite3.connect(f"file:{out / 'history.sqlite'}?mode=ro", uri=True) as db:
            # A kill before the first transaction committed leaves a database without tables: nothing finished.
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone():
                found = {f"run {i}": (kind, passed)
                         for i, kind, passed in db.execute("SELECT id, kind, passed FROM runs")}
    for name in ("gate.json", "bisect.json"):
        if (out / name).is_file():
            found[name] = json.loads((out / name).read_text())["schema"]
    return found


def _bisect_outcome(out: Path) -> Any:
    """Which commit the search named, by its message (each run's clone has the same commits)."""
    result = json.loads((out / "bisect.json").read_text())
    message = subprocess.run(["git", "-C", str(out.parent / "repo"), "log", "-1", "--format=%s",
                              result["first_slower"]], capture_output=True, text=True, check=True).stdout.strip()
    return result["outcome"], message


TUNE = ["tune", "--trials", "4", "--epochs", "2", "--train-size", "200", "--val-size", "100", "--batch-size", "16",
        "--pruner", "none", "--final-epochs", "1", "--quiet"]
TIMED_IN_REPOSITORY = ["--models", "tiny", "--workers", "1", "--case-seconds", "1", "--quiet"]
COMMANDS = {
    "compare": Command("compare", lambda d, o: [
        "compare", "--data-dir", str(d), "--optimizers", "SGD", "Adam", "--epochs", "2", "--seeds", "2",
        "--out", str(o), "--quiet"], _compare_finished, _compare_outcome, pull_request_tier=True),
    # A restarted sampler draws other parameters: for tune, only nothing lost is asserted.
    "tune": Command("tune", lambda d, o: [*TUNE, "--data-dir", str(d), "--out", str(o)], _tune_finished, None,
                    pull_request_tier=True),
    # Trials of seconds each (30 epochs), so a worker orphaned by a killed command would still be training well
    # after its command ended: with 8 epochs the last trials ended within the 3 s a group gets, hiding the orphans.
    "tune-2-workers": Command("tune-2-workers", lambda d, o: [
        *TUNE, "--workers", "2", "--epochs", "30", "--trials", "6", "--data-dir", str(d), "--out", str(o)],
        _tune_finished, None),
    "run": Command("run", lambda d, o: ["run", "--data-dir", str(d), "--out", str(o), "--set", *RUN_SETTINGS,
                                        "--quiet"], _run_finished, _run_outcome, pull_request_tier=True),
    # Identical code on both sides, and a threshold no noise reaches: these points check faults, not verdicts.
    "gate": Command("gate", lambda d, o: [
        "gate", "--against", "HEAD~1", "--even-if-unchanged", "--cases", "tiny/pytorch/b1/t1", "--threshold", "900",
        *TIMED_IN_REPOSITORY, "--history", str(o / "history.sqlite"), "--json", str(o / "gate.json"),
        "--summary", str(o / "gate.md")], _recorded_runs, None, in_repository=True),
    # The slower commit is twice as slow (tests/user_repo.py's NETS with 30 exp/log pairs): found every time.
    "bisect": Command("bisect", lambda d, o: [
        "bisect", "--good", "HEAD~4", "--bad", "HEAD", "--case", "tiny/pytorch/b1/t1", *TIMED_IN_REPOSITORY,
        "--history", str(o / "history.sqlite"), "--json", str(o / "bisect.json")], _recorded_runs, _bisect_outcome,
        in_repository=True),
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
    plan = {"compare": 8, "tune": 4, "run": 2, "tune-2-workers": 4, "gate": 2, "bisect": 2}
    points = []
    for command, n in plan.items():
        for i in range(n):  # both signals, at a time and in a write, for every command
            points.append(KillPoint(command, (signal.SIGINT, signal.SIGKILL)[i % 2], i % 4 in (1, 2),
                                    rng.uniform(*TIMED_WORK_FRACTION), i))
    return points


KILL_POINTS = _kill_points()


def _pull_request_tier(points: list[KillPoint]) -> set[str]:
    """One point of each command that runs in the pull-request tier, the signals alternated between them (every
    point of every command runs nightly)."""
    commands = [c for c in dict.fromkeys(p.command for p in points) if COMMANDS[c].pull_request_tier]
    chosen = {c: (signal.SIGINT, signal.SIGKILL)[i % 2] for i, c in enumerate(commands)}
    first: dict[str, str] = {}
    for point in points:
        if chosen.get(point.command) == point.signal:
            first.setdefault(point.command, point.id)
    return set(first.values())


KILL_POINT_PARAMS = [pytest.param(p, id=p.id, marks=() if p.id in _pull_request_tier(KILL_POINTS) else
                                  pytest.mark.full) for p in KILL_POINTS]
SWEEP_POINTS = [KillPoint(command, signal.SIGINT, False, low + (high - low) * (i + 0.5) / n, i)
                for command, n in SWEEP.items() for i in range(n) for low, high in [TIMED_WORK_FRACTION]]


@dataclass(frozen=True)
class Place:
    """Where one run of a command happens: its data, its output folder and the folder it runs in."""

    data: Path
    out: Path
    cwd: Path


def _place(command: Command, data: Path, folder: Path, repository: Path | None) -> Place:
    """`folder`/out for the output; for a command that runs in a user's repository, a clone of `repository` in
    `folder`/repo (the same commits every run)."""
    if command.in_repository:
        assert repository is not None, f"{command.name} runs in a user's repository"
        subprocess.run(["git", "clone", "-q", str(repository), str(folder / "repo")], check=True, capture_output=True)
    return Place(data, folder / "out", folder / "repo" if command.in_repository else Path.cwd())


def _start(command: Command, place: Place, env: dict[str, str]) -> subprocess.Popen:
    """The command, in a session of its own (its group id is its pid), with the writes counted and the moment its
    imports are done marked (tests/faults/pause_at_write.py)."""
    return start([sys.executable, str(HERE / "pause_at_write.py"), *command.argv(place.data, place.out)],
                 place.out.parent / "logs", cwd=place.cwd, preexec_fn=_as_in_a_terminal,
                 env={**os.environ, **SUBPROCESS_ENV, "OPTCV_FAULTS_STARTED": str(_marker(place)), **env})


def _marker(place: Place) -> Path:
    return place.out.parent / "started"


def _as_in_a_terminal() -> None:
    """Ctrl-C's default disposition, as a command started from a terminal has it. A CI job started in the
    background (`nohup … &`) inherits SIGINT ignored, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = START_TIMEOUT) -> bool:
    """True once `condition` holds; False if the process ended first; a TimeoutError (the caller's own_group then
    ends the command's group) if neither happens within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.005)
    raise TimeoutError(f"the command neither reached its kill point nor ended within {timeout:.0f} s")


def _started(command: Command, place: Place) -> Callable[[], bool]:
    """When the work has begun: once the command wrote its first file, its imports and data loading behind it; a
    gate or bisect writes only at its end, so for them once its imports are done."""
    if command.in_repository:
        return _marker(place).is_file
    return lambda: place.out.is_dir() and any(place.out.rglob("*.json"))


@dataclass(frozen=True)
class Reference:
    work_seconds: float  # from the work's start to the last file written
    writes: int
    outcome: Any


def _reference(name: str, data: Path, folder: Path, repository: Path | None = None) -> Reference:
    """One uninterrupted run: its work time, its number of atomic writes and its outcome."""
    command = COMMANDS[name]
    place = _place(command, data, folder, repository)
    count = folder / "writes"
    with own_group(_start(command, place, {"OPTCV_FAULTS_COUNT": str(count)})) as process:
        _wait_for(_started(command, place), process)
        started = time.monotonic()
        process.wait(timeout=RUN_TIMEOUT)
    assert process.returncode == 0, output(process)
    writes, last_write = count.read_text().split()
    return Reference(float(last_write) - started, int(writes), command.outcome(place.out) if command.outcome else None)


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
    left_behind: tuple[str, ...] = ()  # processes of the command's group still running after it ended
    group: int | None = None  # the command's process group


def _failed(error: str, left: list[str] | tuple[str, ...] = (), group: int | None = None) -> KillResult:
    return KillResult(False, None, "", [], [], None, [], None, error, tuple(left), group)


def _isolated(exercise: Callable[..., KillResult], *args: Any) -> KillResult:
    """One point whatever happens in it: a hang or a crash of the harness is that point's failure alone."""
    try:
        return exercise(*args)
    except Exception as exc:  # noqa: BLE001 - reported as the point's own failure
        return _failed(f"{type(exc).__name__}: {exc}")


def _signal(process: subprocess.Popen, which: signal.Signals) -> None:
    """SIGINT to the whole group, as Ctrl-C in a terminal sends it; SIGKILL to the command alone, the harshest: its
    workers are orphaned and must end by themselves."""
    if which is signal.SIGINT:
        os.killpg(process.pid, which)
    else:
        process.send_signal(which)


def _exercise(point: KillPoint, data: Path, reference: Reference, folder: Path, repository: Path,
              env: dict[str, str] | None = None, signal_timeout: float = SIGNAL_TIMEOUT) -> KillResult:
    command = COMMANDS[point.command]
    place = _place(command, data, folder, repository)
    marker = folder / "writing"
    env = dict(env or {})
    if point.at_write:
        env |= {"OPTCV_FAULTS_PAUSE_AT": str(max(1, round(point.draw * reference.writes))),
                "OPTCV_FAULTS_MARKER": str(marker)}
    with own_group(_start(command, place, env)) as process:
        if point.at_write:
            reached = _wait_for(marker.is_file, process)
        else:
            reached = _wait_for(_started(command, place), process)
            time.sleep(point.draw * reference.work_seconds)
            reached = process.poll() is None
        if not reached:
            process.wait(timeout=RUN_TIMEOUT)
            return KillResult(False, process.returncode, "", [], [], None, [], None)
        _signal(process, point.signal)
        try:
            process.wait(timeout=signal_timeout)
        except subprocess.TimeoutExpired:
            left = group_members(process.pid)
            return _failed(f"still running {signal_timeout:.0f} s after {point.signal.name}: its group was killed",
                           left, process.pid)
        left = left_behind(process.pid)
    stderr = output(process)
    if process.returncode == 0:  # the signal met a finished command (its interpreter shutting down)
        return KillResult(False, 0, stderr, [], [], None, [], None, left_behind=tuple(left))
    before, corrupt = command.finished(place.out), _unreadable_files(place.out)
    rerun, rerun_left = _run_again(command, place, folder / "rerun")
    after = command.finished(place.out)
    lost = [key for key, value in before.items() if after.get(key) != value]
    leftovers = [str(p.relative_to(place.out)) for p in place.out.rglob("*.tmp")]
    # A killed gate cannot remove its work folders and its base's worktree: the next run removes them.
    leftovers += [p.name for p in Path(tempfile.gettempdir()).iterdir()
                  if re.match(rf"optcv-[a-z-]+-{process.pid}-", p.name)]
    outcome = command.outcome(place.out) if command.outcome and rerun.returncode == 0 else None
    return KillResult(True, process.returncode, stderr, corrupt, lost, rerun, leftovers, outcome,
                      left_behind=(*left, *rerun_left))


def _run_again(command: Command, place: Place, logs: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The same command once more, uninterrupted, in its own group too."""
    argv = [sys.executable, "-m", "optcv", *command.argv(place.data, place.out)]
    with own_group(start(argv, logs, cwd=place.cwd, env={**os.environ, **SUBPROCESS_ENV})) as process:
        process.wait(timeout=RUN_TIMEOUT)
        left = left_behind(process.pid)
    return subprocess.CompletedProcess(argv, process.returncode, output(process, "stdout"), output(process)), left


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


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's repository of five commits whose third makes the declared net's forward twice as slow."""
    from tests.user_repo import NETS, commit_history

    repo = tmp_path_factory.mktemp("their-app")
    commit_history(repo, NETS.replace("self.conv(x).relu()", "self.conv(x).relu()" + ".exp().log()" * 30))
    return repo


def _selected(request: pytest.FixtureRequest) -> list[KillPoint]:
    """The points this session runs (the tier and -k decide), so the pull-request tier exercises only its own."""
    ids = {item.callspec.id for item in request.session.items
           if getattr(item, "originalname", None) == "test_kill_point" and hasattr(item, "callspec")}
    return [p for p in KILL_POINTS if p.id in ids]


@pytest.fixture(scope="module")
def kill_results(request: pytest.FixtureRequest, data: Path, repository: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, KillResult]:
    """Every selected kill point, two at a time (each command runs on one thread)."""
    points = _selected(request)
    needed = sorted({p.command for p in points})
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        references: dict[str, Reference | KillResult] = dict(zip(needed, pool.map(
            lambda name: _isolated(_reference, name, data, tmp_path_factory.mktemp(f"reference-{name}"), repository),
            needed), strict=True))

        def one(point: KillPoint) -> KillResult:
            reference = references[point.command]
            if isinstance(reference, KillResult):
                return _failed(f"the uninterrupted {point.command} run failed: {reference.error}")
            found = _isolated(_exercise, point, data, reference, tmp_path_factory.mktemp("kill"), repository)
            if not found.reached and found.error is None and not point.at_write:
                # A run faster than the reference (a shared machine) can finish its work before a late moment:
                # the point is tried once more, at half the time, rather than counted as exercised or failed.
                found = _isolated(_exercise, dataclasses.replace(point, draw=point.draw / 2), data, reference,
                                  tmp_path_factory.mktemp("kill"), repository)
            return found

        results = dict(zip([p.id for p in points], pool.map(one, points), strict=True))
    return {**results, **{f"reference:{k}": v for k, v in references.items()}}


@pytest.mark.parametrize("point", KILL_POINT_PARAMS)
def test_kill_point(point: KillPoint, kill_results: dict[str, Any], fault_tally) -> None:
    found: KillResult = kill_results[point.id]
    assert not found.left_behind, f"processes of the command's group left running: {found.left_behind}"
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
    else:
        assert found.returncode == -signal.SIGKILL
    assert "Traceback" not in found.stderr, found.stderr
    assert not found.corrupt
    assert found.rerun is not None and found.rerun.returncode == 0, found.rerun and found.rerun.stderr
    assert "Traceback" not in found.rerun.stderr, found.rerun.stderr
    assert not found.lost
    assert not found.leftover_temporaries, f"a killed run's temporaries outlived the next: {found.leftover_temporaries}"
    if COMMANDS[point.command].outcome is not None:
        assert found.outcome == reference.outcome


def test_a_command_that_ignores_ctrl_c_fails_its_point_alone_within_its_time_out_and_leaves_nothing(
        data, repository, tmp_path):
    """The harness itself at its limit: `compare` made to ignore SIGINT is still running when its time-out ends, so
    that point fails, naming why, within the time-out (plus the group's end), and no process of it is left."""
    point = KillPoint("compare", signal.SIGINT, True, 0.0)  # at its first write: it pauses there, then ignores Ctrl-C
    reference = Reference(work_seconds=0.0, writes=1, outcome=None)
    started = time.monotonic()
    found = _exercise(point, data, reference, tmp_path, repository, env={"OPTCV_FAULTS_IGNORE_SIGINT": "1"},
                      signal_timeout=5.0)
    took = time.monotonic() - started
    assert found.error is not None and "still running 5 s after SIGINT: its group was killed" in found.error
    assert found.left_behind, "the ignoring command's own process was running at the time-out"
    assert took < 5.0 + START_TIMEOUT, took
    assert found.group is not None and group_members(found.group) == [], "the killed command outlived its point"
