"""The fields of a model declaration (`[tool.optcv.models.NAME]` and its `input` table): one table that the reader
(optcv.declared.config) takes its known keys from, the documentation its reference from, and editors a JSON
Schema from. Defaults are the reader's own constants, never copied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "float16", "float64", "uint8", "int64")
DEFAULT_BACKENDS = ("pytorch", "onnxruntime")
DEFAULT_AGREEMENT_INPUTS = 64
DEFAULT_BATCH_SIZES = (1,)
DEFAULT_THREADS = (1,)


@dataclass(frozen=True)
class Field:
    key: str
    toml: str  # its TOML type, as a reader would write it
    json: dict[str, Any]  # its JSON Schema
    default: str  # "" when required or absent by default
    meaning: str


def _strings(**more: Any) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "minLength": 1}, **more}


def _wholes(minimum: int = 1) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "integer", "minimum": minimum}, "minItems": 1}


_NUMBERS = {"type": "array", "items": {"type": "number"}, "minItems": 1}
_TEXT = {"type": "string", "minLength": 1}

MODEL_FIELDS: tuple[Field, ...] = (
    Field("factory", "string", {**_TEXT, "pattern": "^[^:]+:[^:]+$"}, "",
          '"package.module:callable" returning a torch.nn.Module, imported from the declaring file\'s folder; '
          "exactly one of factory and onnx"),
    Field("kwargs", "table", {"type": "object"}, "{}", "keyword arguments for the factory"),
    Field("weights", "string (path)", _TEXT, "", "a state_dict (or whole-model checkpoint) loaded into the "
                                                 "factory's model"),
    Field("paths", "array of strings (folders)", _strings(), "[]",
          "folders, inside the repository, the factory's package is imported from before the declaring file's "
          'folder (["src"] for a src layout)'),
    Field("onnx", "string (path)", _TEXT, "", "an ONNX file instead of a factory: ONNX Runtime is then the "
                                              "reference"),
    Field("input", "table", {"$ref": "#/$defs/input"}, "", "one example of the model's input (below); required"),
    Field("backends", "array of strings", _strings(minItems=1), str(list(DEFAULT_BACKENDS)).replace("'", '"'),
          "the backends that run and time the model"),
    Field("batch_sizes", "array of integers", _wholes(), str(list(DEFAULT_BATCH_SIZES)), "batch sizes timed"),
    Field("threads", "array of integers", _wholes(), str(list(DEFAULT_THREADS)), "thread counts timed"),
    Field("labels", "string (folder)", _TEXT, "", "one sub-folder of images per class: per-class parity"),
    Field("agreement_inputs", "integer", {"type": "integer", "minimum": 1}, str(DEFAULT_AGREEMENT_INPUTS),
          "without labels: inputs on which every fp32 backend must give the reference's top-1 (int8: 98 % of them)"),
    Field("tolerances", "table of numbers", {"type": "object", "additionalProperties": {"type": "number",
                                                                                       "minimum": 0}}, "{}",
          "backend → the largest |logit difference| allowed; tolerances.onnxruntime is also the export's bar"),
)

INPUT_FIELDS: tuple[Field, ...] = (
    Field("shape", "array of integers", _wholes(), "", "one example's shape, without the batch; required"),
    Field("dtype", "string", {"enum": list(DTYPES)}, '"float32"', "one of " + ", ".join(DTYPES)),
    Field("range", "array of 2 numbers", {**_NUMBERS, "minItems": 2, "maxItems": 2},
          "[0, 1] ([0, 255] for uint8)", "synthetic inputs are drawn uniformly from it"),
    Field("mean", "array of numbers", _NUMBERS, "", "per channel (float inputs): (x - mean) / std; with std"),
    Field("std", "array of numbers", _NUMBERS, "", "per channel, positive; with mean"),
    Field("samples", "string (folder)", _TEXT, "", "images to read instead of synthetic inputs: resized, "
                                                  "centre-cropped to the shape, scaled to [0, 1]"),
    Field("resize", "integer", {"type": "integer", "minimum": 1}, "the crop's longer side",
          "the short side sample images are resized to before the crop"),
)

MODEL_KEYS = frozenset(f.key for f in MODEL_FIELDS)
INPUT_KEYS = frozenset(f.key for f in INPUT_FIELDS)


def json_schema() -> dict[str, Any]:
    """A JSON Schema of the `[tool.optcv]` table (draft 2020-12), for an editor's completion and checks."""
    def table(fields: tuple[Field, ...], required: tuple[str, ...]) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "required": list(required),
                "properties": {f.key: {**f.json, "description": f.meaning} for f in fields}}

    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "[tool.optcv]", "type": "object",
            "properties": {"models": {"type": "object", "additionalProperties": {"$ref": "#/$defs/model"}}},
            "$defs": {"model": {**table(MODEL_FIELDS, ("input",)),
                                "oneOf": [{"required": ["factory"]}, {"required": ["onnx"]}]},
                      "input": table(INPUT_FIELDS, ("shape",))}}
