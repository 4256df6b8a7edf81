"""`optcv export`: a checkpoint to ONNX (and its int8 twin), checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from optcv.backends.onnx_export import DEFAULT_ATOL, DEFAULT_OPSET, export_declared, export_onnx
from optcv.backends.onnxruntime_int8 import KEEP_FP32_KINDS, QuantizeSettings, quantize_from_data, quantize_onnx
from optcv.cli.common import (
    add_data_options,
    declared_model,
    is_declared_name,
    positive_float,
    positive_int,
    progress,
)
from optcv.declared.build import build_declared, describe_input
from optcv.declared.config import DeclarationError
from optcv.declared.inputs import sample_inputs


def add_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a checkpoint or a declared model to ONNX and check it "
                                                "against PyTorch")
    export.add_argument("checkpoint", help="an optcv checkpoint (.pt), or the name of a model declared in "
                                           "pyproject.toml or optcv.toml")
    export.add_argument("-o", "--output", help="the .onnx file (default: the checkpoint's name with .onnx; NAME.onnx "
                                               "for a declared model)")
    export.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET,
                        help="the ONNX opset to export to (default %(default)s)")
    export.add_argument("--atol", type=positive_float,
                        help=f"largest allowed |ONNX Runtime - PyTorch| logit difference (default {DEFAULT_ATOL:g}, "
                             "or a declared model's tolerances.onnxruntime)")
    export.add_argument("--declarations", type=Path, metavar="FILE",
                        help="the pyproject.toml or optcv.toml that declares the model (default: the nearest one)")
    export.add_argument("--int8", action="store_true", help="also write the int8 model (NAME.int8.onnx) for the "
                        "onnxruntime-int8 backend, statically quantised and calibrated on training images")
    export.add_argument("--calibration-images", type=positive_int, default=QuantizeSettings.calibration_images,
                        help="training images the int8 calibration sees (default %(default)s)")
    export.add_argument("--keep-fp32", nargs="+", default=list(QuantizeSettings.keep_fp32), choices=KEEP_FP32_KINDS,
                        metavar="KIND", help=f"int8: leave these nodes in fp32 ({', '.join(KEEP_FP32_KINDS)}), "
                                             "where quantising them costs accuracy")
    add_data_options(export)
    export.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if is_declared_name(args.checkpoint):
        return _export_declared(args)
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    result = export_onnx(args.checkpoint, out, opset=args.opset, atol=args.atol or DEFAULT_ATOL)
    print(f"wrote {result.path} (opset {result.opset}, dynamic batch, uint8 NCHW input 'images' → 'logits')")
    print(f"max |ONNX Runtime - PyTorch| logit difference: {result.max_abs_diff:.3g} (tolerance {result.tolerance:g})")
    if args.int8:

        settings = QuantizeSettings(calibration_images=args.calibration_images, keep_fp32=tuple(args.keep_fp32))
        path = quantize_from_data(out, args.data_dir, settings, progress=progress(args))
        print(f"wrote {path} (int8 QDQ, per-channel, calibrated on {settings.calibration_images:,} training images, "
              f"reduce_range {settings.resolved_reduce_range()}); check it with `optcv evaluate {args.checkpoint} "
              "--backends pytorch onnxruntime-int8`")
    return 0


def _export_declared(args: argparse.Namespace) -> int:
    model = declared_model(args.checkpoint, args.declarations)
    if model.factory is None:
        raise DeclarationError(f"declared model {model.name!r} is an ONNX file already ({model.onnx}); there is "
                               "nothing to export")
    out = Path(args.output or f"{model.name}.onnx")
    result = export_declared(build_declared(model), out, opset=args.opset, atol=args.atol)
    print(f"wrote {result.path} (opset {result.opset}, dynamic batch, input 'images' {describe_input(model.input)})")
    print(f"max |ONNX Runtime - PyTorch| logit difference: {result.max_abs_diff:.3g} (tolerance {result.tolerance:g})")
    if args.int8:
        settings = QuantizeSettings(calibration_images=args.calibration_images, keep_fp32=tuple(args.keep_fp32))
        what = "sample images" if model.input.samples else "synthetic inputs"
        path = quantize_onnx(out, sample_inputs(model.input, settings.calibration_images), settings=settings,
                             input_spec=model.input)
        print(f"wrote {path} (int8 QDQ, per-channel, calibrated on {settings.calibration_images:,} {what}, "
              f"reduce_range {settings.resolved_reduce_range()})")
    return 0
