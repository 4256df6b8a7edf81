"""The training loop: seeded, resumable per epoch, with a JSON history of every epoch."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optcv._io import atomic_path, read_json_object, write_json
from optcv.data import Normalization, Split, normalize
from optcv.errors import OptcvError
from optcv.metrics import per_class_accuracy
from optcv.torch_settings import torch_settings

# The course trained with SGD(lr=0.001, momentum=0.9); the others keep PyTorch's usual learning rates
# except RMSprop, whose 0.01 default diverges on these nets.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "SGD": (torch.optim.SGD, {"lr": 0.001, "momentum": 0.9}),
    "Adagrad": (torch.optim.Adagrad, {"lr": 0.01}),
    "Adam": (torch.optim.Adam, {"lr": 0.001}),
    "AdamW": (torch.optim.AdamW, {"lr": 0.001}),
    "RMSprop": (torch.optim.RMSprop, {"lr": 0.001}),
}


# Cross-entropy over 10 classes starts near ln(10) = 2.3; a mean epoch loss far above that is an explosion
# even when it is still finite.
DIVERGED_LOSS = 1e4


def optimizer_name(name: str) -> str:
    """The canonical spelling of an optimizer name, matched case-insensitively."""
    for known in OPTIMIZERS:
        if known.lower() == name.lower():
            return known
    raise OptcvError(f"unknown optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def make_optimizer(name: str, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
    optimizer_type, defaults = OPTIMIZERS[optimizer_name(name)]
    settings = dict(defaults)
    if lr is not None:
        if not lr > 0:
            raise OptcvError(f"learning rate must be positive, got {lr}")
        settings["lr"] = lr
    return optimizer_type(params, **settings)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "SGD"
    lr: float | None = None  # None: the optimizer's default above
    epochs: int = 2
    batch_size: int = 4
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", optimizer_name(self.optimizer))
        if self.epochs < 1:
            raise OptcvError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise OptcvError(f"batch size must be at least 1, got {self.batch_size}")

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else OPTIMIZERS[self.optimizer][1]["lr"]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    per_class_accuracy: list[float]
    seconds: float
    images_per_s: float


@dataclass
class History:
    config: TrainConfig
    epochs: list[EpochRecord] = field(default_factory=list)

    @property
    def train_losses(self) -> list[float]:
        return [e.train_loss for e in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "lr": self.config.resolved_lr,
                "epochs": [dataclasses.asdict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> History:
        return cls(TrainConfig(**raw["config"]), [EpochRecord(**e) for e in raw["epochs"]])

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> History:
        raw = read_json_object(path, "training history", "delete it (and the model.pt beside it) to train again")
        try:
            return cls.from_dict(raw)
        except (KeyError, TypeError) as exc:
            raise OptcvError(f"training history {path} lacks {exc}; delete it (and the model.pt beside it) to train "
                             "again") from exc


class TrainingDiverged(OptcvError):
    """The loss became NaN or infinite: the work ran and failed, it was not refused."""

    exit_code = 1


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    per_class_accuracy: list[float]


@torch.inference_mode()
def evaluate_model(model: nn.Module, split: Split, normalization: Normalization,
                   batch_size: int = 1000) -> EvalResult:
    model.eval()
    total_loss = 0.0
    predictions = []
    for start in range(0, len(split), batch_size):
        logits = model(normalize(split.images[start:start + batch_size], normalization))
        labels = split.labels[start:start + batch_size]
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        predictions.append(logits.argmax(dim=1))
    predicted = torch.cat(predictions).numpy()
    labels_np = split.labels.numpy()
    return EvalResult(
        loss=total_loss / len(split),
        accuracy=float(np.mean(predicted == labels_np)),
        per_class_accuracy=per_class_accuracy(predicted, labels_np, len(split.classes)).tolist(),
    )


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _load_state(path: Path) -> dict[str, Any]:
    """A resume state written by `train`, or a clear error: a damaged one (a full disk, a copy cut short) must
    not pass for an empty run or crash with a traceback."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise OptcvError(f"the resume state {path} is damaged ({type(exc).__name__}); delete it to restart "
                         "this training run from its first epoch") from exc
    if not isinstance(state, dict) or not {"config", "model", "optimizer", "history"} <= set(state):
        raise OptcvError(f"{path} is not an optcv resume state; delete it to restart this training run")
    return state


def train(
    model: nn.Module,
    train_split: Split,
    test_split: Split,
    config: TrainConfig,
    normalization: Normalization = Normalization(),
    *,
    state_path: str | Path | None = None,
    on_epoch: Callable[[History], None] | None = None,
    progress: bool = True,
    desc: str = "",
) -> History:
    """Train `model` in place and return its history.

    Every epoch's shuffle and dropout draw from `epoch_seed(seed, epoch)`, so the same seed gives the
    same history, and a run resumed from `state_path` (written after every epoch) continues exactly.
    oneDNN is on while training, as PyTorch ships it, whatever an inference predictor left set (the pytorch
    predictor turns it off: faster for one small image, but training ResNet-18 here is then 2.2x slower and
    MobileNetV3-small 7x; and the weights would depend on which predictor ran before).
    """
    with torch_settings(onednn=True):
        return _train(model, train_split, test_split, config, normalization, state_path=state_path,
                      on_epoch=on_epoch, progress=progress, desc=desc)


def _train(model: nn.Module, train_split: Split, test_split: Split, config: TrainConfig,
           normalization: Normalization, *, state_path: str | Path | None,
           on_epoch: Callable[[History], None] | None, progress: bool, desc: str) -> History:
    from tqdm.auto import tqdm

    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    history = History(config)
    if state_path is not None and Path(state_path).is_file():
        state = _load_state(Path(state_path))
        if state["config"] != dataclasses.asdict(config):
            raise OptcvError(f"{state_path} was written by a different training configuration; remove it or "
                             "re-run with the original settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = History.from_dict(state["history"])

    inputs = normalize(train_split.images, normalization)  # once, not per batch
    labels = train_split.labels
    n = len(train_split)
    for epoch in tqdm(range(len(history.epochs), config.epochs), desc=desc or config.optimizer,
                      initial=len(history.epochs), total=config.epochs, unit="epoch", disable=not progress or None):
        torch.manual_seed(epoch_seed(config.seed, epoch))  # dropout
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch)))
        model.train()
        total_loss = torch.zeros((), dtype=torch.float64)
        started = time.perf_counter()
        batches = range(0, n, config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch", leave=False, mininterval=0.5,
                          disable=not progress or None):
            index = order[start:start + config.batch_size]
            loss = F.cross_entropy(model(inputs[index]), labels[index])
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(f"training diverged in epoch {epoch + 1}, batch {start // config.batch_size + 1}"
                                       f" with {config.optimizer} lr {config.resolved_lr}: the loss is {loss.item()}; "
                                       "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(index)
        seconds = time.perf_counter() - started
        train_loss = float(total_loss) / n
        if not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS:
            raise TrainingDiverged(f"training diverged in epoch {epoch + 1} with {config.optimizer} "
                                   f"lr {config.resolved_lr}: mean loss is {train_loss:.3g}; lower the learning rate")
        result = evaluate_model(model, test_split, normalization, config.eval_batch_size)
        record = EpochRecord(epoch + 1, train_loss, result.loss, result.accuracy, result.per_class_accuracy,
                             seconds, n / seconds)
        history.epochs.append(record)
        if state_path is not None:
            with atomic_path(state_path) as tmp:
                torch.save({"config": dataclasses.asdict(config), "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "history": history.to_dict()}, tmp)
        if on_epoch is not None:
            on_epoch(history)
    return history
