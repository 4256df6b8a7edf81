"""`optcv bench`: per-image latency the course's way, batched throughput, the limits, `--search`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from optcv._io import write_json
from optcv.cli.commands.history import add_history_option, record_in_history
from optcv.cli.common import (
    add_data_options,
    add_model_options,
    chosen_model,
    positive_int,
    progress,
    settings_text,
)
from optcv.data import load_cifar10
from optcv.declared.inputs import sample_inputs
from optcv.env import describe_environment
from optcv.measure.latency import BenchConfig, run_bench
from optcv.measure.limits import limits_of_source
from optcv.measure.search import SearchConfig, kept_settings, run_search, save_search, settings_path, tuned_candidates
from optcv.report.latency import latency_rows, limits_markdown, search_rows
from optcv.report.tables import markdown_table
from optcv.runtime import make_predictor

# A declared model's inputs the timed calls cycle through (the course's way uses the 10,000 test images).
DECLARED_BENCH_INPUTS = 256


def add_parser(commands: argparse._SubParsersAction) -> None:
    default = BenchConfig()
    bench = commands.add_parser("bench", help="per-image latency (the course's way) and batched throughput",
                                description="Times single-image predictions over the test images for every "
                                            "backend, interleaved, then batched throughput; each backend is first "
                                            "calibrated to its fastest thread count and options.")
    add_model_options(bench)
    bench.add_argument("-n", type=positive_int, default=default.n_single,
                       help=f"single-image predictions per backend (default {default.n_single:,}, the course's)")
    bench.add_argument("--chunk", type=positive_int, default=default.chunk,
                       help="calls per backend between switches")
    bench.add_argument("--batch-sizes", nargs="*", type=positive_int, default=list(default.batch_sizes),
                       help="batch sizes whose throughput is timed after the single-image latency (default "
                            "%(default)s; none: latency only)")
    bench.add_argument("--threads", type=positive_int, help="fix the thread count (default: try 1 and all cores)")
    bench.add_argument("--no-calibrate", action="store_true", help="use the default settings, try no others")
    bench.add_argument("--search", action="store_true",
                       help="time every backend's grid of settings (threads, graph level, spinning, oneDNN, "
                            "channels-last, hints) interleaved, print it, and keep the fastest per batch size "
                            "beside the model (MODEL.settings.json), which later runs of bench then use")
    bench.add_argument("--json", help="write the results to this JSON file (input of `optcv gate`)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    add_history_option(bench, recording=True)
    add_data_options(bench)
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source, chosen, declared = chosen_model(args)
    if declared is None:
        images = load_cifar10(args.data_dir, download=args.download, progress=progress(args)).test.images.numpy()
        model = Path(source.checkpoint or source.onnx or "model").stem
    else:
        images, model = sample_inputs(declared.input, DECLARED_BENCH_INPUTS), declared.name
    if args.search:
        _search(args, source, chosen, images, model)
    if args.no_calibrate:
        backends = {b: [make_predictor(b, source, args.threads)] for b in chosen}
    else:
        backends = {b: tuned_candidates(b, source, args.threads) for b in chosen}
        if args.threads is None and kept_settings(source):
            print(f"settings: the fastest per batch size from {settings_path(source)} (optcv bench --search)")
    config = BenchConfig(n_single=args.n, chunk=min(args.chunk, args.n), batch_sizes=tuple(args.batch_sizes))
    result = run_bench(backends, images, config, model=model)
    print(markdown_table(latency_rows(result.to_dict())))
    print()
    for name, r in result.backends.items():
        print(f"{name}: {settings_text(r.settings)}")
    print(f"machine: {describe_environment(result.environment)}")
    print(f"{config.n_single:,} single-image predictions per backend, interleaved in chunks of {config.chunk}; "
          "speed-up = median over chunks of the per-chunk median ratio, 95% bootstrap CI")
    limits = None
    if source.checkpoint is not None or source.declared is not None:
        limits = limits_of_source(result, source, images)
        print()
        print(limits_markdown(limits))
    else:
        print("\nlimits: an ONNX-only model has no PyTorch code to count its multiply-accumulates; declare a factory "
              "for them")
    data = {**result.to_dict(), "limits": limits.to_dict() if limits else None}
    if args.json:
        write_json(args.json, data)
        print(f"wrote {args.json}")
    record_in_history(args, data)
    return 0


def _search(args: argparse.Namespace, source: Any, backends: tuple[str, ...], images: Any, model: str) -> None:
    config = SearchConfig(batch_sizes=tuple(sorted({1, *args.batch_sizes})))
    result = run_search(source, backends, images, config, model=model, cores=args.threads,
                        progress=progress(args))
    print(markdown_table(search_rows(result)))
    print(f"{config.rounds} interleaved rounds of ~{config.turn_ms:g} ms per setting; median µs per image, 95% "
          f"bootstrap CI; kept the fastest per batch size in {save_search(result, source)}\n")
