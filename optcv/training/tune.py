"""The course's task 3: an Optuna search over TunableNet — resumable, parallel, and readable at a glance.

The Optuna objective is `Objective.__call__`; the search space is `SearchSpace`; `tune()` runs workers
against one storage (optcv.training.study_storage); `optcv.training.retrain.finish()` then retrains the best
configuration and writes the study's summary (optcv.training.study_results); the CLI and `optcv run` draw its
plots (optcv.report.study).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optcv._io import folder_lock, write_json
from optcv.data import CIFAR10, Split, load_cifar10, split_train_val, stratified_subset
from optcv.env import environment_info, usable_cores
from optcv.errors import OptcvError, first_line, require_at_least_one
from optcv.torch_settings import torch_settings
from optcv.training.models import TunableNetConfig, build_model
from optcv.training.study_storage import (
    FINISHED,
    SURPLUS_REASON,
    count_trials,
    default_storage,
    fail_dead_local_trials,
    open_storage,
)
from optcv.training.train import History, TrainConfig, TrainingDiverged, optimizer_name, train

PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class SearchSpace:
    """The course's space: Conv2d → Flatten → {Linear → ReLU → Dropout} × n_layers, optimizer and lr."""

    n_layers: tuple[int, int] = (1, 5)
    n_units: tuple[int, int] = (4, 512)
    dropout: tuple[float, float] = (0.2, 0.5)
    optimizers: tuple[str, ...] = ("Adam", "RMSprop", "SGD")
    lr: tuple[float, float] = (1e-5, 1e-1)  # log-uniform

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_units", "dropout", "lr"):
            low, high = getattr(self, name)
            if not low <= high:
                raise OptcvError(f"empty search range for {name}: low {low} > high {high}; give LOW HIGH with "
                                 "LOW at most HIGH")
        if self.n_layers[0] < 1 or self.n_units[0] < 1 or self.lr[0] <= 0:
            raise OptcvError("n_layers and n_units must be at least 1 and lr positive")
        if not 0 <= self.dropout[0] <= self.dropout[1] < 1:
            raise OptcvError(f"dropout range must lie in [0, 1), got {self.dropout}")
        if not self.optimizers:
            raise OptcvError("give at least one optimizer to search over")
        object.__setattr__(self, "optimizers", tuple(optimizer_name(o) for o in self.optimizers))

    def suggest(self, trial: optuna.Trial) -> tuple[TunableNetConfig, str, float]:
        n_layers = trial.suggest_int("n_layers", *self.n_layers)
        units = [trial.suggest_int(f"n_units_l{i}", *self.n_units) for i in range(n_layers)]
        dropouts = [trial.suggest_float(f"dropout_l{i}", *self.dropout) for i in range(n_layers)]
        optimizer = trial.suggest_categorical("optimizer", list(self.optimizers))
        lr = trial.suggest_float("lr", *self.lr, log=True)
        return TunableNetConfig(hidden_units=tuple(units), dropouts=tuple(dropouts)), str(optimizer), lr


def config_from_params(params: dict[str, Any]) -> tuple[TunableNetConfig, str, float]:
    """The model, optimizer and learning rate a finished trial's parameters describe."""
    n = int(params["n_layers"])
    config = TunableNetConfig(hidden_units=tuple(int(params[f"n_units_l{i}"]) for i in range(n)),
                              dropouts=tuple(float(params[f"dropout_l{i}"]) for i in range(n)))
    return config, str(params["optimizer"]), float(params["lr"])


OBJECTIVE = "validation accuracy after the trial's last epoch"
COURSE_BEST_ACCURACY = 0.50  # the course's best Optuna trial, the same objective on the same search space


@dataclass(frozen=True)
class TuneConfig:
    # Optuna's PyTorch example's budget: batches of 128, 30 of them for training (3,840 images) and 10 for
    # validation (1,280), 10 epochs. It keeps a 100-trial study to minutes on two cores; the best
    # configuration is then retrained on all 50,000 training images.
    trials: int = 100
    epochs: int = 10
    train_size: int = 3_840
    val_size: int = 1_280
    batch_size: int = 128
    pruner: str = "median"
    seed: int = 0
    final_epochs: int = 10  # retraining the best configuration on the full training split
    final_seeds: int = 1  # retrainings of the best configuration, seeds seed, seed + 1, …: its accuracy's spread
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        if self.pruner not in PRUNERS:
            raise OptcvError(f"unknown pruner {self.pruner!r}: choose from {', '.join(PRUNERS)}")
        require_at_least_one(self, "trials", "epochs", "train_size", "val_size", "batch_size", "final_epochs",
                             "final_seeds")

    def search_settings(self) -> dict[str, Any]:
        """What defines the study: a resumed study must have been started with the same."""
        values = dataclasses.asdict(self)
        for key in ("trials", "final_epochs", "final_seeds"):
            values.pop(key)
        values["objective"] = OBJECTIVE  # a study of another objective (optcv before 0.2: the best epoch's) differs
        values["space"] = {k: list(v) for k, v in values["space"].items()}
        return values


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)  # Optuna's defaults
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


class SurplusTrial(Exception):
    """Another worker already started the last trial the target needed."""


class Objective:
    """Train one sampled TunableNet on the training subset; validation accuracy after each epoch."""

    def __init__(self, config: TuneConfig, train_split: Split, val_split: Split):
        self.config, self.train_split, self.val_split = config, train_split, val_split

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        check_surplus(trial, self.config.trials)
        model_config, optimizer, lr = self.config.space.suggest(trial)
        model = build_model(model_config, seed=self.config.seed + trial.number)
        train_config = TrainConfig(optimizer, lr=lr, epochs=self.config.epochs, batch_size=self.config.batch_size,
                                   seed=self.config.seed + trial.number)

        def report(history: History) -> None:
            record = history.epochs[-1]
            trial.report(record.test_accuracy, record.epoch)  # the evaluation split here is validation
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record.epoch}")

        try:
            history = train(model, self.train_split, self.val_split, train_config, progress=False, on_epoch=report)
        except TrainingDiverged as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from exc
        # The last epoch's accuracy, as Optuna's example and the course return: it belongs to the weights the
        # trial ends with, which is the configuration retrained later. The best epoch's would be optimistic.
        return history.epochs[-1].test_accuracy


def check_surplus(trial: optuna.Trial, target: int) -> None:
    """Trials are numbered by the storage; if finished + running trials up to this one exceed the target,
    another worker took the last slot first, and this trial must not run."""
    active = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    if sum(1 for t in active if t.number <= trial.number) > target:
        trial.set_user_attr("fail_reason", f"{SURPLUS_REASON}: the target was reached by other workers")
        raise SurplusTrial


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO logging off (optcv reports progress itself), and no traceback of a trial stopped by Ctrl-C
    (the CLI says it was interrupted) from Optuna or from the storage's connection pool, which logs a Ctrl-C
    that lands while it resets a connection before re-raising it; the caller's level and filters restored."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interrupts = _DropInterrupts()  # one per use: a nested use must not remove its caller's filter
    filtered = [*logging.getLogger("optuna").handlers, *_pool_loggers()]
    for target in filtered:
        target.addFilter(interrupts)
    try:
        yield
    finally:
        for target in filtered:
            target.removeFilter(interrupts)
        optuna.logging.set_verbosity(verbosity)


def _pool_loggers() -> list[logging.Logger]:
    """SQLAlchemy's per-pool-class loggers (the records have no handler of their own: a logger filter is the
    one place to drop them)."""
    import sqlalchemy.pool as pools

    classes = (pools.QueuePool, pools.NullPool, pools.SingletonThreadPool, pools.StaticPool, pools.AssertionPool)
    return [logging.getLogger(f"{cls.__module__}.{cls.__name__}") for cls in classes]


class _DropInterrupts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def load_or_create_study(url: str, name: str, config: TuneConfig, sampler_seed: int) -> optuna.Study:
    with quiet_optuna():
        return _load_or_create_study(url, name, config, sampler_seed)


def _load_or_create_study(url: str, name: str, config: TuneConfig, sampler_seed: int) -> optuna.Study:
    storage = open_storage(url)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = make_pruner(config.pruner, config.epochs)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except Exception as exc:
        raise OptcvError(f"cannot open study {name!r} in {url!r}: {first_line(exc)}") from exc
    settings = study.user_attrs.get("search_settings")
    if settings is None:
        study.set_user_attr("search_settings", config.search_settings())
    elif settings != json.loads(json.dumps(config.search_settings())):
        raise OptcvError(f"study {name!r} was started with other search settings; use another --study-name or "
                         "--out, or repeat the original settings to resume it")
    return study


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; plain data so it pickles."""

    storage: str
    study_name: str
    config: TuneConfig
    data_dir: str | None
    index: int
    threads: int
    deadline: float | None  # time.time() after which no new trial starts


def run_worker(spec: WorkerSpec, data: CIFAR10 | None = None,
               on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
    """Run trials until the study has enough; the caller's threads, Optuna verbosity and warning filters
    are restored afterwards (a one-worker study runs in the caller's process)."""
    with warnings.catch_warnings(), quiet_optuna(), torch_settings(threads=spec.threads):
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        _run_trials(spec, data, on_trial)


def _worker_process(spec: WorkerSpec, command: int) -> None:
    """A worker process of `optcv tune --workers N`: it ends with its command, however that ends."""
    _end_with(command)
    run_worker(spec)


def _end_with(command: int) -> None:
    """Ask Linux to kill this process when `command`, its parent, dies: a SIGKILL gives the command no chance to
    stop its workers, and an orphaned worker would go on training and writing trials nobody asked for."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the worker stops when it next finds the study's target reached
    if os.getppid() != command:  # the command died before the request was in place
        os._exit(1)


def _run_trials(spec: WorkerSpec, data: CIFAR10 | None,
                on_trial: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
    data = data or load_cifar10(spec.data_dir, progress=False)
    config = spec.config
    train_split, val_split = tuning_splits(data, config)
    study = load_or_create_study(spec.storage, spec.study_name, config, sampler_seed=config.seed + spec.index)
    objective = Objective(config, train_split, val_split)
    while spec.deadline is None or time.time() < spec.deadline:
        counts = count_trials(study)
        if counts["finished"] + counts["running"] >= config.trials:
            break
        timeout = None if spec.deadline is None else max(1.0, spec.deadline - time.time())
        study.optimize(objective, n_trials=1, timeout=timeout, catch=(SurplusTrial,), gc_after_trial=False,
                       callbacks=[on_trial] if on_trial else None)


def tuning_splits(data: CIFAR10, config: TuneConfig) -> tuple[Split, Split]:
    """A seeded training subset and a held-out validation part, both from the training split."""
    rest, val = split_train_val(data.train, config.val_size, seed=config.seed)
    return stratified_subset(rest, min(config.train_size, len(rest)), seed=config.seed), val


def tune(config: TuneConfig, run_dir: str | Path, *, data_dir: str | None = None, data: CIFAR10 | None = None,
         storage: str | None = None, study_name: str = "optcv", workers: int = 1, timeout: float | None = None,
         progress: bool = True) -> optuna.Study:
    """Run (or resume) the study until `config.trials` trials have finished, with `workers` processes."""
    if workers < 1:
        raise OptcvError(f"workers must be at least 1, got {workers}")
    run_dir = Path(run_dir)
    with folder_lock(run_dir / ".lock", "optcv tune"):
        return _tune_locked(config, run_dir, data_dir, data, storage, study_name, workers, timeout, progress)


def _tune_locked(config: TuneConfig, run_dir: Path, data_dir: str | None, data: CIFAR10 | None, storage: str | None,
                 study_name: str, workers: int, timeout: float | None, progress: bool) -> optuna.Study:
    url = storage or default_storage(run_dir, workers)
    study = load_or_create_study(url, study_name, config, sampler_seed=config.seed)
    fail_dead_local_trials(study, url, exclusive=storage is None)
    write_json(run_dir / "tune_config.json", {"tune": config.search_settings(), "trials": config.trials,
                                              "final_epochs": config.final_epochs,
                                              "final_seeds": config.final_seeds, "storage": url,
                                              "study_name": study_name, "workers": workers,
                                              "environment": environment_info()})
    deadline = None if timeout is None else time.time() + timeout
    cores = usable_cores()
    specs = [WorkerSpec(url, study_name, config, data_dir, i, max(1, cores // workers), deadline)
             for i in range(workers)]
    done = count_trials(study)["finished"]
    if done < config.trials:
        _run_with_progress(specs, study, config.trials, progress, data)
    return study


def _run_with_progress(specs: list[WorkerSpec], study: optuna.Study, target: int, progress: bool,
                       data: CIFAR10 | None) -> None:
    from tqdm.auto import tqdm

    if len(specs) == 1:
        bar = tqdm(total=target, initial=count_trials(study)["finished"], desc="trials", unit="trial",
                   disable=not progress or None)

        def update(s: optuna.Study, _trial: FrozenTrial) -> None:
            bar.n = count_trials(s)["finished"]
            bar.refresh()

        try:
            run_worker(specs[0], data, on_trial=update)
        finally:
            bar.close()
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_process, args=(spec, os.getpid()), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    bar = tqdm(total=target, initial=count_trials(study)["finished"], desc="trials", unit="trial",
               disable=not progress or None)
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(1.0)
            bar.n = count_trials(study)["finished"]
            bar.refresh()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        raise
    finally:
        bar.close()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():  # a hung worker is a failure, not a success with no exit code
                process.kill()
                process.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise OptcvError(f"{len(failed)} worker(s) exited with code {failed[0]}; see their messages above")


# ---------------------------------------------------------------------------------------------------------
# Results: the course's statistics, study.json, plots, and the best configuration retrained.


