"""The networks, built from small config dataclasses, and the checkpoint that carries them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optcv._io import atomic_path
from optcv.data import CLASSES, Normalization, normalization_affine
from optcv.errors import OptcvError

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TutorialNetConfig:
    """The course's network (PyTorch's CIFAR-10 tutorial): two 5x5 convolutions and three linear layers."""

    num_classes: int = 10


class TutorialNet(nn.Module):
    def __init__(self, config: TutorialNetConfig = TutorialNetConfig()):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class TunableNetConfig:
    """Conv2d → ReLU → MaxPool → Flatten → {Linear → ReLU → Dropout} × len(hidden_units) → Linear.

    The course's best trial was one hidden layer of 302 units with dropout 0.205.
    """

    conv_channels: int = 32
    kernel_size: int = 3
    pool: bool = True
    hidden_units: tuple[int, ...] = (302,)
    dropouts: tuple[float, ...] = (0.2,)
    num_classes: int = 10

    def __post_init__(self) -> None:
        # Lists arrive from JSON and Optuna; keep the dataclass hashable and comparable.
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in self.hidden_units))
        object.__setattr__(self, "dropouts", tuple(float(d) for d in self.dropouts))
        if len(self.hidden_units) != len(self.dropouts):
            raise OptcvError(
                f"TunableNet needs one dropout per hidden layer, got {len(self.hidden_units)} layers "
                f"and {len(self.dropouts)} dropouts"
            )
        if self.kernel_size % 2 != 1:
            raise OptcvError(f"kernel_size must be odd to keep the 32x32 size, got {self.kernel_size}")


class TunableNet(nn.Module):
    def __init__(self, config: TunableNetConfig = TunableNetConfig()):
        super().__init__()
        side = 16 if config.pool else 32
        layers: list[nn.Module] = [
            nn.Conv2d(3, config.conv_channels, config.kernel_size, padding=config.kernel_size // 2),
            nn.ReLU(),
        ]
        if config.pool:
            layers.append(nn.MaxPool2d(2, 2))
        layers.append(nn.Flatten())
        width = config.conv_channels * side * side
        for units, dropout in zip(config.hidden_units, config.dropouts, strict=True):
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
            width = units
        layers.append(nn.Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class ResNet18Config:
    """torchvision's ResNet-18 in its CIFAR form: a 3x3 stride-1 stem and no initial max-pool, so the
    32x32 image keeps its resolution into the first stage (~0.56 GMAC per image)."""

    num_classes: int = 10


def resnet18_cifar(config: ResNet18Config = ResNet18Config()) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=config.num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@dataclass(frozen=True)
class MobileNetV3SmallConfig:
    """torchvision's MobileNetV3-small as it is (its strides take a 32x32 image to 1x1)."""

    num_classes: int = 10
    width_mult: float = 1.0
    dropout: float = 0.2
    # torchvision's 0.01 suits ImageNet-length training; after a few hundred steps the running statistics
    # are still mostly their initial values, and in eval mode the net then predicts one class (measured:
    # 10.0 % test accuracy while the training loss fell to 1.6). Short runs need a larger momentum.
    bn_momentum: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.width_mult <= 4 or not 0 <= self.dropout < 1 or not 0 < self.bn_momentum <= 1:
            raise OptcvError(f"MobileNetV3-small needs 0 < width_mult <= 4, 0 <= dropout < 1 and "
                             f"0 < bn_momentum <= 1, got {self.width_mult}, {self.dropout}, {self.bn_momentum}")


def mobilenet_v3_small(config: MobileNetV3SmallConfig = MobileNetV3SmallConfig()) -> nn.Module:
    from functools import partial

    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    blocks, last_channel = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=config.width_mult)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=config.bn_momentum)  # torchvision's, momentum aside
    return MobileNetV3(blocks, last_channel, num_classes=config.num_classes, dropout=config.dropout,
                       norm_layer=norm)


@dataclass(frozen=True)
class IdentityNetConfig:
    """No compute at all: the first `num_classes` normalised input values are the logits. Run by a backend,
    it times that runtime's own per-call cost (optcv.measure.limits), the floor under every model's latency."""

    num_classes: int = 10


class IdentityNet(nn.Module):
    def __init__(self, config: IdentityNetConfig = IdentityNetConfig()):
        super().__init__()
        self.num_classes = config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :self.num_classes]


class WithPreprocessing(nn.Module):
    """uint8 images (N, 3, 32, 32) in, logits out: the normalisation travels inside the model and its export."""

    def __init__(self, model: nn.Module, normalization: Normalization):
        super().__init__()
        self.model = model
        scale, shift = normalization_affine(normalization)
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float() * self.scale + self.shift)


ARCHITECTURES: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {
    "tutorial": (TutorialNetConfig, TutorialNet),
    "tunable": (TunableNetConfig, TunableNet),
    "resnet18": (ResNet18Config, resnet18_cifar),
    "mobilenet_v3_small": (MobileNetV3SmallConfig, mobilenet_v3_small),
    "identity": (IdentityNetConfig, IdentityNet),
}
ModelConfig = TutorialNetConfig | TunableNetConfig | ResNet18Config | MobileNetV3SmallConfig | IdentityNetConfig


def arch_name(config: ModelConfig) -> str:
    for name, (config_type, _) in ARCHITECTURES.items():
        if isinstance(config, config_type):
            return name
    raise OptcvError(f"unknown model config {type(config).__name__}")


def config_from_dict(arch: str, values: dict[str, Any]) -> ModelConfig:
    if arch not in ARCHITECTURES:
        raise OptcvError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    config_type = ARCHITECTURES[arch][0]
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptcvError(f"unknown {arch} setting {unknown[0]!r}: valid ones are {', '.join(sorted(known))}")
    config: ModelConfig = config_type(**values)
    return config


def build_model(config: ModelConfig, seed: int | None = None) -> nn.Module:
    """Build the network for `config`; with a seed, its initial weights are reproducible."""
    model_type = ARCHITECTURES[arch_name(config)][1]
    if seed is None:
        return model_type(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_type(config)


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32), dtype: torch.dtype = torch.float32
               ) -> int:
    """Multiply-accumulates of one forward pass over conv and linear layers (per image at batch 1)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * kernel
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(input_shape, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass
class Checkpoint:
    """Everything a later export, evaluation or benchmark needs: weights, config, normalisation, classes."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    normalization: Normalization = field(default_factory=Normalization)
    classes: tuple[str, ...] = CLASSES
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return arch_name(self.config)

    @property
    def input_spec(self) -> None:
        """optcv's own input: uint8 images (N, 3, 32, 32), normalised inside the model."""
        return None

    def build(self) -> nn.Module:
        model = build_model(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def build_inference(self) -> nn.Module:
        """The model with its normalisation in front: takes uint8 (N, 3, 32, 32) images."""
        return WithPreprocessing(self.build(), self.normalization).eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict,
            "normalization": dataclasses.asdict(self.normalization),
            "classes": list(self.classes),
            "info": self.info,
        }


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    with atomic_path(path) as tmp:
        torch.save(checkpoint.to_dict(), tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise OptcvError(f"checkpoint {path} does not exist; train one with `optcv compare` or `optcv tune`")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OptcvError(f"checkpoint {path} is not a readable optcv checkpoint ({type(exc).__name__})") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT or "arch" not in raw:
        raise OptcvError(f"{path} is not an optcv checkpoint (format {CHECKPOINT_FORMAT} expected)")
    config = config_from_dict(raw["arch"], raw["config"])
    checkpoint = Checkpoint(
        config=config,
        state_dict=raw["state_dict"],
        normalization=Normalization(**{k: tuple(v) for k, v in raw["normalization"].items()}),
        classes=tuple(raw["classes"]),
        info=raw.get("info", {}),
    )
    try:
        checkpoint.build()
    except RuntimeError as exc:
        raise OptcvError(f"checkpoint {path}: weights do not fit its {checkpoint.arch} config ({exc})") from exc
    return checkpoint
