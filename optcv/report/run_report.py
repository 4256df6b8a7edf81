"""The report of `optcv run`: every number comes from `results` (also written as results.json), and every
sentence of conclusion is computed from those numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optcv._io import write_json, write_text
from optcv.report.compare import compare_conclusions, compare_rows
from optcv.report.figures import plot_latency_bars
from optcv.report.latency import latency_rows
from optcv.report.tables import markdown_table
from optcv.stats import wilson
from optcv.training.compare import LOSS_PLOT

COURSE_SPEEDUP = 1185.95 / 63.68  # the course's PyTorch µs ÷ ONNX µs per prediction (≈ 18.6×)


def write_report(results: dict[str, Any], run_dir: Path) -> list[Path]:

    run_dir = Path(run_dir)
    results_path = write_json(run_dir / "results.json", results)
    chart = _latency_chart(results, run_dir / "latency.png")
    report = write_text(run_dir / "report.md", render_report(results, chart.name if chart else None))
    return [results_path, report, *([chart] if chart else [])]


def _latency_chart(results: dict[str, Any], path: Path) -> Path | None:
    labels, medians, p95s = [], [], []
    for model, bench in results["latency"]["models"].items():
        for backend, values in bench["backends"].items():
            labels.append(f"{model} · {backend}")
            medians.append(values["latency_us"]["median_us"])
            p95s.append(values["latency_us"]["p95_us"])
    if not labels:
        return None
    return plot_latency_bars(labels, medians, p95s, path, title="Per-image latency, batch 1 (median, p95)")


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def render_report(results: dict[str, Any], latency_chart: str | None) -> str:
    env = results["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "not installed")
    total = sum(results["stage_seconds"].values())
    lines = [
        f"# optcv run — preset `{results['preset']}`",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {env['system']}, load average {env.get('load_average_1m')} "
        f"when the report was written; Python {env['python']}; {versions}. "
        f"Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items())
        + f"; {total:.0f} s in all (not counting work resumed from earlier runs).",
        "",
    ]
    lines += _compare_section(results["compare"], results["config"]["compare"])
    lines += _tune_section(results["tune"])
    lines += _parity_section(results["parity"], results["export"])
    lines += _latency_section(results["latency"], latency_chart)
    return "\n".join(lines) + "\n"


def _compare_section(compare: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    seeds = settings["seeds"]
    lines = ["## 1. Optimizer comparison (TutorialNet)", "",
             f"{settings['epochs']} epochs, batch {settings['batch_size']}, "
             f"{'all' if settings['train_size'] is None else settings['train_size']} training images, "
             f"{seeds} seed{'s' if seeds > 1 else ''} (for each seed the same initial weights and batches for every "
             "optimizer); the last epoch's numbers, mean ± sample std over the seeds.", "",
             f"![loss comparison](compare/{LOSS_PLOT})", "",
             markdown_table(compare_rows(compare["summary"])), ""]
    lines += compare_conclusions(compare["differences"]) or [
        f"{compare['summary'][0]['optimizer']} was the only optimizer trained."]
    return [*lines, ""]


def _tune_section(tune: dict[str, Any]) -> list[str]:
    lines = ["## 2. Hyper-parameter search (Optuna, TunableNet)", "", "```", tune["statistics_text"], "```", ""]
    for plot in tune.get("plots", []):
        name = Path(plot).stem.replace("_", " ")
        lines += [f"![{name}]({plot})", ""]
    finished = tune["finished"]
    if finished:
        lines.append(f"{tune['pruned']} of {finished} finished trials were pruned "
                     f"({100 * tune['pruned'] / finished:.0f} %).")
    if "best_value" in tune:
        course = tune["course_best_value"]
        needed = tune["trials_to_exceed_course"]
        lines.append(f"Objective: {tune['objective']} (the value Optuna ranks trials by and the report quotes). "
                     + (f"The first trial above the course's best of {_pct(course)} was trial "
                        f"{needed - 1}: {needed} trials were needed." if needed is not None else
                        f"No trial exceeded the course's best of {_pct(course)}."))
    best = tune.get("best_model")
    if best:
        course = tune["course_best_value"]
        verdict = "above" if best["test_accuracy"] > course else "not above"
        over = best["test_accuracy_over_seeds"]
        seeds = (f" (the first of {over['n']} seeds, the model exported; over all {over['n']}: "
                 f"{100 * over['mean']:.2f} ± {100 * over['std']:.2f} %, lowest {100 * over['low']:.2f} %)"
                 if over["n"] > 1 else " (one seed: its spread over seeds is not measured)")
        lines.append(f"The best trial ({tune['best_trial']}) reached {_pct(tune['best_value'])} validation accuracy; "
                     f"retrained on the full training split for {best['epochs']} epochs it scores "
                     f"**{_pct(best['test_accuracy'])}** on the test split{seeds}, {verdict} the course's best of "
                     f"{_pct(course)} on the same search space.")
    return [*lines, ""]


def _parity_section(parity: dict[str, Any], export: dict[str, Any]) -> list[str]:
    lines = ["## 3. Parity: per-class accuracy on the test split", ""]
    for model, evaluation in parity["models"].items():
        info = export["models"][model]
        backends = list(evaluation["backends"])
        counts = evaluation["class_counts"]
        rows = []
        for name in evaluation["classes"]:
            rows.append({"class": name, "images": counts[name],
                         **{b: _with_interval(evaluation["backends"][b]["per_class"][name], counts[name])
                            for b in backends}})
        rows.append({"class": "overall", "images": evaluation["n_images"],
                     **{b: _with_interval(evaluation["backends"][b]["accuracy"], evaluation["n_images"])
                        for b in backends}})
        lines += [f"### {model}: {info['description']}", "",
                  f"Exported to `{info['onnx']}` (opset {info['opset']}; max |ONNX Runtime − PyTorch| logit "
                  f"difference at export {info['max_abs_diff']:.3g}). Accuracy with its 95 % Wilson interval "
                  "over the class's test images (how far another test set of that size could move it).", "",
                  markdown_table(rows), ""]
        for backend, agreement in evaluation["agreement"].items():
            n, total = agreement["n_disagree"], evaluation["n_images"]
            if n == 0:
                lines.append(f"{backend} predicted the same class as {agreement['reference']} for all {total:,} "
                             f"test images (max |logit difference| {agreement['max_abs_logit_diff']:.3g}).")
            else:
                lines.append(f"{backend} predicted another class than {agreement['reference']} for {n} of "
                             f"{total:,} test images (max |logit difference| {agreement['max_abs_logit_diff']:.3g}).")
        lines.append("")
    return lines


def _with_interval(accuracy: float, n: int) -> str:

    low, high = wilson(round(accuracy * n), n)
    return f"{100 * accuracy:.2f} % ({100 * low:.1f}–{100 * high:.1f})"


def _latency_section(latency: dict[str, Any], chart: str | None) -> list[str]:
    lines = ["## 4. Per-image latency and batched throughput", ""]
    for model, bench in latency["models"].items():
        reference = next(iter(bench["backends"]))
        ratios = {r["backend"]: r for r in bench["ratios"].values()}
        rows = latency_rows(bench)
        lines += [f"### {model}", "", markdown_table(rows), ""]
        for backend, ratio in ratios.items():
            ref = bench["backends"][reference]["latency_us"]["median_us"]
            this = bench["backends"][backend]["latency_us"]["median_us"]
            faster = "faster" if ratio["ratio"] >= 1 else "slower"
            lines.append(f"{backend} answered one image in a median {this:.1f} µs against {reference}'s {ref:.1f} µs: "
                         f"{max(ratio['ratio'], 1 / ratio['ratio']):.2f}× {faster} (95 % CI of the ratio "
                         f"{ratio['ci_low']:.2f}–{ratio['ci_high']:.2f}, {bench['config']['n_single']:,} predictions "
                         f"per backend, interleaved). The course reported {COURSE_SPEEDUP:.1f}× against an untuned "
                         "PyTorch.")
        settings = "; ".join(f"{b}: " + ", ".join(f"{k} {v}" for k, v in values["settings"].items() if k != "backend")
                             for b, values in bench["backends"].items())
        lines += ["", f"Settings chosen by calibration (batch 1): {settings}.", ""]
    if chart:
        lines += [f"![latency]({chart})", ""]
    return lines
