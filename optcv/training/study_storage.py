"""Where an Optuna study lives: the storage URL, opening it, and cleaning up after killed workers."""

from __future__ import annotations

import functools
import socket
import types
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from optcv._io import interrupts_deferred, process_alive
from optcv.errors import OptcvError, first_line, missing_optional_module

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


SURPLUS_REASON = "surplus"


def _finish_before_interrupt(method: Any) -> Any:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with interrupts_deferred():
            return method(*args, **kwargs)
    return call


class InterruptSafeRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose every call, once begun, finishes before a Ctrl-C is raised. A KeyboardInterrupt
    landing inside a call left SQLite locked in about one interrupted `optcv tune` in 40: Optuna's heartbeat
    thread then waited 60 s for the lock, and the command with it."""


# The public methods only: Optuna calls its private helpers from inside them, already deferred.
for _name, _member in vars(optuna.storages.RDBStorage).items():
    if isinstance(_member, types.FunctionType) and (_name == "__init__" or not _name.startswith("_")):
        setattr(InterruptSafeRDBStorage, _name, _finish_before_interrupt(_member))


def default_storage(run_dir: Path, workers: int) -> str:
    """A file in the run folder: SQLite for one worker, Optuna's journal file for several (Optuna's FAQ
    advises against SQLite for parallel workers). An existing one is always reused, so resume works."""
    if (run_dir / "study.db").is_file():
        return f"sqlite:///{run_dir / 'study.db'}"
    if (run_dir / "study.journal").is_file() or workers > 1:
        return f"journal:{run_dir / 'study.journal'}"
    return f"sqlite:///{run_dir / 'study.db'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: any SQLAlchemy URL, or journal:PATH for a journal file."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        # Heartbeats let any worker mark a killed worker's trial as failed after the grace period.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return InterruptSafeRDBStorage(url, heartbeat_interval=10, grace_period=30,
                                              engine_kwargs=_engine_kwargs(url))
    except ImportError as exc:
        missing = missing_optional_module(exc, f"storage {url!r}")
        if missing is not None:
            raise missing from exc
        raise OptcvError(f"storage {url!r} needs a database driver that is not installed ({first_line(exc)}); "
                         "install the driver its URL names") from exc
    except Exception as exc:
        raise OptcvError(f"cannot open storage {url!r}: {first_line(exc)}") from exc


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} if url.startswith("postgres") else {}


def fail_dead_local_trials(study: optuna.Study, url: str, exclusive: bool = False) -> list[int]:
    """Mark RUNNING trials whose worker process on this machine is gone as FAILED (a killed run).

    Heartbeats do the same for database storages after their grace period; this handles the journal file
    and makes a restart on the same machine immediate. With `exclusive` (the study lives in a file of a
    run folder this process has locked) no other worker can be alive, so a RUNNING trial killed before it
    recorded its worker is failed too.
    """
    host = socket.gethostname()
    failed: list[int] = []
    storage: optuna.storages.BaseStorage | None = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        worker_host, _, pid = str(worker or "").rpartition(":")
        local_and_dead = worker_host == host and pid.isdigit() and not process_alive(int(pid))
        if local_and_dead or (exclusive and worker is None):
            # A Study annotates only its own running trials; the storage's public API reaches another's.
            storage = storage or open_storage(url)
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), trial.number)
            reason = f"worker {worker} died" if worker else "its worker died before it started training"
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
    return failed


def open_study(url: str, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError as exc:
        raise OptcvError(f"no study named {name!r} in {url!r}; run `optcv tune` first") from exc


def count_trials(study: optuna.Study) -> dict[str, int]:
    """Trials per state; a trial a worker gave up because others had reached the target ("surplus") is
    counted apart from real failures."""
    counts = {state.name.lower(): 0 for state in TrialState}
    counts["surplus"] = 0
    for trial in study.get_trials(deepcopy=False):
        surplus = trial.state == TrialState.FAIL and str(trial.user_attrs.get("fail_reason", "")).startswith(
            SURPLUS_REASON)
        counts["surplus" if surplus else trial.state.name.lower()] += 1
    counts["finished"] = counts["complete"] + counts["pruned"]
    return counts
