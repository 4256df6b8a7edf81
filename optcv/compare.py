"""The course's task 2: train one network with several optimizers from the same start and compare."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcv._io import write_json
from optcv.data import CIFAR10, Normalization, stratified_subset
from optcv.env import environment_info
from optcv.errors import OptcvError
from optcv.models import Checkpoint, ModelConfig, TutorialNetConfig, arch_name, build_model, save_checkpoint
from optcv.train import History, TrainConfig, optimizer_name, train


@dataclass(frozen=True)
class CompareConfig:
    optimizers: tuple[str, ...] = ("SGD", "Adagrad")
    epochs: int = 2
    batch_size: int = 4
    lrs: dict[str, float] = field(default_factory=dict)  # per optimizer; missing → the optimizer's default
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    model: ModelConfig = TutorialNetConfig()

    def __post_init__(self) -> None:
        names = tuple(optimizer_name(o) for o in self.optimizers)
        if not names:
            raise OptcvError("give at least one optimizer to compare")
        if len(set(names)) != len(names):
            raise OptcvError(f"optimizer listed twice in {', '.join(self.optimizers)}")
        object.__setattr__(self, "optimizers", names)
        object.__setattr__(self, "lrs", {optimizer_name(k): v for k, v in self.lrs.items()})

    def train_config(self, optimizer: str) -> TrainConfig:
        return TrainConfig(optimizer=optimizer, lr=self.lrs.get(optimizer), epochs=self.epochs,
                           batch_size=self.batch_size, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["optimizers"] = list(self.optimizers)
        values["model"] = {"arch": arch_name(self.model), **dataclasses.asdict(self.model)}
        return values


@dataclass
class CompareResult:
    out_dir: Path
    config: CompareConfig
    histories: dict[str, History]

    def checkpoint_path(self, optimizer: str) -> Path:
        return self.out_dir / optimizer / "model.pt"


def compare_optimizers(data: CIFAR10, config: CompareConfig, out_dir: str | Path,
                       progress: bool = True) -> CompareResult:
    """Train `config.model` once per optimizer, each from the same initial weights and batch order.

    Writes into `out_dir`: config.json (settings, data source, versions), <optimizer>/history.json and
    <optimizer>/model.pt, histories.json and loss_comparison.png. Re-running with the same settings skips
    finished optimizers and resumes an interrupted one from its last finished epoch.
    """
    from optcv.report import plot_loss_comparison

    out_dir = Path(out_dir)
    train_split = stratified_subset(data.train, config.train_size, config.seed)
    test_split = stratified_subset(data.test, config.test_size, config.seed)
    settings = {"compare": config.to_dict(), "data": {"source": data.source, "train_images": len(train_split),
                                                      "test_images": len(test_split)}}
    config_file = out_dir / "config.json"
    if config_file.is_file():
        previous = json.loads(config_file.read_text(encoding="utf-8"))
        if {k: previous.get(k) for k in settings} != settings:
            raise OptcvError(f"{out_dir} holds a comparison with other settings; choose a new --out folder "
                             "or repeat the original settings to resume it")
    write_json(config_file, {**settings, "environment": environment_info()})

    normalization = Normalization()
    initial = build_model(config.model, seed=config.seed).state_dict()
    histories: dict[str, History] = {}
    for name in config.optimizers:
        run_dir = out_dir / name
        checkpoint_file, history_file = run_dir / "model.pt", run_dir / "history.json"
        if checkpoint_file.is_file() and history_file.is_file():
            histories[name] = History.load(history_file)
            continue
        model = build_model(config.model)
        model.load_state_dict(initial)
        state_file = run_dir / "train_state.pt"
        run_dir.mkdir(parents=True, exist_ok=True)
        history = train(model, train_split, test_split, config.train_config(name), normalization,
                        state_path=state_file, progress=progress, desc=name, on_epoch=_saver(history_file))
        history.save(history_file)
        save_checkpoint(checkpoint_file, Checkpoint(
            config=config.model, state_dict=model.state_dict(), normalization=normalization,
            info={"optimizer": name, "lr": history.config.resolved_lr, "epochs": config.epochs,
                  "test_accuracy": history.epochs[-1].test_accuracy, "data": data.source},
        ))
        state_file.unlink(missing_ok=True)
        histories[name] = history
    write_json(out_dir / "histories.json", {name: h.to_dict() for name, h in histories.items()})
    plot_loss_comparison({name: h.train_losses for name, h in histories.items()}, out_dir / "loss_comparison.png")
    return CompareResult(out_dir, config, histories)


def _saver(path: Path) -> Callable[[History], None]:
    """Write the history after every epoch, so an interrupted run leaves its finished epochs readable."""
    return lambda history: history.save(path)


def summary_rows(result: CompareResult) -> list[dict[str, Any]]:
    rows = []
    for name, history in result.histories.items():
        last = history.epochs[-1]
        seconds = [e.seconds for e in history.epochs]
        rows.append({
            "optimizer": name,
            "lr": f"{history.config.resolved_lr:g}",
            "final train loss": round(last.train_loss, 4),
            "test loss": round(last.test_loss, 4),
            "test accuracy %": round(100 * last.test_accuracy, 2),
            "s/epoch": sum(seconds) / len(seconds),
            "images/s": sum(e.images_per_s for e in history.epochs) / len(history.epochs),
        })
    return rows
