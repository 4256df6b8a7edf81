"""The course's task 2: train one network with several optimizers from the same start and compare."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcv._io import folder_lock, read_json_object, write_json
from optcv.data import CIFAR10, Normalization, stratified_subset
from optcv.env import environment_info
from optcv.errors import OptcvError, require_at_least_one
from optcv.stats import Difference, Spread, spread, welch
from optcv.training.models import Checkpoint, ModelConfig, TutorialNetConfig, arch_name, build_model, save_checkpoint
from optcv.training.train import History, TrainConfig, optimizer_name, train

LOSS_PLOT = "loss_comparison.png"  # the course's figure, drawn by the caller beside the histories


@dataclass(frozen=True)
class CompareConfig:
    optimizers: tuple[str, ...] = ("SGD", "Adagrad")
    epochs: int = 2
    batch_size: int = 4
    lrs: dict[str, float] = field(default_factory=dict)  # per optimizer; missing → the optimizer's default
    seed: int = 0
    seeds: int = 1  # repetitions: seeds seed, seed + 1, …; each gives every optimizer the same start and order
    train_size: int | None = None
    test_size: int | None = None
    model: ModelConfig = TutorialNetConfig()

    def __post_init__(self) -> None:
        names = tuple(optimizer_name(o) for o in self.optimizers)
        if not names:
            raise OptcvError("give at least one optimizer to compare")
        if len(set(names)) != len(names):
            raise OptcvError(f"optimizer listed twice in {', '.join(self.optimizers)}")
        require_at_least_one(self, "epochs", "batch_size", "seeds", "train_size", "test_size")
        bad_lr = [f"{k}={v}" for k, v in self.lrs.items() if not v > 0]
        if bad_lr:
            raise OptcvError(f"learning rate {bad_lr[0]} must be positive")
        object.__setattr__(self, "optimizers", names)
        object.__setattr__(self, "lrs", {optimizer_name(k): v for k, v in self.lrs.items()})

    @property
    def seed_values(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.seeds))

    def train_config(self, optimizer: str, seed: int) -> TrainConfig:
        return TrainConfig(optimizer=optimizer, lr=self.lrs.get(optimizer), epochs=self.epochs,
                           batch_size=self.batch_size, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["optimizers"] = list(self.optimizers)
        values["model"] = {"arch": arch_name(self.model), **dataclasses.asdict(self.model)}
        return values


@dataclass
class CompareResult:
    out_dir: Path
    config: CompareConfig
    histories: dict[str, list[History]]  # per optimizer, one per seed in `config.seed_values` order

    @property
    def loss_plot(self) -> Path:
        return self.out_dir / LOSS_PLOT

    def checkpoint_path(self, optimizer: str, seed: int | None = None) -> Path:
        """The model of `optimizer` trained with `seed` (default: the first seed)."""
        return self.out_dir / optimizer / f"seed-{self.config.seed if seed is None else seed}" / "model.pt"


def compare_optimizers(data: CIFAR10, config: CompareConfig, out_dir: str | Path,
                       progress: bool = True) -> CompareResult:
    """Train `config.model` once per optimizer and seed; for one seed, every optimizer starts from the same
    initial weights and sees the same batch order.

    Writes into `out_dir`: config.json (settings, data source, versions), <optimizer>/seed-<s>/history.json
    and model.pt, and histories.json (the caller draws the plot: optcv.report.plot_loss_comparison).
    Re-running with the same settings skips finished runs and resumes an interrupted one from its last
    finished epoch.
    """
    out_dir = Path(out_dir)
    train_split = stratified_subset(data.train, config.train_size, config.seed)
    test_split = stratified_subset(data.test, config.test_size, config.seed)
    settings = {"compare": config.to_dict(), "data": {"source": data.source, "train_images": len(train_split),
                                                      "test_images": len(test_split)}}
    config_file = out_dir / "config.json"
    if config_file.is_file():
        previous = read_json_object(config_file, "the comparison's settings",
                                    "delete the folder's config.json or choose a new --out folder")
        if {k: previous.get(k) for k in settings} != settings:
            raise OptcvError(f"{out_dir} holds a comparison with other settings; choose a new --out folder "
                             "or repeat the original settings to resume it")
    with folder_lock(out_dir / ".lock", "optcv compare"):
        write_json(config_file, {**settings, "environment": environment_info()})
        result = CompareResult(out_dir, config, {name: [] for name in config.optimizers})
        for seed in config.seed_values:
            initial = build_model(config.model, seed=seed).state_dict()
            for name in config.optimizers:
                result.histories[name].append(_train_one(data, config, name, seed, initial, train_split,
                                                         test_split, result.checkpoint_path(name, seed), progress))
        write_json(out_dir / "histories.json",
                   {name: [h.to_dict() for h in hs] for name, hs in result.histories.items()})
    return result


def training_losses(result: CompareResult) -> dict[str, list[list[float]]]:
    """Per optimizer, per seed, the mean training loss of every epoch: what the loss plot draws."""
    return {name: [h.train_losses for h in hs] for name, hs in result.histories.items()}


def _train_one(data: CIFAR10, config: CompareConfig, name: str, seed: int, initial: dict[str, Any],
               train_split: Any, test_split: Any, checkpoint_file: Path, progress: bool) -> History:
    """One optimizer with one seed, or its finished history; an interrupted run resumes from its last epoch."""
    run_dir = checkpoint_file.parent
    history_file = run_dir / "history.json"
    if checkpoint_file.is_file() and history_file.is_file():
        return History.load(history_file)
    model = build_model(config.model)
    model.load_state_dict(initial)
    state_file = run_dir / "train_state.pt"
    run_dir.mkdir(parents=True, exist_ok=True)
    desc = name if config.seeds == 1 else f"{name} seed {seed}"
    history = train(model, train_split, test_split, config.train_config(name, seed), Normalization(),
                    state_path=state_file, progress=progress, desc=desc, on_epoch=_saver(history_file))
    history.save(history_file)
    save_checkpoint(checkpoint_file, Checkpoint(
        config=config.model, state_dict=model.state_dict(), normalization=Normalization(),
        info={"optimizer": name, "lr": history.config.resolved_lr, "epochs": config.epochs, "seed": seed,
              "test_accuracy": history.epochs[-1].test_accuracy, "data": data.source},
    ))
    state_file.unlink(missing_ok=True)
    return history


def _saver(path: Path) -> Callable[[History], None]:
    """Write the history after every epoch, so an interrupted run leaves its finished epochs readable."""
    return lambda history: history.save(path)


@dataclass(frozen=True)
class OptimizerSummary:
    """One optimizer over its seeds: the last epoch's numbers as mean, spread and n."""

    optimizer: str
    lr: float
    final_train_loss: Spread
    test_loss: Spread
    test_accuracy: Spread
    seconds_per_epoch: float
    images_per_s: float


@dataclass(frozen=True)
class OptimizerDifference:
    """The best optimizer by one measure against the runner-up: better − other, tested over the seeds."""

    measure: str  # "final_train_loss" (lower is better) or "test_accuracy" (higher is better)
    better: str
    other: str
    difference: Difference


def summarize(result: CompareResult) -> list[OptimizerSummary]:
    out = []
    for name, histories in result.histories.items():
        epochs = [e for h in histories for e in h.epochs]
        out.append(OptimizerSummary(
            optimizer=name, lr=histories[0].config.resolved_lr,
            final_train_loss=spread([h.epochs[-1].train_loss for h in histories]),
            test_loss=spread([h.epochs[-1].test_loss for h in histories]),
            test_accuracy=spread([h.epochs[-1].test_accuracy for h in histories]),
            seconds_per_epoch=sum(e.seconds for e in epochs) / len(epochs),
            images_per_s=sum(e.images_per_s for e in epochs) / len(epochs)))
    return out


def compare_best_two(result: CompareResult) -> list[OptimizerDifference]:
    """For the final training loss and the test accuracy: the best optimizer against the runner-up, by
    Welch's t-test over the seeds (optcv.stats); empty with a single optimizer."""
    if len(result.histories) < 2:
        return []
    out = []
    for measure, lower_is_better in (("final_train_loss", True), ("test_accuracy", False)):
        values = {name: [_last(h, measure) for h in hs] for name, hs in result.histories.items()}
        ranked = sorted(values, key=lambda n: spread(values[n]).mean, reverse=not lower_is_better)
        better, other = ranked[0], ranked[1]
        out.append(OptimizerDifference(measure, better, other, welch(values[better], values[other])))
    return out


def _last(history: History, measure: str) -> float:
    last = history.epochs[-1]
    return last.train_loss if measure == "final_train_loss" else last.test_accuracy
