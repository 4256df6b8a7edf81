"""The reference models the benchmark suite times and parity-checks: trained once, exported, cached.

The course's two networks are tiny (0.65 and ~2.5 MMAC per image), so per-call overhead dominates their
latency. ResNet-18 (CIFAR form, ~0.56 GMAC) and MobileNetV3-small join them so that the suite also
measures networks whose compute matters; they are trained briefly on a stratified subset, enough for real
(not random) weights, and their accuracy is kept in the checkpoint and reported, not claimed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optcv.backends.onnx_export import export_onnx
from optcv.backends.onnxruntime_int8 import QuantizeSettings, quantize_onnx
from optcv.build_cache import build_once, key_of, machine_inputs, source_closure
from optcv.cache import mark_used
from optcv.data import CIFAR10, Normalization, stratified_subset
from optcv.training.models import (
    Checkpoint,
    MobileNetV3SmallConfig,
    ModelConfig,
    ResNet18Config,
    TunableNetConfig,
    TutorialNetConfig,
    arch_name,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from optcv.training.train import TrainConfig, train


@dataclass(frozen=True)
class ReferenceModel:
    model: ModelConfig
    train: TrainConfig
    train_images: int | None = None  # a stratified subset of the training split; None: all of it
    eval_images: int = 1000  # test images evaluated after each epoch (the accuracy the report states)
    description: str = ""
    batch_sizes: tuple[int, ...] = (64, 256)  # batched throughput cases
    parity_images: int | None = None  # a stratified test subset for the parity pass; None: all 10,000
    quantize: QuantizeSettings = QuantizeSettings()  # how its int8 twin is made


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    "tutorial": ReferenceModel(TutorialNetConfig(), TrainConfig("SGD", epochs=2, batch_size=4, seed=0),
                               description="the course's TutorialNet, task 2 settings"),
    "tunable": ReferenceModel(TunableNetConfig(hidden_units=(302,), dropouts=(0.205,)),
                              TrainConfig("RMSprop", lr=6.12e-4, epochs=2, batch_size=64, seed=0),
                              description="the course's best tuned TunableNet (302 units, RMSprop)"),
    "resnet18": ReferenceModel(ResNet18Config(), TrainConfig("Adam", epochs=2, batch_size=128, seed=0),
                               train_images=2000, eval_images=500, batch_sizes=(64,), parity_images=2000,
                               description="torchvision ResNet-18, CIFAR stem; briefly trained on a subset"),
    # Its int8 twin is calibrated with Percentile: of nine variants (calibration, images, nodes kept in fp32)
    # compared on 10,000 training images the net never saw, the two Percentile ones alone kept accuracy
    # within the tolerance there; the one with the higher agreement is used. On the test split it passes at
    # the edge (-0.07 overall, -2.0 worst class against 2.0), the same in every build so far.
    "mobilenet_v3_small": ReferenceModel(MobileNetV3SmallConfig(bn_momentum=0.1),
                                         TrainConfig("Adam", epochs=3, batch_size=128, seed=0),
                                         train_images=10_000, eval_images=1000,
                                         quantize=QuantizeSettings(calibrate_method="Percentile"),
                                         description="torchvision MobileNetV3-small; briefly trained on a subset"),
}
COURSE_MODELS = ("tutorial", "tunable")
OPTCV_TREE = Path(__file__).resolve().parents[2]  # the folder that holds this optcv package


# What builds a reference model: this module's recipes and training, and everything they import (optcv.build_cache).
BUILD_ROOTS = ("optcv.measure.reference",)


# The timed cases (optcv.measure.case) need realistic weights (trained, not random), not accuracy, and each side of
# a gate builds them with its own code, both sides at once: so one short epoch on a stratified subset, smallest for
# the compute-heavy torchvision nets.
TIMING_TRAIN_IMAGES = 4_000
TIMING_TRAIN_IMAGES_LARGE = 500  # the nets whose reference recipe trains on a subset: compute-heavy
TIMING_EVAL_IMAGES = 500


def timing_recipe(name: str) -> ReferenceModel:
    """Reference model `name`'s recipe shortened for timing: the same net and int8 settings, one short epoch."""
    spec = REFERENCE_MODELS[name]
    images = TIMING_TRAIN_IMAGES if spec.train_images is None else TIMING_TRAIN_IMAGES_LARGE
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=1), train_images=images,
                               eval_images=TIMING_EVAL_IMAGES)


def build_inputs(name: str, data_source: str, for_timing: bool = False) -> dict[str, Any]:
    """Everything that can change what `build_reference(name)` makes: the recipe, the data, the build's code, the
    libraries, Python and the CPU's kernels."""
    spec = timing_recipe(name) if for_timing else REFERENCE_MODELS[name]
    recipe = {"arch": arch_name(spec.model), "model": dataclasses.asdict(spec.model),
              "train": dataclasses.asdict(spec.train), "train_images": spec.train_images,
              "eval_images": spec.eval_images, "quantize": dataclasses.asdict(spec.quantize)}
    return {"recipe": recipe, "data": data_source, "code": source_closure(OPTCV_TREE, BUILD_ROOTS),
            "machine": machine_inputs()}


def cache_key(name: str, data_source: str) -> str:
    return key_of(build_inputs(name, data_source))


def build_reference(name: str, cifar: CIFAR10, cache_dir: Path, for_timing: bool = False) -> tuple[Path, Path]:
    """(checkpoint, ONNX file) of reference model `name`, trained, exported and quantised (the int8 twin
    beside the ONNX file, optcv.backends.onnxruntime_int8), or taken from the cache when its entry is whole;
    `for_timing`: by its timing recipe (timing_recipe)."""
    if name not in REFERENCE_MODELS:
        raise KeyError(f"unknown reference model {name!r}: choose from {', '.join(REFERENCE_MODELS)}")
    inputs = build_inputs(name, cifar.source, for_timing)
    spec = timing_recipe(name) if for_timing else REFERENCE_MODELS[name]
    area = "timing-models" if for_timing else "bench-models"
    folder = build_once(Path(cache_dir) / area / f"{name}-{key_of(inputs)}", inputs,
                        lambda staging: _build(spec, cifar, staging))
    mark_used(folder)
    return folder / "model.pt", folder / "model.onnx"


def _build(spec: ReferenceModel, cifar: CIFAR10, folder: Path) -> None:
    checkpoint, onnx_path = folder / "model.pt", folder / "model.onnx"
    model = build_model(spec.model, seed=spec.train.seed)
    train_split = stratified_subset(cifar.train, spec.train_images, seed=0)
    test = stratified_subset(cifar.test, spec.eval_images, seed=0)
    history = train(model, train_split, test, spec.train, Normalization(), progress=False)
    save_checkpoint(checkpoint, Checkpoint(spec.model, model.state_dict(), info={
        "trained_for": "optcv benchmarks", "train_images": len(train_split), "eval_images": len(test),
        "history": history.to_dict()}))
    export_onnx(checkpoint, onnx_path, check_images=cifar.test.images[:64].numpy())
    calibration = stratified_subset(cifar.train, spec.quantize.calibration_images, seed=1).images.numpy()
    quantize_onnx(onnx_path, calibration, settings=spec.quantize)


def reference_accuracy(checkpoint: Path) -> dict[str, Any]:
    """The test accuracy the reference model reached when it was built, and on how many images."""
    info = load_checkpoint(checkpoint).info
    last = info["history"]["epochs"][-1]
    return {"test_accuracy": last["test_accuracy"], "eval_images": info.get("eval_images"),
            "train_images": info.get("train_images"), "epochs": len(info["history"]["epochs"])}
