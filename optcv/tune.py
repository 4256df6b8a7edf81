"""The course's task 3: an Optuna search over TunableNet — resumable, parallel, and readable at a glance.

The Optuna objective is `Objective.__call__`; the search space is `SearchSpace`; `tune()` runs workers
against one storage and `finish()` writes the study summary, plots and the retrained best model.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from optcv._io import folder_lock, write_json
from optcv.data import CIFAR10, Split, load_cifar10, split_train_val, stratified_subset
from optcv.env import environment_info
from optcv.errors import OptcvError
from optcv.models import Checkpoint, TunableNetConfig, build_model, save_checkpoint
from optcv.train import History, TrainConfig, TrainingDiverged, optimizer_name, train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
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
                raise OptcvError(f"empty search range for {name}: {low} > {high}")
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
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        if self.pruner not in PRUNERS:
            raise OptcvError(f"unknown pruner {self.pruner!r}: choose from {', '.join(PRUNERS)}")
        for name in ("trials", "epochs", "train_size", "val_size", "batch_size", "final_epochs"):
            if getattr(self, name) < 1:
                raise OptcvError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def search_settings(self) -> dict[str, Any]:
        """What defines the study: a resumed study must have been started with the same."""
        values = dataclasses.asdict(self)
        for key in ("trials", "final_epochs"):
            values.pop(key)
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
        return max(e.test_accuracy for e in history.epochs)


def check_surplus(trial: optuna.Trial, target: int) -> None:
    """Trials are numbered by the storage; if finished + running trials up to this one exceed the target,
    another worker took the last slot first, and this trial must not run."""
    active = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    if sum(1 for t in active if t.number <= trial.number) > target:
        trial.set_user_attr("fail_reason", "surplus: the target was reached by other workers")
        raise SurplusTrial


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
            return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                              engine_kwargs=_engine_kwargs(url))
    except ImportError as exc:
        raise OptcvError(f"storage {url!r} needs a driver that is not installed ({exc}); for PostgreSQL "
                         "install optcv[postgres]") from exc
    except Exception as exc:
        raise OptcvError(f"cannot open storage {url!r}: {str(exc).splitlines()[0]}") from exc


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} if url.startswith("postgres") else {}


def fail_dead_local_trials(study: optuna.Study, exclusive: bool = False) -> list[int]:
    """Mark RUNNING trials whose worker process on this machine is gone as FAILED (a killed run).

    Heartbeats do the same for database storages after their grace period; this handles the journal file
    and makes a restart on the same machine immediate. With `exclusive` (the study lives in a file of a
    run folder this process has locked) no other worker can be alive, so a RUNNING trial killed before it
    recorded its worker is failed too.
    """
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        worker_host, _, pid = str(worker or "").rpartition(":")
        local_and_dead = worker_host == host and pid.isdigit() and not _alive(int(pid))
        if local_and_dead or (exclusive and worker is None):
            # Optuna has no public call to annotate another process's trial; the state change is public.
            reason = f"worker {worker} died" if worker else "its worker died before it started training"
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_or_create_study(url: str, name: str, config: TuneConfig, sampler_seed: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # optcv reports progress itself
    storage = open_storage(url)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = make_pruner(config.pruner, config.epochs)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except Exception as exc:
        raise OptcvError(f"cannot open study {name!r} in {url!r}: {str(exc).splitlines()[0]}") from exc
    settings = study.user_attrs.get("search_settings")
    if settings is None:
        study.set_user_attr("search_settings", config.search_settings())
    elif settings != json.loads(json.dumps(config.search_settings())):
        raise OptcvError(f"study {name!r} was started with other search settings; use another --study-name or "
                         "--out, or repeat the original settings to resume it")
    return study


def count_trials(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    counts["finished"] = counts["complete"] + counts["pruned"]
    return counts


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
    torch.set_num_threads(spec.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
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
    fail_dead_local_trials(study, exclusive=storage is None)
    write_json(run_dir / "tune_config.json", {"tune": config.search_settings(), "trials": config.trials,
                                              "final_epochs": config.final_epochs, "storage": url,
                                              "study_name": study_name, "workers": workers,
                                              "environment": environment_info()})
    deadline = None if timeout is None else time.time() + timeout
    cores = os.cpu_count() or 1
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
    processes = [context.Process(target=run_worker, args=(spec,), daemon=True) for spec in specs]
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
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if failed:
        raise OptcvError(f"{len(failed)} worker(s) exited with code {failed[0]}; see their messages above")



# ---------------------------------------------------------------------------------------------------------
# Results: the course's statistics, study.json, plots, and the best configuration retrained.


def open_study(url: str, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError as exc:
        raise OptcvError(f"no study named {name!r} in {url!r}; run `optcv tune` first") from exc


def study_summary(study: optuna.Study) -> dict[str, Any]:
    counts = count_trials(study)
    summary: dict[str, Any] = {"study_name": study.study_name, "finished": counts["finished"],
                               "pruned": counts["pruned"], "complete": counts["complete"],
                               "failed": counts["fail"], "running": counts["running"]}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete:
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params})
    durations = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False, states=FINISHED) if t.duration]
    if durations:
        summary["trial_seconds_total"] = sum(durations)
    return summary


def statistics_text(summary: dict[str, Any]) -> str:
    """The course's console output: 'Study statistics: …'."""
    lines = ["Study statistics: ",
             f"  Number of finished trials:  {summary['finished']}",
             f"  Number of pruned trials:  {summary['pruned']}",
             f"  Number of complete trials:  {summary['complete']}"]
    if summary.get("failed"):
        lines.append(f"  Number of failed trials:  {summary['failed']}")
    if "best_value" in summary:
        lines += ["Best trial:", f"  Number: {summary['best_trial']}", f"  Value:  {summary['best_value']:.4f}",
                  "  Params: "]
        lines += [f"    {key}: {value}" for key, value in summary["best_params"].items()]
    else:
        lines.append("No trial has completed yet.")
    return "\n".join(lines)


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
            "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
            "duration_s": trial.duration.total_seconds() if trial.duration else None,
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "user_attrs": trial.user_attrs}


def write_study_json(study: optuna.Study, path: Path, extra: dict[str, Any] | None = None) -> Path:
    return write_json(path, {"summary": study_summary(study), **(extra or {}),
                             "trials": [trial_record(t) for t in study.get_trials(deepcopy=False)]})


def write_plots(study: optuna.Study, run_dir: Path) -> list[Path]:
    """optuna.visualization.matplotlib plots as PNG: history, intermediate values, importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    from optcv._io import write_atomic

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        plots.append(("optimization_history.png", lambda: optuna_plots.plot_optimization_history(study)))
        plots.append(("intermediate_values.png", lambda: optuna_plots.plot_intermediate_values(study)))
    if len(complete) >= 3 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        plots.append(("param_importances.png", lambda: optuna_plots.plot_param_importances(study)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in plots:
            try:
                axes = draw()
            except (ValueError, RuntimeError):
                continue  # e.g. importances when every completed trial shares one value
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            written.append(write_atomic(run_dir / name, _png_writer(figure)))
            plt.close(figure)
    return written


def _png_writer(figure: Any) -> Callable[[Path], None]:
    return lambda tmp: figure.savefig(tmp, format="png", dpi=110)


@dataclass
class BestModel:
    checkpoint: Path
    history: History
    test_accuracy: float


def retrain_best(study: optuna.Study, config: TuneConfig, data: CIFAR10, run_dir: Path,
                 progress: bool = True) -> BestModel:
    """Train the best configuration on the full training split; evaluate once on the test split."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise OptcvError("no trial completed, so there is no best configuration to retrain; run more trials")
    best = study.best_trial
    model_config, optimizer, lr = config_from_params(best.params)
    out = run_dir / "best"
    checkpoint, history_file = out / "model.pt", out / "history.json"
    train_config = TrainConfig(optimizer, lr=lr, epochs=config.final_epochs, batch_size=config.batch_size,
                               seed=config.seed)
    if checkpoint.is_file() and history_file.is_file():
        history = History.load(history_file)
        if history.config == train_config:
            return BestModel(checkpoint, history, history.epochs[-1].test_accuracy)
    out.mkdir(parents=True, exist_ok=True)
    state = out / f"train_state-trial{best.number}.pt"
    for stale in out.glob("train_state-trial*.pt"):
        if stale != state:
            stale.unlink()
    model = build_model(model_config, seed=config.seed)
    history = train(model, data.train, data.test, train_config, state_path=state, progress=progress,
                    desc=f"best trial {best.number}")
    history.save(history_file)
    save_checkpoint(checkpoint, Checkpoint(model_config, model.state_dict(), info={
        "source": "optcv tune", "study": study.study_name, "trial": best.number, "params": best.params,
        "validation_accuracy": best.value, "test_accuracy": history.epochs[-1].test_accuracy,
        "optimizer": optimizer, "lr": lr, "epochs": config.final_epochs}))
    state.unlink(missing_ok=True)
    return BestModel(checkpoint, history, history.epochs[-1].test_accuracy)


def finish(study: optuna.Study, config: TuneConfig, data: CIFAR10, run_dir: str | Path, *, retrain: bool = True,
           progress: bool = True) -> dict[str, Any]:
    """Write study.json and the plots, retrain the best configuration; return the summary."""
    run_dir = Path(run_dir)
    extra: dict[str, Any] = {}
    if retrain and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = retrain_best(study, config, data, run_dir, progress)
        extra["best_model"] = {"checkpoint": str(best.checkpoint), "test_accuracy": best.test_accuracy,
                               "epochs": len(best.history.epochs),
                               "per_class_accuracy": best.history.epochs[-1].per_class_accuracy}
    write_study_json(study, run_dir / "study.json", extra)
    write_plots(study, run_dir)
    return {**study_summary(study), **extra}
