"""A declared model made real: its factory imported from the user's tree and called, its weights loaded, and
one forward pass on the declared input, so that a wrong declaration is refused before anything is timed.
An ONNX-only model has its file's input compared with the declared one."""

from __future__ import annotations

import copy
import hashlib
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optcv.declared.config import DeclarationError, DeclaredModel, InputSpec
from optcv.declared.inputs import labelled_inputs, synthetic_inputs
from optcv.errors import first_line

FACTORY_SEED = 0
# ONNX TensorProto element types of the dtypes a declaration may name.
ONNX_DTYPES = {"float32": 1, "uint8": 2, "int64": 7, "float16": 10, "float64": 11}


def _refuse(model: DeclaredModel, problem: str) -> DeclarationError:
    return DeclarationError(f"{model.source}: model {model.name!r}: {problem}")


@contextmanager
def on_path(*folders: Path) -> Iterator[None]:
    """`folders` first on sys.path, in order, while the block runs (the user's modules live there), then as it
    was."""
    saved = list(sys.path)
    sys.path[:0] = [str(f) for f in folders]
    try:
        yield
    finally:
        sys.path[:] = saved


def import_factory(model: DeclaredModel) -> Callable[..., Any]:
    assert model.factory is not None
    module_name, attribute = model.factory.split(":")
    with on_path(*model.import_folders):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise _refuse(model, f"factory {model.factory!r} does not import ({type(exc).__name__}: "
                                 f"{first_line(exc)}); give a module importable from {model.root} (or a folder in "
                                 "paths, such as src) or an installed package") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise _refuse(model, f"factory {model.factory!r}: {module_name} has no callable {attribute!r}; name the "
                             "function or class that returns the torch.nn.Module")
    return factory


def build_torch_model(model: DeclaredModel) -> torch.nn.Module:
    """The factory's model with its weights, in eval mode, checked on the declared input."""
    factory = import_factory(model)
    try:
        # Seeded, so a factory that initialises at random (no weights file) gives the same model in every process:
        # both sides of a gate and every cached export agree. The caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FACTORY_SEED)
            net = factory(**model.kwargs)
    except Exception as exc:
        raise _refuse(model, f"factory {model.factory!r} raised {type(exc).__name__}: {first_line(exc)}; fix the "
                             "factory or its kwargs") from exc
    if not isinstance(net, torch.nn.Module):
        raise _refuse(model, f"factory {model.factory!r} returned a {type(net).__name__}, not a torch.nn.Module")
    if model.weights is not None:
        _load_weights(model, net)
    net.eval()
    output_classes(model, net)
    return net


def _load_weights(model: DeclaredModel, net: torch.nn.Module) -> None:
    assert model.weights is not None
    try:
        state = torch.load(model.weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _refuse(model, f"weights {model.weights} are not a readable state_dict ({type(exc).__name__}); save "
                             "them with torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except Exception as exc:
        raise _refuse(model, f"weights {model.weights} do not fit the factory's model ({first_line(exc)}); save "
                             "them from the same architecture and kwargs") from exc


@dataclass(frozen=True)
class DeclaredNet:
    """A declared factory's model, built: what PyTorch predictors are made from (backends.base.InferenceSource)."""

    model: DeclaredModel
    module: torch.nn.Module
    classes: tuple[str, ...]
    code_digest: str  # of the factory's source files: a changed forward is a changed model

    @property
    def input_spec(self) -> InputSpec:
        return self.model.input

    def build_inference(self) -> torch.nn.Module:
        return copy.deepcopy(self.module).eval()

    def weights_digest(self) -> str:
        """SHA-256 of every parameter and buffer, by name: a factory that draws new random weights each time
        gives a new digest."""
        digest = hashlib.sha256()
        for name, tensor in self.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def build_declared(model: DeclaredModel) -> DeclaredNet:
    net = build_torch_model(model)
    return DeclaredNet(model, net, class_names(model, output_classes(model, net)), factory_code_digest(model))


def class_names(model: DeclaredModel, count: int) -> tuple[str, ...]:
    """The labels folder's class folders in name order, or the logits' indices."""
    if model.labels is not None:
        return tuple(sorted(p.name for p in model.labels.iterdir() if p.is_dir() and not p.name.startswith(".")))
    return tuple(str(i) for i in range(count))


def factory_code_digest(model: DeclaredModel) -> str:
    """SHA-256 of every Python file of the factory's top-level package (or of its module alone)."""
    assert model.factory is not None
    with on_path(*model.import_folders):
        top = importlib.import_module(model.factory.split(":")[0].split(".")[0])
    folder = Path(top.__file__ or "").parent if hasattr(top, "__path__") else None
    files = sorted(folder.rglob("*.py")) if folder else [Path(top.__file__ or "")]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(files[0].parent if folder is None else folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def output_classes(model: DeclaredModel, net: torch.nn.Module) -> int:
    """The number of logits per input, from one forward pass on two declared inputs."""
    example = torch.from_numpy(synthetic_inputs(model.input, 2))
    try:
        with torch.inference_mode():
            logits = net(example)
    except Exception as exc:
        raise _refuse(model, f"the model rejects the declared input {model.input.dtype} "
                             f"{list(model.input.shape)} ({type(exc).__name__}: {first_line(exc)}); set input.shape "
                             "(without the batch) and input.dtype to what its forward takes") from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise _refuse(model, f"its forward must return logits shaped (batch, classes), got {got} for a batch of 2; "
                             "return the classifier's output tensor")
    return int(logits.shape[1])


def check_onnx_input(model: DeclaredModel) -> None:
    """Refuse an ONNX file whose first input is not the declared one (dtype, and every fixed non-batch size)."""
    import onnx

    assert model.onnx is not None
    try:
        graph = onnx.load(str(model.onnx), load_external_data=False).graph
    except Exception as exc:
        raise _refuse(model, f"onnx {model.onnx} is not a readable ONNX model ({type(exc).__name__}); export it "
                             "again") from exc
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    declared = [None, *model.input.shape]
    fits = len(dims) == len(declared) and all(
        d is None or w is None or d == w for d, w in zip(dims, declared, strict=True))
    if tensor.elem_type != ONNX_DTYPES[model.input.dtype] or not fits:
        name = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        shown = ["N" if d is None else d for d in dims]
        raise _refuse(model, f"onnx {model.onnx.name} takes {name} {shown}, but the declared input is "
                             f"{model.input.dtype} [N, {', '.join(map(str, model.input.shape))}]; declare the "
                             "file's input")


@dataclass(frozen=True)
class ModelCheck:
    """What building a declared model found: enough to show the user optcv understood the declaration."""

    name: str
    source: str  # the factory, or the ONNX file's name
    reference: str  # the backend the others are compared with
    input: str  # e.g. "float32 [N, 3, 224, 224], synthetic in [0, 1], normalised"
    classes: int
    parameters: int | None  # None for an ONNX-only model
    labelled_images: int | None
    backends: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    threads: tuple[int, ...]


def onnx_classes(model: DeclaredModel) -> int:
    """The number of logits per input of an ONNX-only model, from ONNX Runtime on two declared inputs."""
    import onnxruntime as ort

    assert model.onnx is not None
    check_onnx_input(model)
    try:
        session = ort.InferenceSession(str(model.onnx), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: synthetic_inputs(model.input, 2)})[0]
    except Exception as exc:
        raise _refuse(model, f"ONNX Runtime cannot run {model.onnx.name} on the declared input "
                             f"({type(exc).__name__}: {first_line(exc)}); declare the file's input") from exc
    if logits.ndim != 2 or logits.shape[0] != 2:
        raise _refuse(model, f"{model.onnx.name}'s first output must be logits shaped (batch, classes), got "
                             f"{list(logits.shape)} for a batch of 2")
    return int(logits.shape[1])


def check_model(model: DeclaredModel) -> ModelCheck:
    """Build `model` as every command will (import, weights, a forward pass) and check its labels fit it."""
    parameters = None
    if model.factory is not None:
        net = build_torch_model(model)
        classes = output_classes(model, net)
        parameters = sum(p.numel() for p in net.parameters())
    else:
        classes = onnx_classes(model)
    labelled = None
    if model.labels is not None:
        folders = sorted(p.name for p in model.labels.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(folders) != classes:
            raise _refuse(model, f"labels {model.labels} has {len(folders)} class folders but the model returns "
                                 f"{classes} logits; give one sub-folder per class, in the model's class order by name")
        labelled = len(labelled_inputs(model.input, model.labels)[1])
    source = model.factory or (model.onnx.name if model.onnx else "")
    return ModelCheck(model.name, source, model.reference_backend,
                      describe_input(model.input), classes, parameters, labelled, model.backends, model.batch_sizes,
                      model.threads)


def describe_input(spec: InputSpec) -> str:
    where = f"images from {spec.samples.name}/" if spec.samples else (
        f"synthetic in [{spec.value_range[0]:g}, {spec.value_range[1]:g}]")
    normalised = ", normalised" if spec.mean else ""
    return f"{spec.dtype} [N, {', '.join(map(str, spec.shape))}], {where}{normalised}"
