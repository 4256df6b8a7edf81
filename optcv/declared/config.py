"""A user's own models, declared in their repository's `pyproject.toml` (`[tool.optcv.models.NAME]`) or in an
`optcv.toml` (`[models.NAME]`): read, checked field by field, and turned into typed declarations.

Nothing here imports the user's code or a runtime: a declaration that is wrong in its own terms (a field
missing, of the wrong type, a folder that does not exist) is refused before anything is built, with one line
that names the file, the model, the field and the fix. What can only be seen by building (a factory that does
not import, an input the model rejects) is checked in optcv.declared.build.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from optcv.declared.schema import (
    DEFAULT_AGREEMENT_INPUTS,
    DEFAULT_BACKENDS,
    DEFAULT_BATCH_SIZES,
    DEFAULT_THREADS,
    DTYPES,
    INPUT_KEYS,
    MODEL_KEYS,
)
from optcv.errors import OptcvError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = "pyproject.toml"
OPTCV_TOML = "optcv.toml"


class DeclarationError(OptcvError):
    """A declared model is malformed: the message names the file, the model, the field and the fix."""


@dataclass(frozen=True)
class InputSpec:
    """What one example of the model's input is (the batch dimension is never part of `shape`).

    Synthetic inputs are drawn uniformly from `value_range`; with `samples`, images are read from that folder,
    resized so their short side is `resize` (default: the crop's longer side) and centre-cropped to `shape`'s
    height and width, a float32 input scaled to [0, 1] first. Either way, `mean` and `std` (per channel, float
    inputs only) then normalise them as the model expects: (x - mean) / std.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    samples: Path | None = None
    resize: int | None = None


@dataclass(frozen=True)
class DeclaredModel:
    name: str
    input: InputSpec
    root: Path  # the folder of the declaring file: relative paths and factory modules are found from there
    source: Path  # the declaring file
    factory: str | None = None  # "package.module:callable"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None  # a state_dict (or a whole-model checkpoint) loaded into the factory's model
    onnx: Path | None = None  # instead of a factory: ONNX Runtime is then the reference
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: tuple[int, ...] = DEFAULT_THREADS
    labels: Path | None = None  # class per sub-folder, for per-class parity
    agreement_inputs: int = DEFAULT_AGREEMENT_INPUTS  # without labels: inputs on which top-1 must agree
    tolerances: Mapping[str, float] = field(default_factory=dict)  # backend -> max |logit difference|
    paths: tuple[Path, ...] = ()  # folders the factory's package is imported from, before root (a src layout)

    @property
    def import_folders(self) -> tuple[Path, ...]:
        """Where the factory's module is looked for, first to last."""
        return (*self.paths, self.root)

    @property
    def reference_backend(self) -> str:
        return "pytorch" if self.factory else "onnxruntime"




def find_declarations(start: str | Path | None = None) -> Path | None:
    """The nearest `optcv.toml`, or `pyproject.toml` with a `[tool.optcv]` table, in `start` or a parent."""
    folder = Path(start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / OPTCV_TOML).is_file():
            return candidate / OPTCV_TOML
        pyproject = candidate / PYPROJECT
        if pyproject.is_file() and "optcv" in _read_toml(pyproject).get("tool", {}):
            return pyproject
    return None


def load_declarations(path: str | Path, known_backends: Collection[str] = ()) -> dict[str, DeclaredModel]:
    """Every model declared in `path`, checked; `known_backends` (when given) are the names a model may ask for."""
    path = Path(path).resolve()
    table = _read_toml(path)
    if path.name != OPTCV_TOML:
        table = table.get("tool", {}).get("optcv", {})
    models = table.get("models")
    unknown = sorted(set(table) - {"models"})
    if unknown:
        raise DeclarationError(f"{path}: unknown key {unknown[0]!r} in the optcv table; models go in "
                               f"[{_prefix(path)}models.NAME]")
    if not isinstance(models, dict) or not models:
        raise DeclarationError(f"{path}: no models declared; add a [{_prefix(path)}models.NAME] table with a "
                               "factory or onnx and an input")
    return {name: _model(name, values, path, known_backends) for name, values in models.items()}


def _prefix(path: Path) -> str:
    return "" if path.name == OPTCV_TOML else "tool.optcv."


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationError(f"{path} is not valid TOML ({exc}); fix the file") from exc
    except OSError as exc:
        raise DeclarationError(f"cannot read {path} ({exc.strerror}); check the path") from exc


class _Fields:
    """Reads one table's fields, each refusal naming the file, the model and the field."""

    def __init__(self, path: Path, model: str, values: Any, where: str = ""):
        self.path, self.model, self.where = path, model, where
        if not isinstance(values, dict):
            self.fail("", f"must be a table, got {type(values).__name__}")
        self.values: dict[str, Any] = values

    def fail(self, key: str, problem: str) -> NoReturn:
        name = ".".join(p for p in (self.where, key) if p)
        raise DeclarationError(f"{self.path}: model {self.model!r}{': ' + name if name else ''} {problem}")

    def check_keys(self, known: Collection[str]) -> None:
        unknown = sorted(set(self.values) - set(known))
        if unknown:
            self.fail(unknown[0], f"is not a field; the fields are {', '.join(sorted(known))}")

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def path_(self, key: str, root: Path, *, folder: bool = False) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        resolved = (root / value).resolve()
        if folder and not resolved.is_dir():
            self.fail(key, f"names {resolved}, which is not a folder; give a folder relative to {root}")
        if not folder and not resolved.is_file():
            self.fail(key, f"names {resolved}, which does not exist; give a file relative to {root}")
        return resolved

    def folders(self, key: str, root: Path) -> tuple[Path, ...]:
        value = self.values.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(key, f"must be a list of folders relative to {root}, got {value!r}")
        found = tuple((root / v).resolve() for v in value)
        for text, folder in zip(value, found, strict=True):
            if not folder.is_dir():
                self.fail(key, f"names {text!r}, which is not a folder in {root}; give the folder your package is in "
                               "(e.g. \"src\")")
            if not folder.is_relative_to(root.resolve()):
                self.fail(key, f"names {text!r}, outside {root}; a gate checks out only the repository, so the "
                               "package must be inside it")
        return found

    def ints(self, key: str, default: tuple[int, ...], *, minimum: int = 1) -> tuple[int, ...]:
        value = self.values.get(key, list(default))
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
            self.fail(key, f"must be a non-empty list of whole numbers >= {minimum}, got {value!r}")
        return tuple(value)

    def whole(self, key: str, default: int | None, *, minimum: int = 1) -> int | None:
        value = self.values.get(key, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
            self.fail(key, f"must be a whole number >= {minimum}, got {value!r}")
        return value

    def numbers(self, key: str, length: int | None = None) -> tuple[float, ...] | None:
        value = self.values.get(key)
        if value is None:
            return None
        if (not isinstance(value, list) or not value or (length is not None and len(value) != length)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            size = f"{length} numbers" if length else "a non-empty list of numbers"
            self.fail(key, f"must be {size}, got {value!r}")
        return tuple(float(v) for v in value)


def _model(name: str, values: Any, path: Path, known_backends: Collection[str]) -> DeclaredModel:
    fields = _Fields(path, name, values)
    fields.check_keys(MODEL_KEYS)
    root = path.parent
    factory, onnx = fields.text("factory"), fields.path_("onnx", root)
    if (factory is None) == (onnx is None):
        fields.fail("", "needs exactly one of factory = \"package.module:callable\" and onnx = \"path/model.onnx\"")
    if factory is not None and (factory.count(":") != 1 or not all(factory.split(":"))):
        fields.fail("factory", f"must look like \"package.module:callable\", got {factory!r}")
    kwargs = values.get("kwargs", {})
    if not isinstance(kwargs, dict):
        fields.fail("kwargs", f"must be a table of keyword arguments, got {kwargs!r}")
    if onnx is not None and ("kwargs" in values or "weights" in values or "paths" in values):
        fields.fail("onnx", "takes no kwargs, weights or paths (those are for a factory); remove them")
    backends = tuple(values.get("backends", DEFAULT_BACKENDS))
    if not backends or not all(isinstance(b, str) for b in backends):
        fields.fail("backends", f"must be a non-empty list of backend names, got {values.get('backends')!r}")
    unknown = [b for b in backends if known_backends and b not in known_backends]
    if unknown:
        fields.fail("backends", f"names {unknown[0]!r}, which optcv does not know; choose from "
                                f"{', '.join(known_backends)}")
    if onnx is not None and {"pytorch", "torch-compile"} & set(backends):
        fields.fail("backends", "asks for a PyTorch backend, but an ONNX-only model has no PyTorch code; declare a "
                                "factory instead, or drop pytorch and torch-compile")
    tolerances = values.get("tolerances", {})
    if not isinstance(tolerances, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in tolerances.values()):
        fields.fail("tolerances", f"must map backend names to a maximum |logit difference| >= 0, got {tolerances!r}")
    stray = sorted(set(tolerances) - set(backends))
    if stray:
        fields.fail(f"tolerances.{stray[0]}", f"is for a backend the model does not list in backends {list(backends)}")
    agreement = fields.whole("agreement_inputs", DEFAULT_AGREEMENT_INPUTS) or DEFAULT_AGREEMENT_INPUTS
    return DeclaredModel(
        name=name, input=_input(fields, values.get("input"), root), root=root, source=path, factory=factory,
        kwargs=dict(kwargs), weights=fields.path_("weights", root), onnx=onnx, backends=backends,
        batch_sizes=fields.ints("batch_sizes", DEFAULT_BATCH_SIZES), threads=fields.ints("threads", DEFAULT_THREADS),
        labels=fields.path_("labels", root, folder=True), agreement_inputs=agreement,
        tolerances={k: float(v) for k, v in tolerances.items()}, paths=fields.folders("paths", root))


def _input(model: _Fields, values: Any, root: Path) -> InputSpec:
    if values is None:
        model.fail("input", "is missing; add input = { shape = [3, 224, 224], dtype = \"float32\" } (no batch "
                            "dimension)")
    fields = _Fields(model.path, model.model, values, where="input")
    fields.check_keys(INPUT_KEYS)
    shape = fields.ints("shape", ())
    dtype = fields.text("dtype") or "float32"
    if dtype not in DTYPES:
        fields.fail("dtype", f"is {dtype!r}; choose from {', '.join(DTYPES)}")
    low, high = fields.numbers("range", 2) or ((0.0, 255.0) if dtype == "uint8" else (0.0, 1.0))
    if not low < high:
        fields.fail("range", f"must be [low, high] with low < high, got {[low, high]}")
    mean, std = fields.numbers("mean"), fields.numbers("std")
    if (mean is None) != (std is None) or (mean and std and len(mean) != len(std)):
        fields.fail("mean", "and std go together, one number per channel each")
    if mean and not dtype.startswith("float"):
        fields.fail("mean", f"normalises to floats, but the input's dtype is {dtype}; use float32 or drop mean and "
                            "std")
    if std and not all(s > 0 for s in std):
        fields.fail("std", f"must be positive, got {list(std)}")
    if mean and len(mean) not in (1, shape[0]):
        fields.fail("mean", f"has {len(mean)} numbers for {shape[0]} channels (shape {list(shape)}); give one per "
                            "channel")
    samples = fields.path_("samples", root, folder=True)
    resize = fields.whole("resize", None)
    if samples is not None:
        if len(shape) != 3 or shape[0] not in (1, 3) or dtype == "int64":
            fields.fail("samples", f"are images: the input must be float or uint8 (channels, height, width) with "
                                   f"1 or 3 channels, got {dtype} {list(shape)}")
        if not any(p.is_file() for p in samples.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
            fields.fail("samples", f"folder {samples} holds no .png/.jpg/.jpeg images; add some or remove samples")
    elif resize is not None:
        fields.fail("resize", "applies to sample images only; add samples = \"folder\" or remove resize")
    return InputSpec(shape=shape, dtype=dtype, value_range=(low, high), mean=mean, std=std, samples=samples,
                     resize=resize)
