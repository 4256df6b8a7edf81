"""The command line: parse arguments, call one library function, print its result."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optcv.ab import GateConfig
from optcv.bench import BenchConfig
from optcv.errors import OptcvError, first_line
from optcv.howfast import HowFastConfig

EXIT_REGRESSION = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, where help is) and exit 2, as every other error."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="CIFAR-10 folder (torchvision layout or train/ + test/ image folders); "
                                           "default $OPTCV_DATA_DIR, else ~/.cache/optcv/data")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision if absent")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from optcv.runtime import BACKENDS, DEFAULT_BACKENDS

    parser.add_argument("models", nargs="+", help="a checkpoint (.pt) and/or its ONNX export (.onnx)")
    parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=list(BACKENDS),
                        metavar="BACKEND", help=f"any of {', '.join(BACKENDS)} (default: pytorch onnxruntime); "
                                            "the first is the reference for agreement and speed-ups")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _optimizer_lr(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"takes OPTIMIZER=VALUE pairs (e.g. --lr SGD=0.01), got {text!r}")
    return name, _positive_float(value)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from optcv.compare import CompareConfig, compare_best_two, compare_optimizers, summarize, training_losses
    from optcv.data import load_cifar10
    from optcv.env import describe_environment
    from optcv.report import compare_conclusions, compare_rows, markdown_table, plot_loss_comparison

    lrs = dict(args.lr or [])
    config = CompareConfig(optimizers=tuple(args.optimizers), epochs=args.epochs, batch_size=args.batch_size,
                           lrs=lrs, seed=args.seed, seeds=args.seeds, train_size=args.train_size,
                           test_size=args.test_size)
    data = load_cifar10(args.data_dir, download=args.download, progress=_progress(args))
    result = compare_optimizers(data, config, args.out, progress=_progress(args))
    plot_loss_comparison(training_losses(result), result.out_dir / "loss_comparison.png")
    print(markdown_table(compare_rows([asdict(s) for s in summarize(result)])))
    print()
    for line in compare_conclusions([asdict(d) for d in compare_best_two(result)]):
        print(line)
    print(f"\nloss plot: {result.out_dir / 'loss_comparison.png'}")
    print(f"checkpoints: {result.out_dir}/<optimizer>/seed-<seed>/model.pt, e.g. "
          f"{result.checkpoint_path(config.optimizers[0])}")
    print(f"machine: {describe_environment()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from optcv.export import export_onnx

    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    result = export_onnx(args.checkpoint, out, opset=args.opset, atol=args.atol)
    print(f"wrote {result.path} (opset {result.opset}, dynamic batch, uint8 NCHW input 'images' → 'logits')")
    print(f"max |ONNX Runtime - PyTorch| logit difference: {result.max_abs_diff:.3g} (tolerance {result.tolerance:g})")
    if args.int8:
        from optcv.quantize import QuantizeSettings, quantize_from_data

        settings = QuantizeSettings(calibration_images=args.calibration_images, keep_fp32=tuple(args.keep_fp32))
        path = quantize_from_data(out, args.data_dir, settings, progress=_progress(args))
        print(f"wrote {path} (int8 QDQ, per-channel, calibrated on {settings.calibration_images:,} training images, "
              f"reduce_range {settings.resolved_reduce_range()}); check it with `optcv evaluate {args.checkpoint} "
              "--backends pytorch onnxruntime-int8`")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from optcv.data import load_cifar10, stratified_subset
    from optcv.evaluate import course_table, evaluate_backends, parity, side_by_side_rows
    from optcv.report import markdown_table, parity_line
    from optcv.runtime import make_predictor, resolve_sources

    source = resolve_sources(args.models)
    predictors = [make_predictor(b, source, args.threads) for b in args.backends]
    data = load_cifar10(args.data_dir, download=args.download, progress=_progress(args))
    split = stratified_subset(data.test, args.test_size, seed=0)
    evaluation = evaluate_backends(predictors, split)
    for result in evaluation.backends:
        print(f"--- {result.backend} ({_settings(result.settings)}) ---")
        print(course_table(evaluation, result.backend))
        print()
    print(markdown_table(side_by_side_rows(evaluation), digits=2))
    for name, found in evaluation.agreements.items():
        print(f"\n{name} vs {predictors[0].name}: {found.n_disagree} of {found.n_images:,} predicted classes differ; "
              f"max |logit difference| {found.max_abs_diff:.3g}")
        for detail in evaluation.near_ties[name][:10]:
            print(f"  image {detail['image']}: {detail['reference_class']} vs {detail['other_class']}, "
                  f"top-2 margin {detail['reference_top2_margin']:.2g}")
    verdicts = [parity(evaluation, p.name) for p in predictors[1:]]
    print()
    for verdict in verdicts:
        print(parity_line(verdict))
    if args.json:
        from dataclasses import asdict

        from optcv._io import write_json

        write_json(args.json, {**evaluation.to_dict(),
                               "parity": [{**asdict(v), "passed": v.passed} for v in verdicts]})
        print(f"\nwrote {args.json}")
    failed = [v for v in verdicts if not v.passed]
    if failed:
        print(f"optcv evaluate: {len(failed)} backend(s) outside their parity tolerance: "
              f"{', '.join(v.backend for v in failed)}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from optcv.bench import run_bench
    from optcv.data import load_cifar10
    from optcv.env import describe_environment
    from optcv.limits import limits_of_source
    from optcv.report import latency_rows, limits_markdown, markdown_table
    from optcv.runtime import make_predictor, resolve_sources
    from optcv.search import kept_settings, settings_path, tuned_candidates

    source = resolve_sources(args.models)
    data = load_cifar10(args.data_dir, download=args.download, progress=_progress(args))
    model = Path(source.checkpoint or source.onnx or "model").stem
    if args.search:
        _search(args, source, data.test.images.numpy(), model)
    if args.no_calibrate:
        backends = {b: [make_predictor(b, source, args.threads)] for b in args.backends}
    else:
        backends = {b: tuned_candidates(b, source, args.threads) for b in args.backends}
        if args.threads is None and kept_settings(source):
            print(f"settings: the fastest per batch size from {settings_path(source)} (optcv bench --search)")
    config = BenchConfig(n_single=args.n, chunk=min(args.chunk, args.n), batch_sizes=tuple(args.batch_sizes))
    result = run_bench(backends, data.test.images.numpy(), config, model=model)
    print(markdown_table(latency_rows(result)))
    print()
    for name, r in result.backends.items():
        print(f"{name}: {_settings(r.settings)}")
    print(f"machine: {describe_environment(result.environment)}")
    print(f"{config.n_single:,} single-image predictions per backend, interleaved in chunks of {config.chunk}; "
          "speed-up = median over chunks of the per-chunk median ratio, 95% bootstrap CI")
    limits = limits_of_source(result, source, data.test.images.numpy())
    print()
    print(limits_markdown(limits))
    if args.json:
        from optcv._io import write_json

        write_json(args.json, {**result.to_dict(), "limits": limits.to_dict()})
        print(f"wrote {args.json}")
    return 0


def cmd_how_fast(args: argparse.Namespace) -> int:
    from optcv._io import write_json, write_text
    from optcv.howfast import HowFastConfig, run_how_fast
    from optcv.report import how_fast_markdown, plot_how_fast

    config = HowFastConfig(models=tuple(args.models), backends=tuple(args.backends), batch_size=args.batch_size,
                           seconds_per_backend=args.seconds)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    result = run_how_fast(config, args.data_dir, log=log).to_dict()
    out = Path(args.out)
    markdown = how_fast_markdown(result)
    print(markdown)
    written = [write_text(out / "how-fast.md", markdown + "\n"), write_json(out / "how-fast.json", result),
               plot_how_fast(result, out / "how-fast.png")]
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _search(args: argparse.Namespace, source: Any, images: Any, model: str) -> None:
    from optcv.report import markdown_table, search_rows
    from optcv.search import SearchConfig, run_search, save_search

    config = SearchConfig(batch_sizes=tuple(sorted({1, *args.batch_sizes})))
    result = run_search(source, args.backends, images, config, model=model, cores=args.threads,
                        progress=_progress(args))
    print(markdown_table(search_rows(result)))
    print(f"{config.rounds} interleaved rounds of ~{config.turn_ms:g} ms per setting; median µs per image, 95% "
          f"bootstrap CI; kept the fastest per batch size in {save_search(result, source)}\n")


def cmd_gate(args: argparse.Namespace) -> int:
    if args.results:
        return _gate_files(args)
    if args.self_test:
        return _gate_self_test(args)
    return _gate_ab(args)


def _gate_files(args: argparse.Namespace) -> int:
    from optcv.bench import DEFAULT_MARGIN, load_json, ratio_gate, ratios_of

    if not args.baseline:
        raise OptcvError("gating bench result files needs --baseline FILE (e.g. benchmarks/baselines/ratios.json)")
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    measured: dict[str, dict[str, object]] = {}
    for path in args.results:
        measured.update(ratios_of(load_json(path, "results file")))
    findings = ratio_gate(measured, load_json(args.baseline, "baseline"), margin)
    for finding in findings:
        print(finding.message())
    failed = [f for f in findings if not f.passed]
    if failed:
        print(f"{len(failed)} of {len(findings)} speed-ups fell more than {margin:.0%} below the baseline",
              file=sys.stderr)
        return EXIT_REGRESSION
    print(f"all {len(findings)} speed-ups within {margin:.0%} of the baseline")
    return 0


def _gate_config(args: argparse.Namespace) -> GateConfig:
    return GateConfig(models=tuple(args.models), workers_per_side=args.workers, case_seconds=args.case_seconds,
                      max_case_seconds=max(args.case_seconds, args.max_case_seconds), cases=tuple(args.cases or ()),
                      seed=args.seed, retest_failures=args.retest)


def _publish(args: argparse.Namespace, markdown: str, data: dict[str, object]) -> None:
    from optcv._io import write_json, write_text

    if args.json:
        write_json(args.json, data)
    if args.summary:
        write_text(args.summary, markdown)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")


def _gate_ab(args: argparse.Namespace) -> int:
    from optcv.ab import run_gate, run_ratio_fallback
    from optcv.gate import Thresholds
    from optcv.report import gate_failure_lines, gate_markdown, ratio_fallback_markdown

    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    thresholds = Thresholds.load(args.thresholds, args.threshold)
    result = run_gate(_gate_config(args), thresholds, against=args.against, base_python=args.base_python,
                      data_dir=args.data_dir, log=log, progress=_progress(args))
    if isinstance(result, str):
        print(f"optcv gate: no second side: {result}; falling back to the ratio gate", file=sys.stderr)
        baseline = args.baseline or str(Path(__file__).resolve().parent.parent / "benchmarks/baselines/ratios.json")
        fallback = run_ratio_fallback(result, baseline, models=args.models, data_dir=args.data_dir, log=log)
        markdown = ratio_fallback_markdown(fallback)
        print(markdown)
        _publish(args, markdown, {"schema": "optcv-ratio-fallback/1", "reason": fallback.reason,
                                  "machine_differences": fallback.machine_differences,
                                  "findings": [vars(f) for f in fallback.findings]})
        return EXIT_REGRESSION if fallback.regressions else 0
    markdown = gate_markdown(result)
    print(markdown)
    _publish(args, markdown, result.to_dict())
    for line in gate_failure_lines(result):
        print(line, file=sys.stderr)
    return EXIT_REGRESSION if result.regressions else 0


def _gate_self_test(args: argparse.Namespace) -> int:
    from optcv.report import self_test_markdown
    from optcv.selftest import run_self_test

    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    result = run_self_test(_gate_config(args), targets=args.targets, levels_pct=args.levels, repeats=args.repeat,
                           unchanged_repeats=args.unchanged, thresholds=tuple(args.self_test_thresholds),
                           data_dir=args.data_dir, log=log, progress=_progress(args))
    markdown = self_test_markdown(result)
    print(markdown)
    _publish(args, markdown, result.to_dict())
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from optcv.data import load_cifar10
    from optcv.retrain import finish
    from optcv.study_report import statistics_text, study_summary
    from optcv.study_storage import default_storage, open_study
    from optcv.tune import SearchSpace, TuneConfig
    from optcv.tune import tune as run_tune

    if args.show:
        url = args.storage or default_storage(Path(args.out), 1)
        if not args.storage and not any((Path(args.out) / f).is_file() for f in ("study.db", "study.journal")):
            raise OptcvError(f"no study in {args.out}; run `optcv tune --out {args.out}` first or pass --storage")
        print(statistics_text(study_summary(open_study(url, args.study_name))))
        return 0
    space = SearchSpace(n_layers=tuple(args.n_layers), n_units=tuple(args.n_units), dropout=tuple(args.dropout),
                        optimizers=tuple(args.optimizers), lr=tuple(args.lr_range))
    config = TuneConfig(trials=args.trials, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
                        batch_size=args.batch_size, pruner=args.pruner, seed=args.seed,
                        final_epochs=args.final_epochs or args.epochs, final_seeds=args.final_seeds, space=space)
    data = load_cifar10(args.data_dir, download=args.download, progress=_progress(args))
    started = time.perf_counter()
    study = run_tune(config, args.out, data_dir=args.data_dir, data=data, storage=args.storage,
                     study_name=args.study_name, workers=args.workers, timeout=args.timeout,
                     progress=_progress(args))
    search_seconds = time.perf_counter() - started
    summary = finish(study, config, data, args.out, retrain=not args.no_retrain, progress=_progress(args))
    print(statistics_text(summary))
    print(f"\nsearch wall time this run: {search_seconds:.0f} s with {args.workers} worker(s)")
    if "best_model" in summary:
        best = summary["best_model"]
        over = best["test_accuracy_over_seeds"]
        spread_text = (f" (over {over['n']} seeds: {100 * over['mean']:.2f} ± {100 * over['std']:.2f} %)"
                       if over["n"] > 1 else "")
        print(f"best configuration retrained on all {len(data.train):,} training images for {best['epochs']} "
              f"epochs: test accuracy {100 * best['test_accuracy']:.2f}%{spread_text} → {best['checkpoint']}")
    print(f"study: {Path(args.out) / 'study.json'}; plots: {Path(args.out)}/*.png")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from optcv.pipeline import resolve_config, run_pipeline

    config = resolve_config(args.preset, args.set, workers=args.workers)
    log = (lambda _message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    report = run_pipeline(config, args.out, data_dir=args.data_dir, download=args.download,
                          progress=_progress(args), log=log)
    print(f"report: {report} (results: {report.parent / 'results.json'}); {time.perf_counter() - started:.0f} s")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from optcv.cache import cache_info, clear_cache
    from optcv.report import cache_markdown, cache_removed_line

    if args.action == "info":
        print(cache_markdown(cache_info()))
        return 0
    removed = clear_cache(stale_only=args.stale, areas=tuple(args.areas))
    print(cache_removed_line(removed, stale_only=args.stale))
    return 0


def _settings(settings: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "backend")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="optcv", description="Measure how CIFAR-10 classifiers train, tune and run on the CPU.")
    parser.add_argument("--version", action="version", version=f"optcv {_version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_compare_parser, _add_export_parser, _add_evaluate_parser, _add_run_parser, _add_tune_parser,
                _add_bench_parser, _add_how_fast_parser, _add_gate_parser, _add_cache_parser):
        add(commands)
    return parser


# Every default below is read from the dataclass or constant the library uses, never copied.


def _add_compare_parser(commands: argparse._SubParsersAction) -> None:
    from optcv.compare import CompareConfig
    from optcv.train import OPTIMIZERS

    default = CompareConfig()
    compare = commands.add_parser("compare", help="train TutorialNet with several optimizers and compare losses",
                                  description="The course's task 2: same initial weights and batches for every "
                                              "optimizer; writes the loss plot, histories and checkpoints.")
    compare.add_argument("--optimizers", nargs="+", default=list(default.optimizers), metavar="NAME",
                         help=f"any of {', '.join(OPTIMIZERS)} (default: {' '.join(default.optimizers)})")
    compare.add_argument("--epochs", type=_positive_int, default=default.epochs)
    compare.add_argument("--batch-size", type=_positive_int, default=default.batch_size,
                         help="default %(default)s, the course's")
    compare.add_argument("--lr", nargs="+", type=_optimizer_lr, metavar="OPT=LR",
                         help="learning rate per optimizer, e.g. SGD=0.01 (defaults: "
                              + ", ".join(f"{k} {v['lr']}" for k, (_, v) in OPTIMIZERS.items()) + ")")
    compare.add_argument("--seed", type=int, default=default.seed, help="the first seed (default %(default)s)")
    compare.add_argument("--seeds", type=_positive_int, default=default.seeds,
                         help="train every optimizer with this many seeds and report mean ± std and a test of the "
                              "difference (default %(default)s)")
    compare.add_argument("--train-size", type=_positive_int, default=default.train_size,
                         help="stratified training subset (default: all 50,000)")
    compare.add_argument("--test-size", type=_positive_int, default=default.test_size,
                         help="stratified test subset (default: all 10,000)")
    compare.add_argument("--out", default="runs/compare", help="run folder (default %(default)s)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_options(compare)
    compare.set_defaults(func=cmd_compare)


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    from optcv.export import DEFAULT_ATOL, DEFAULT_OPSET
    from optcv.quantize import KEEP_FP32_KINDS, QuantizeSettings

    export = commands.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    export.add_argument("checkpoint", help="an optcv checkpoint (.pt)")
    export.add_argument("-o", "--output", help="the .onnx file (default: the checkpoint's name with .onnx)")
    export.add_argument("--opset", type=_positive_int, default=DEFAULT_OPSET)
    export.add_argument("--atol", type=_positive_float, default=DEFAULT_ATOL,
                        help="largest allowed |ONNX Runtime - PyTorch| logit difference (default %(default)g)")
    export.add_argument("--int8", action="store_true", help="also write the int8 model (NAME.int8.onnx) for the "
                        "onnxruntime-int8 backend, statically quantised and calibrated on training images")
    export.add_argument("--calibration-images", type=_positive_int, default=QuantizeSettings.calibration_images,
                        help="training images the int8 calibration sees (default %(default)s)")
    export.add_argument("--keep-fp32", nargs="+", default=list(QuantizeSettings.keep_fp32), choices=KEEP_FP32_KINDS,
                        metavar="KIND", help=f"int8: leave these nodes in fp32 ({', '.join(KEEP_FP32_KINDS)}), "
                                             "where quantising them costs accuracy")
    _add_data_options(export)
    export.set_defaults(func=cmd_export)


def _add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="per-class accuracy of each backend and their agreement")
    _add_model_options(evaluate)
    evaluate.add_argument("--threads", type=_positive_int, help="threads per backend (default: all cores)")
    evaluate.add_argument("--test-size", type=_positive_int, help="stratified test subset (default: all 10,000)")
    evaluate.add_argument("--json", help="also write the results to this JSON file")
    evaluate.add_argument("--quiet", action="store_true")
    _add_data_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    from optcv.pipeline import PRESETS

    run = commands.add_parser("run", help="the whole study: compare, tune, export, parity, latency, report",
                              description="Runs every stage in order into one run folder and writes report.md and "
                                          "results.json. Re-running the same command resumes where it stopped.")
    run.add_argument("--preset", default="quick", help="quick (minutes), default (full data) or course "
                                                       f"(the course's settings); one of {', '.join(PRESETS)}; "
                                                       "default %(default)s")
    run.add_argument("--set", nargs="+", metavar="SECTION.FIELD=VALUE",
                     help="override any preset value, e.g. tune.trials=20 compare.epochs=3 bench.n_single=5000")
    run.add_argument("--workers", type=_positive_int, help="Optuna worker processes (default: the preset's)")
    run.add_argument("--out", default="runs/run", help="run folder (default %(default)s)")
    run.add_argument("--quiet", action="store_true", help="no progress display, only the final line")
    _add_data_options(run)
    run.set_defaults(func=cmd_run)


def _add_tune_parser(commands: argparse._SubParsersAction) -> None:
    from optcv.tune import PRUNERS, TuneConfig

    default = TuneConfig()
    space = default.space
    tune = commands.add_parser("tune", help="Optuna search over TunableNet (resumable, parallel)",
                               description="The course's task 3. Re-running the same command resumes the study "
                                           "and runs only the trials still missing to reach --trials.")
    tune.add_argument("--trials", type=_positive_int, default=default.trials, help="finished trials to reach in total")
    tune.add_argument("--epochs", type=_positive_int, default=default.epochs,
                      help="epochs per trial (default %(default)s)")
    tune.add_argument("--train-size", type=_positive_int, default=default.train_size,
                      help="training subset per trial (default %(default)s, Optuna's PyTorch example)")
    tune.add_argument("--val-size", type=_positive_int, default=default.val_size,
                      help="validation images held out of the training split (default %(default)s)")
    tune.add_argument("--batch-size", type=_positive_int, default=default.batch_size)
    tune.add_argument("--timeout", type=_positive_float, help="stop starting new trials after this many seconds")
    tune.add_argument("--pruner", default=default.pruner, help=f"{', '.join(PRUNERS)} (default %(default)s)")
    tune.add_argument("--seed", type=int, default=default.seed)
    tune.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine")
    tune.add_argument("--storage", help="Optuna storage URL (default: a file in --out); e.g. "
                                        "postgresql+psycopg://user@host/db to spread over machines")
    tune.add_argument("--study-name", default="optcv")
    tune.add_argument("--out", default="runs/tune", help="run folder (default %(default)s)")
    tune.add_argument("--final-epochs", type=_positive_int, help="epochs to retrain the best (default --epochs)")
    tune.add_argument("--final-seeds", type=_positive_int, default=default.final_seeds,
                      help="retrain the best configuration with this many seeds (its test accuracy's spread; "
                           "default %(default)s)")
    tune.add_argument("--no-retrain", action="store_true", help="skip retraining the best configuration")
    tune.add_argument("--show", action="store_true", help="print an existing study's statistics and stop")
    tune.add_argument("--n-layers", nargs=2, type=_positive_int, default=list(space.n_layers), metavar=("LOW", "HIGH"))
    tune.add_argument("--n-units", nargs=2, type=_positive_int, default=list(space.n_units), metavar=("LOW", "HIGH"))
    tune.add_argument("--dropout", nargs=2, type=float, default=list(space.dropout), metavar=("LOW", "HIGH"))
    tune.add_argument("--lr-range", nargs=2, type=_positive_float, default=list(space.lr), metavar=("LOW", "HIGH"))
    tune.add_argument("--optimizers", nargs="+", default=list(space.optimizers), metavar="NAME")
    tune.add_argument("--quiet", action="store_true")
    _add_data_options(tune)
    tune.set_defaults(func=cmd_tune)


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
    default = BenchConfig()
    bench = commands.add_parser("bench", help="per-image latency (the course's way) and batched throughput",
                                description="Times single-image predictions over the test images for every "
                                            "backend, interleaved, then batched throughput; each backend is first "
                                            "calibrated to its fastest thread count and options.")
    _add_model_options(bench)
    bench.add_argument("-n", type=_positive_int, default=default.n_single,
                       help=f"single-image predictions per backend (default {default.n_single:,}, the course's)")
    bench.add_argument("--chunk", type=_positive_int, default=default.chunk,
                       help="calls per backend between switches")
    bench.add_argument("--batch-sizes", nargs="*", type=_positive_int, default=list(default.batch_sizes))
    bench.add_argument("--threads", type=_positive_int, help="fix the thread count (default: try 1 and all cores)")
    bench.add_argument("--no-calibrate", action="store_true", help="use the default settings, try no others")
    bench.add_argument("--search", action="store_true",
                       help="time every backend's grid of settings (threads, graph level, spinning, oneDNN, "
                            "channels-last, hints) interleaved, print it, and keep the fastest per batch size "
                            "beside the model (MODEL.settings.json), which later runs of bench then use")
    bench.add_argument("--json", help="write the results to this JSON file (input of `optcv gate`)")
    bench.add_argument("--quiet", action="store_true")
    _add_data_options(bench)
    bench.set_defaults(func=cmd_bench)


def _add_how_fast_parser(commands: argparse._SubParsersAction) -> None:
    default = HowFastConfig()
    how = commands.add_parser("how-fast", help="every backend on every reference model, against this machine's limits",
                              description="Builds (or loads) the benchmark suite's reference models and times every "
                                          "backend on each at batch 1 and batched, interleaved, against the fp32 GEMM "
                                          "peak and each runtime's per-call overhead measured in the same run; writes "
                                          "how-fast.md, .json and .png (the README's 'How fast, and why').")
    how.add_argument("--models", nargs="+", default=list(default.models), choices=list(default.models))
    how.add_argument("--backends", nargs="+", default=list(default.backends), metavar="BACKEND")
    how.add_argument("--batch-size", type=_positive_int, default=default.batch_size)
    how.add_argument("--seconds", type=_positive_float, default=default.seconds_per_backend,
                     help="timed single-image work per backend and model (calls scale with the model's cost)")
    how.add_argument("--out", default="how-fast", help="folder for how-fast.md, how-fast.json, how-fast.png")
    how.add_argument("--quiet", action="store_true")
    _add_data_options(how)
    how.set_defaults(func=cmd_how_fast)


def _add_gate_parser(commands: argparse._SubParsersAction) -> None:
    from optcv import selftest
    from optcv.ab import MODELS
    from optcv.bench import DEFAULT_MARGIN
    from optcv.gate import DEFAULT_THRESHOLD_PCT
    from optcv.inject import TARGETS

    default = GateConfig()
    gate = commands.add_parser(
        "gate", help="fail when the code got slower: this tree timed against a base revision in one run",
        description="A/B gate: the base revision (git worktree) and this source tree, each with its own models and "
                    "worker processes, timed case by case in a seeded random interleaved order. Exit 1 on a "
                    "regression, 2 on a set-up error. Given bench JSON files instead, gates their speed-up ratios "
                    "on --baseline (the older ratio gate).")
    gate.add_argument("results", nargs="*", help="optional: `optcv bench --json` files to gate on --baseline")
    gate.add_argument("--against", metavar="REV", help="base revision (default: the merge-base with main when on "
                                                       "another branch, else HEAD~1)")
    gate.add_argument("--base-python", metavar="PATH", help="the base side's interpreter (e.g. a venv with other "
                                                           "torch/onnxruntime versions); alone, base = this tree")
    gate.add_argument("--threshold", type=float, metavar="PCT",
                      help=f"a case fails above this slowdown (%%) when significant; default {DEFAULT_THRESHOLD_PCT:g}")
    gate.add_argument("--thresholds", metavar="FILE", help="per-case thresholds (benchmarks/gate_thresholds.json)")
    gate.add_argument("--models", nargs="+", default=list(default.models), choices=list(MODELS))
    gate.add_argument("--cases", nargs="+", metavar="GLOB", help="only these cases, e.g. '*/b1/*'")
    gate.add_argument("--workers", type=_positive_int, default=default.workers_per_side, help="workers per side")
    gate.add_argument("--case-seconds", type=_positive_float, default=default.case_seconds,
                      help="timed work per case, both sides together")
    gate.add_argument("--max-case-seconds", type=_positive_float, default=default.max_case_seconds,
                      help="a noisy case adds rounds up to this long, until its interval is narrow enough")
    gate.add_argument("--seed", type=int, default=default.seed)
    gate.add_argument("--no-retest", dest="retest", action="store_false", default=default.retest_failures,
                      help="fail on the first pass, without re-timing failing cases with fresh workers")
    gate.add_argument("--json", help="write every number to this JSON file")
    gate.add_argument("--summary", help="write the Markdown summary here (also appended to $GITHUB_STEP_SUMMARY)")
    gate.add_argument("--baseline", help="ratio baseline for bench files, or for the fallback without a base revision")
    gate.add_argument("--margin", type=float,
                      help=f"ratio gate only: allowed fall below the baseline (default {DEFAULT_MARGIN:g})")
    gate.add_argument("--self-test", action="store_true", help="inject real slowdowns and report the detection rates")
    gate.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS), help="self-test targets")
    gate.add_argument("--levels", nargs="+", type=_positive_float, default=list(selftest.LEVELS_PCT),
                      help="self-test %%")
    gate.add_argument("--repeat", type=_positive_int, default=selftest.REPEATS,
                      help="self-test runs per target and level")
    gate.add_argument("--unchanged", type=_positive_int, default=selftest.UNCHANGED_REPEATS,
                      help="self-test runs of unchanged code")
    gate.add_argument("--self-test-thresholds", nargs="+", type=float, default=list(selftest.THRESHOLDS_PCT),
                      metavar="PCT", help="thresholds the self-test judges at")
    gate.add_argument("--quiet", action="store_true")
    _add_data_options(gate)
    gate.set_defaults(func=cmd_gate)


def _add_cache_parser(commands: argparse._SubParsersAction) -> None:
    from optcv.cache import AREAS, UNUSED_DAYS

    cache = commands.add_parser(
        "cache", help="what optcv's cache folder holds; clear it, or only its stale entries",
        description="The cache ($OPTCV_CACHE_DIR, else ~/.cache/optcv) holds decoded image folders, the benchmark "
                    "suite's and the gate's models, and torch.compile's kernels. Stale: a decode whose source "
                    f"folder is gone or changed, a model no run used for {UNUSED_DAYS} days or whose build died.")
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--stale", action="store_true", help="clear: only the stale entries")
    cache.add_argument("--areas", nargs="+", default=list(AREAS), choices=list(AREAS), metavar="AREA",
                       help=f"clear: only these areas ({', '.join(AREAS)}; default all)")
    cache.set_defaults(func=cmd_cache)


def _version() -> str:
    from optcv import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OptcvError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"optcv {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a path that cannot be made, read or written: the user's to fix
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"optcv {args.command}: error: cannot use{where}: {exc.strerror or first_line(exc)}; choose another "
              "path (or check its permissions and free space); --debug shows the traceback", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\noptcv {args.command}: interrupted; finished work is saved, re-run the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def run_cli(argv: Sequence[str] | None = None) -> None:
    """The console script: `main`, then exit. Once the work is done, Ctrl-C is ignored while the interpreter
    shuts down: there is nothing left to interrupt, and Python would print a finaliser's traceback."""
    code = main(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run_cli()
