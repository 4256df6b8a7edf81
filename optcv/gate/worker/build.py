"""`build`: each model the gate times, trained, exported and quantised by the side's own code, or reused from the
cache (optcv.build_cache: keyed by the recipe, the side's build code, this file, the libraries and the CPU)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from .protocol import Build, Built, DeclaredModelFiles, DeclaredRecipe, ReferenceModel, ReferenceRecipe
from .side import harness_module, optcv_file, side_code_hash, side_module, side_module_names, side_tree, versions

# The side's modules a build runs (with everything they import): a change to any of them makes a new entry.
BUILD_ROLES = ("models", "train", "export", "quantize", "data")
DECLARED: dict[str, Any] = {}  # per worker, each declared model and its ModelSource, built once


def build_models(request: Build) -> Built:
    """Build or reuse every requested model; a reference recipe's entry also holds its int8 twin where asked."""
    cache = harness_module("build_cache")
    tree = side_tree()
    code = cache.source_closure(tree, side_module_names(tree, BUILD_ROLES))
    harness = harness_hash()
    data: list[Any] = []  # loaded once, on first need
    built: dict[str, ReferenceModel | DeclaredModelFiles] = {}
    for name, recipe in request.models.items():
        if isinstance(recipe, DeclaredRecipe):
            built[name] = _build_declared(recipe, Path(request.tree), Path(request.cache_dir))
            continue
        inputs = {"recipe": dataclasses.asdict(recipe), "code": code, "harness": harness, "data": request.data_dir,
                  "machine": cache.machine_inputs()}
        folder = Path(request.cache_dir) / "gate-artifacts" / f"{name}-{cache.key_of(inputs)}"
        cache.build_once(folder, inputs, lambda staging, r=recipe: _build_reference(r, staging, _data(request, data)))
        side_module("cache").mark_used(folder)
        built[name] = ReferenceModel(str(folder / "model.pt"), str(folder / "model.onnx"))
    return Built(built, side_code_hash(), versions(), optcv_file())


def harness_hash() -> str:
    """This file's hash: how a recipe is built here is part of every entry's key."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _data(request: Build, loaded: list[Any]) -> Any:
    if not loaded:
        loaded.append(side_module("data").load_cifar10(request.data_dir, progress=False))
    return loaded[0]


def _build_reference(recipe: ReferenceRecipe, folder: Path, data: Any) -> None:
    data_module, models, train = side_module("data"), side_module("models"), side_module("train")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.config.items()}
    model_config = models.config_from_dict(recipe.arch, config)
    train_config = train.TrainConfig(recipe.optimizer, lr=recipe.lr, epochs=recipe.epochs,
                                     batch_size=recipe.batch_size, seed=recipe.seed)
    model = models.build_model(model_config, seed=recipe.seed)
    subset = data_module.stratified_subset(data.train, recipe.train_images, seed=0)
    train.train(model, subset, data_module.stratified_subset(data.test, 500, seed=0), train_config, progress=False)
    checkpoint, onnx_path = folder / "model.pt", folder / "model.onnx"
    info = {"trained_for": "gate"}
    models.save_checkpoint(checkpoint, models.Checkpoint(model_config, model.state_dict(), info=info))
    side_module("export").export_onnx(checkpoint, onnx_path, check_images=data.test.images[:64].numpy())
    if recipe.int8 is not None:
        _quantize(recipe.int8, onnx_path, data)


def _quantize(settings: dict[str, Any], onnx_path: Path, data: Any) -> None:
    try:
        quantize = side_module("quantize")
    except ModuleNotFoundError:
        raise RuntimeError("this side has no onnxruntime-int8 backend (no optcv quantisation module)") from None
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    calibration = side_module("data").stratified_subset(data.train, fields["calibration_images"], seed=1)
    quantize.quantize_onnx(onnx_path, calibration.images.numpy(), settings=quantize.QuantizeSettings(**fields))


def declared_model(entry: DeclaredRecipe, tree: Path) -> Any:
    """A user's model as this side's revision (at `tree`) declares it, to be built for the backends the gate needs."""
    path = tree / (entry.declarations or "")
    if not entry.declarations or not path.is_file():
        raise RuntimeError(f"this revision has no {entry.declarations}, so it declares no model {entry.declared!r}")
    models = side_module("declarations").load_declarations(path)
    if entry.declared not in models:
        raise RuntimeError(f"this revision's {entry.declarations} declares no model {entry.declared!r} "
                           f"(it declares {', '.join(models)})")
    return dataclasses.replace(models[entry.declared], backends=tuple(entry.backends))


def _build_declared(recipe: DeclaredRecipe, tree: Path, cache_dir: Path) -> DeclaredModelFiles:
    """A declared model built from this side's tree (exported, quantised, cached by its code and weights); its
    factory's module must come from that tree, or both sides would time the same code."""
    model = declared_model(recipe, tree)
    source = side_module("runtime").declared_source(model, cache_dir)
    if model.factory is not None:
        outside = harness_module("declared.origin").factory_outside_tree(model.factory.split(":")[0], tree)
        if outside:
            raise RuntimeError(outside)
    return DeclaredModelFiles(recipe.declared, recipe.declarations, tuple(recipe.backends), str(tree), str(cache_dir),
                              str(source.onnx))


def declared_source(entry: DeclaredModelFiles) -> tuple[Any, Any]:
    """(the declared model, its ModelSource), built once per worker: every case of a model shares them (the
    factory, its forward check and the weights' digest cost seconds on an ImageNet-sized net)."""
    if entry.declared not in DECLARED:
        model = declared_model(DeclaredRecipe(entry.declared, entry.declarations, entry.backends), Path(entry.tree))
        DECLARED[entry.declared] = model, side_module("runtime").declared_source(model, Path(entry.cache_dir))
    return DECLARED[entry.declared]
