"""After the search: the best configuration retrained on the full training split, per seed, and the
study's summary written (optcv.training.study_results)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optcv.data import CIFAR10
from optcv.errors import OptcvError
from optcv.stats import spread
from optcv.training.models import Checkpoint, build_model, save_checkpoint
from optcv.training.study_results import study_summary, write_study_json
from optcv.training.train import History, TrainConfig, train
from optcv.training.tune import TuneConfig, config_from_params


@dataclass
class BestModel:
    checkpoint: Path  # the first seed's model, the one exported
    history: History
    test_accuracy: float
    seed_accuracies: list[float]  # one per seed, the first seed's first


def retrain_best(study: optuna.Study, config: TuneConfig, data: CIFAR10, run_dir: Path,
                 progress: bool = True) -> BestModel:
    """Train the best configuration on the full training split with each of `config.final_seeds` seeds;
    evaluate each once on the test split. The first seed's model is best/model.pt, the others
    best/seed-<s>/model.pt."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise OptcvError("no trial completed, so there is no best configuration to retrain; run more trials")
    best = study.best_trial
    runs = []
    for index, seed in enumerate(range(config.seed, config.seed + config.final_seeds)):
        out = run_dir / "best" if index == 0 else run_dir / "best" / f"seed-{seed}"
        runs.append(_retrain_one(best, study.study_name, config, data, out, seed, progress))
    (checkpoint, history), accuracies = runs[0], [h.epochs[-1].test_accuracy for _, h in runs]
    return BestModel(checkpoint, history, accuracies[0], accuracies)


def _retrain_one(best: FrozenTrial, study_name: str, config: TuneConfig, data: CIFAR10, out: Path, seed: int,
                 progress: bool) -> tuple[Path, History]:
    model_config, optimizer, lr = config_from_params(best.params)
    checkpoint, history_file = out / "model.pt", out / "history.json"
    train_config = TrainConfig(optimizer, lr=lr, epochs=config.final_epochs, batch_size=config.batch_size, seed=seed)
    if checkpoint.is_file() and history_file.is_file():
        history = History.load(history_file)
        if history.config == train_config:
            return checkpoint, history
    out.mkdir(parents=True, exist_ok=True)
    state = out / f"train_state-trial{best.number}.pt"
    for stale in out.glob("train_state-trial*.pt"):
        if stale != state:
            stale.unlink()
    model = build_model(model_config, seed=seed)
    history = train(model, data.train, data.test, train_config, state_path=state, progress=progress,
                    desc=f"best trial {best.number}, seed {seed}")
    history.save(history_file)
    save_checkpoint(checkpoint, Checkpoint(model_config, model.state_dict(), info={
        "source": "optcv tune", "study": study_name, "trial": best.number,
        "params": best.params, "validation_accuracy": best.value, "seed": seed,
        "test_accuracy": history.epochs[-1].test_accuracy, "optimizer": optimizer, "lr": lr,
        "epochs": config.final_epochs}))
    state.unlink(missing_ok=True)
    return checkpoint, history


def finish(study: optuna.Study, config: TuneConfig, data: CIFAR10, run_dir: str | Path, *, retrain: bool = True,
           progress: bool = True) -> dict[str, Any]:
    """Write study.json, retrain the best configuration; return the summary (the caller draws the plots:
    optcv.report.study.write_plots)."""
    run_dir = Path(run_dir)
    extra: dict[str, Any] = {}
    if retrain and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = retrain_best(study, config, data, run_dir, progress)
        extra["best_model"] = {"checkpoint": str(best.checkpoint), "test_accuracy": best.test_accuracy,
                               "test_accuracy_over_seeds": dataclasses.asdict(spread(best.seed_accuracies)),
                               "epochs": len(best.history.epochs),
                               "per_class_accuracy": best.history.epochs[-1].per_class_accuracy}
    write_study_json(study, run_dir / "study.json", extra)
    return {**study_summary(study), **extra}
