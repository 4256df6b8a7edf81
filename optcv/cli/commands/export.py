"""`optcv export`: a checkpoint to ONNX (and its int8 twin), checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from optcv.backends.onnx_export import DEFAULT_ATOL, DEFAULT_OPSET, export_onnx
from optcv.backends.onnxruntime_int8 import KEEP_FP32_KINDS, QuantizeSettings, quantize_from_data
from optcv.cli.common import (
    add_data_options,
    positive_float,
    positive_int,
    progress,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    export.add_argument("checkpoint", help="an optcv checkpoint (.pt)")
    export.add_argument("-o", "--output", help="the .onnx file (default: the checkpoint's name with .onnx)")
    export.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET)
    export.add_argument("--atol", type=positive_float, default=DEFAULT_ATOL,
                        help="largest allowed |ONNX Runtime - PyTorch| logit difference (default %(default)g)")
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
    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    result = export_onnx(args.checkpoint, out, opset=args.opset, atol=args.atol)
    print(f"wrote {result.path} (opset {result.opset}, dynamic batch, uint8 NCHW input 'images' → 'logits')")
    print(f"max |ONNX Runtime - PyTorch| logit difference: {result.max_abs_diff:.3g} (tolerance {result.tolerance:g})")
    if args.int8:

        settings = QuantizeSettings(calibration_images=args.calibration_images, keep_fp32=tuple(args.keep_fp32))
        path = quantize_from_data(out, args.data_dir, settings, progress=progress(args))
        print(f"wrote {path} (int8 QDQ, per-channel, calibrated on {settings.calibration_images:,} training images, "
              f"reduce_range {settings.resolved_reduce_range()}); check it with `optcv evaluate {args.checkpoint} "
              "--backends pytorch onnxruntime-int8`")
    return 0
