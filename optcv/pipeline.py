"""`optcv run`: the course's whole study in one resumable command.

Stages, in order, each the same library call a single-purpose command makes:
compare → tune → export → parity → latency → report. A finished stage is recorded in RUN_DIR/stages.json
with checksums of its outputs; a re-run skips it while its outputs are intact, and continues an
interrupted stage (training and the Optuna study resume on their own). A lock keeps two runs apart.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import types
import typing
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcv._io import folder_lock, read_json_object, sha256_file, write_json
from optcv.backends.base import all_closed
from optcv.backends.onnx_export import export_onnx
from optcv.data import CIFAR10, load_cifar10, stratified_subset
from optcv.env import environment_info
from optcv.errors import OptcvError
from optcv.measure.latency import BenchConfig, run_bench
from optcv.measure.parity import evaluate_backends
from optcv.measure.search import tuned_candidates
from optcv.report.figures import plot_loss_comparison
from optcv.report.run_report import write_report
from optcv.report.study import statistics_text, write_plots
from optcv.runtime import DEFAULT_BACKENDS, ModelSource, make_predictor
from optcv.training.compare import CompareConfig, compare_best_two, compare_optimizers, summarize, training_losses
from optcv.training.retrain import finish
from optcv.training.tune import TuneConfig, tune

STAGES = ("compare", "tune", "export", "parity", "latency", "report")
STATE_FILE = "stages.json"
LOCK_FILE = ".lock"
RESULTS_SCHEMA = "optcv-results/1"


@dataclass(frozen=True)
class RunConfig:
    preset: str
    compare: CompareConfig
    tune: TuneConfig
    bench: BenchConfig
    workers: int = 1
    parity_test_size: int | None = None  # None: the full test split
    backends: tuple[str, ...] = DEFAULT_BACKENDS

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["compare"] = self.compare.to_dict()
        return json.loads(json.dumps(values))


PRESETS: dict[str, RunConfig] = {
    # Under 3 minutes on a 2-core machine: subsets everywhere, a handful of trials.
    "quick": RunConfig(
        preset="quick",
        compare=CompareConfig(optimizers=("SGD", "Adagrad", "Adam"), epochs=2, batch_size=32, seeds=2,
                              train_size=5_000, test_size=1_000),
        tune=TuneConfig(trials=6, epochs=3, train_size=3_000, val_size=1_000, batch_size=128, final_epochs=2),
        bench=BenchConfig(n_single=2_000, chunk=200, batch_sizes=(64, 256), batched_images=1_024,
                          calibration_calls=200),
    ),
    # Full data, a study a laptop finishes in well under an hour.
    "default": RunConfig(
        preset="default",
        compare=CompareConfig(optimizers=("SGD", "Adagrad", "Adam"), epochs=2, batch_size=4, seeds=3),
        tune=TuneConfig(trials=30, final_seeds=2),
        bench=BenchConfig(),
    ),
    # The course's settings: full data, batch 4, 100 trials, 10,000 single-image predictions.
    "course": RunConfig(
        preset="course",
        compare=CompareConfig(optimizers=("SGD", "Adagrad", "Adam"), epochs=2, batch_size=4, seeds=3),
        tune=TuneConfig(trials=100, final_seeds=2),
        bench=BenchConfig(n_single=10_000),
    ),
}


def resolve_config(preset: str, overrides: list[str] | None = None, workers: int | None = None) -> RunConfig:
    """A preset with `section.field=value` overrides applied (e.g. tune.trials=20, compare.train_size=none)."""
    if preset not in PRESETS:
        raise OptcvError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    config = PRESETS[preset]
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise OptcvError(f"--set takes SECTION.FIELD=VALUE (e.g. tune.trials=20), got {item!r}")
        try:
            config = _override(config, key.strip().split("."), text.strip(), key)
        except OptcvError as exc:
            if key in str(exc):
                raise
            raise OptcvError(f"--set {item}: {exc}") from exc
    if workers is not None:
        config = dataclasses.replace(config, workers=workers)
    return config


def _override(obj: Any, path: list[str], text: str, key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields or name == "preset":
        valid = ", ".join(sorted(set(fields) - {"preset"}))
        raise OptcvError(f"unknown setting {key!r}: valid at this level are {valid}")
    current = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise OptcvError(f"setting {key!r}: {name} has no fields")
        return dataclasses.replace(obj, **{name: _override(current, path[1:], text, key)})
    if dataclasses.is_dataclass(current):
        example = dataclasses.fields(current)[0].name
        raise OptcvError(f"setting {key!r} is a section: name one of its fields, e.g. {key}.{example}")
    hint = typing.get_type_hints(type(obj))[name]
    return dataclasses.replace(obj, **{name: _parse(text, hint, key)})


def _parse(text: str, hint: Any, key: str) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            if type(None) in args:
                return None
        return _parse(text, next(a for a in args if a is not type(None)), key)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            item = args[0] if args else str
            return tuple(_parse(part, item, key) for part in text.split(",") if part.strip())
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        kind = {"int": "whole number", "float": "number", "bool": "true or false"}.get(
            getattr(hint, "__name__", str(hint)), str(hint))
        raise OptcvError(f"setting {key!r}: {text!r} is not a {kind}; give {key}=VALUE with a {kind}") from None
    raise OptcvError(f"setting {key!r} cannot be set from the command line")


# ---------------------------------------------------------------------------------------------------------


def run_lock(run_dir: Path) -> AbstractContextManager[None]:
    """Hold RUN_DIR/.lock for the whole run; a second run on the same folder fails at once."""
    return folder_lock(run_dir / LOCK_FILE, "optcv run")


@dataclass
class RunState:
    path: Path
    config: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path, config: RunConfig) -> RunState:
        path = run_dir / STATE_FILE
        wanted = config.to_dict()
        if not path.is_file():
            return cls(path, wanted)
        saved = read_json_object(path, "run state", "delete it to run every stage again, or use another --out")
        if saved.get("config") != wanted:
            raise OptcvError(f"{run_dir} holds a run with other settings; use another --out, or repeat the "
                             f"original preset and --set values to resume it")
        return cls(path, wanted, saved.get("stages", {}))

    def finished(self, stage: str, run_dir: Path) -> bool:
        record = self.stages.get(stage)
        if not record:
            return False
        return all((run_dir / rel).is_file() and sha256_file(run_dir / rel) == digest
                   for rel, digest in record["outputs"].items())

    def record(self, stage: str, run_dir: Path, outputs: list[Path], result: dict[str, Any], seconds: float) -> None:
        self.stages[stage] = {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 2),
            "outputs": {str(p.relative_to(run_dir)): sha256_file(p) for p in outputs}, "result": result,
        }
        write_json(self.path, {"config": self.config, "stages": self.stages})


@dataclass
class Context:
    run_dir: Path
    config: RunConfig
    data_dir: str | None
    download: bool
    progress: bool
    state: RunState
    _data: CIFAR10 | None = None

    @property
    def data(self) -> CIFAR10:
        if self._data is None:
            self._data = load_cifar10(self.data_dir, download=self.download, progress=self.progress)
        return self._data

    def result(self, stage: str) -> dict[str, Any]:
        return self.state.stages[stage]["result"]


StageResult = tuple[list[Path], dict[str, Any]]


def stage_compare(ctx: Context) -> StageResult:
    result = compare_optimizers(ctx.data, ctx.config.compare, ctx.run_dir / "compare", progress=ctx.progress)
    plot_loss_comparison(training_losses(result), result.loss_plot)
    histories = {name: [h.to_dict() for h in hs] for name, hs in result.histories.items()}
    outputs = [result.loss_plot, result.out_dir / "histories.json",
               *(result.checkpoint_path(o, s) for o in result.histories for s in ctx.config.compare.seed_values)]
    return outputs, {"summary": [dataclasses.asdict(s) for s in summarize(result)],
                     "differences": [dataclasses.asdict(d) for d in compare_best_two(result)],
                     "histories": histories,
                     "checkpoints": {o: str(result.checkpoint_path(o).relative_to(ctx.run_dir))
                                     for o in result.histories}}


def stage_tune(ctx: Context) -> StageResult:
    out = ctx.run_dir / "tune"
    started = time.perf_counter()
    study = tune(ctx.config.tune, out, data=ctx.data, data_dir=ctx.data_dir, workers=ctx.config.workers,
                 progress=ctx.progress)
    seconds = time.perf_counter() - started
    summary = finish(study, ctx.config.tune, ctx.data, out, progress=ctx.progress)
    write_plots(study, out)
    outputs = [out / "study.json", *sorted(out.glob("*.png"))]
    if "best_model" in summary:
        outputs.append(Path(summary["best_model"]["checkpoint"]))
        summary["best_model"]["checkpoint"] = str(Path(summary["best_model"]["checkpoint"]).relative_to(ctx.run_dir))
    summary["statistics_text"] = statistics_text(summary)
    summary["search_seconds_this_run"] = seconds
    summary["plots"] = [str(p.relative_to(ctx.run_dir)) for p in sorted(out.glob("*.png"))]
    return outputs, summary


def stage_export(ctx: Context) -> StageResult:
    models = ctx.run_dir / "models"
    models.mkdir(exist_ok=True)
    summary = ctx.result("compare")["summary"]
    best_optimizer = max(summary, key=lambda s: s["test_accuracy"]["mean"])["optimizer"]
    sources = {"tutorial": (ctx.run_dir / ctx.result("compare")["checkpoints"][best_optimizer],
                            f"TutorialNet trained with {best_optimizer} (best mean test accuracy of the "
                            "comparison; its first seed)")}
    tuned = ctx.result("tune").get("best_model")
    if tuned:
        trial = ctx.result("tune")["best_trial"]
        sources["tuned"] = (ctx.run_dir / tuned["checkpoint"], f"TunableNet, best trial {trial} of the search")
    outputs, result = [], {}
    check = ctx.data.test.images[:256].numpy()
    for name, (checkpoint, description) in sources.items():
        copy = models / f"{name}.pt"
        shutil.copyfile(checkpoint, copy)
        exported = export_onnx(copy, models / f"{name}.onnx", check_images=check)
        outputs += [copy, exported.path]
        result[name] = {"description": description, "checkpoint": str(copy.relative_to(ctx.run_dir)),
                        "onnx": str(exported.path.relative_to(ctx.run_dir)), "opset": exported.opset,
                        "max_abs_diff": exported.max_abs_diff}
    return outputs, {"models": result}


def _sources(ctx: Context) -> dict[str, Any]:
    return {name: ModelSource(ctx.run_dir / m["checkpoint"], ctx.run_dir / m["onnx"])
            for name, m in ctx.result("export")["models"].items()}


def stage_parity(ctx: Context) -> StageResult:
    split = stratified_subset(ctx.data.test, ctx.config.parity_test_size, seed=0)
    results = {}
    for name, source in _sources(ctx).items():
        with all_closed([make_predictor(backend, source) for backend in ctx.config.backends]) as predictors:
            results[name] = evaluate_backends(predictors, split).to_dict()
    path = write_json(ctx.run_dir / "parity.json", results)
    return [path], {"models": results}


def stage_latency(ctx: Context) -> StageResult:
    images = ctx.data.test.images.numpy()
    results, outputs = {}, []
    for name, source in _sources(ctx).items():
        backends = {b: tuned_candidates(b, source) for b in ctx.config.backends}
        result = run_bench(backends, images, ctx.config.bench, model=name)
        outputs.append(result.save(ctx.run_dir / f"bench-{name}.json"))
        results[name] = result.to_dict()
    return outputs, {"models": results}


def stage_report(ctx: Context) -> StageResult:
    results = {
        "schema": RESULTS_SCHEMA,
        "preset": ctx.config.preset,
        "config": ctx.state.config,
        "environment": environment_info(),
        "stage_seconds": {s: ctx.state.stages[s]["seconds"] for s in STAGES if s in ctx.state.stages},
        "compare": ctx.result("compare"),
        "tune": ctx.result("tune"),
        "export": ctx.result("export"),
        "parity": ctx.result("parity"),
        "latency": ctx.result("latency"),
    }
    return write_report(results, ctx.run_dir), {}


STAGE_FUNCTIONS: dict[str, Callable[[Context], StageResult]] = {
    "compare": stage_compare, "tune": stage_tune, "export": stage_export,
    "parity": stage_parity, "latency": stage_latency, "report": stage_report,
}


def run_pipeline(config: RunConfig, run_dir: str | Path, *, data_dir: str | None = None, download: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Run every stage not yet finished; return the report's path."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    with run_lock(run_dir):
        state = RunState.load(run_dir, config)
        ctx = Context(run_dir, config, data_dir, download, progress, state)
        started = time.perf_counter()
        bar = tqdm(STAGES, desc="optcv run", unit="stage", disable=not progress or None, position=0)
        for index, stage in enumerate(bar, 1):
            if state.finished(stage, run_dir) and stage != "report":
                log(f"[{index}/{len(STAGES)}] {stage}: done earlier, skipped")
                continue
            bar.set_description(f"optcv run: {stage}")
            log(f"[{index}/{len(STAGES)}] {stage} …")
            stage_started = time.perf_counter()
            outputs, result = STAGE_FUNCTIONS[stage](ctx)
            seconds = time.perf_counter() - stage_started
            state.record(stage, run_dir, outputs, result, seconds)
            log(f"[{index}/{len(STAGES)}] {stage}: {seconds:.1f} s (run so far {time.perf_counter() - started:.0f} s)")
        bar.close()
    return run_dir / "report.md"
