"""Tables and plots: how a run's numbers are shown to a person."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optcv._io import write_atomic


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   digits: int | None = None) -> str:
    """A GitHub-style table whose columns line up in a terminal too; `digits` fixes the decimals of every
    float (a column of percentages must not print 6.500 beside 50.4)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        fixed = digits is not None and isinstance(value, float)
        return f"{value:.{digits}f}" if fixed else format_value(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row.get(c)) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    """A figure drawn by the Agg canvas directly: pyplot's global backend and figure list stay untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols)


def _save_figure(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)


def plot_loss_comparison(losses: dict[str, list[list[float]]], path: str | Path) -> Path:
    """The course's loss_plot_comparison: mean training loss per epoch, one curve per optimizer; with several
    seeds the curve is their mean and the band their min–max."""
    fig, ax = _figure(7, 4.5)
    seeds = max(len(runs) for runs in losses.values())
    for name, runs in losses.items():
        epochs = range(1, len(runs[0]) + 1)
        per_epoch = list(zip(*runs, strict=True))
        line, = ax.plot(epochs, [sum(v) / len(v) for v in per_epoch], marker="o", label=name)
        if len(runs) > 1:
            ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                            color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_title("Optimizer comparison" + (f" (mean of {seeds} seeds; band: min–max)" if seeds > 1 else ""))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def _pm(spread: dict[str, Any], scale: float = 1.0, digits: int = 4) -> str:
    """mean ± std of an optcv.stats.Spread (as a dict), or the value alone for one seed."""
    if spread["n"] == 1:
        return f"{scale * spread['mean']:.{digits}f}"
    return f"{scale * spread['mean']:.{digits}f} ± {scale * spread['std']:.{digits}f}"


def compare_rows(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparison table from optcv.compare.OptimizerSummary records: mean ± std over n seeds."""
    return [{"optimizer": s["optimizer"], "lr": f"{s['lr']:g}", "seeds": s["final_train_loss"]["n"],
             "final train loss": _pm(s["final_train_loss"]), "test loss": _pm(s["test_loss"]),
             "test accuracy %": _pm(s["test_accuracy"], 100, 2), "s/epoch": s["seconds_per_epoch"],
             "images/s": s["images_per_s"]} for s in summary]


_MEASURES = {"final_train_loss": ("final training loss", "lower", 1.0, 4, ""),
             "test_accuracy": ("test accuracy", "higher", 100.0, 2, " points")}


def compare_conclusions(differences: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per optcv.compare.OptimizerDifference, claiming a difference only where its test does."""
    from optcv.stats import ALPHA

    lines = []
    for d in differences:
        label, direction, scale, digits, unit = _MEASURES[d["measure"]]
        diff = d["difference"]
        n = (f"n = {diff['n_a']} and {diff['n_b']} seeds" if diff["n_a"] != diff["n_b"]
             else f"n = {diff['n_a']} seeds each")
        gap = abs(scale * diff["difference"])
        if diff["p_value"] is None:
            lines.append(f"{d['better']} had the {direction} {label} ({gap:.{digits}f}{unit} beyond "
                         f"{d['other']}), from one seed each: no test is possible, so no difference is claimed "
                         "(run with more seeds).")
        elif diff["p_value"] < ALPHA:
            low, high = sorted((abs(scale * diff["ci_low"]), abs(scale * diff["ci_high"])))
            lines.append(f"**{d['better']}** ended with a {direction} {label} than {d['other']} by "
                         f"{gap:.{digits}f}{unit} (95 % CI {low:.{digits}f}–{high:.{digits}f}; {diff['test']}, {n}, "
                         f"p = {diff['p_value']:.2g}).")
        else:  # the interval spans no difference: signed, better minus other, so the reader sees both sides
            low, high = scale * diff["ci_low"], scale * diff["ci_high"]
            lines.append(f"{label.capitalize()}: no difference between {d['better']} and {d['other']} beyond "
                         f"seed-to-seed spread ({gap:.{digits}f}{unit} apart; 95 % CI of {d['better']} − "
                         f"{d['other']} {low:+.{digits}f} to {high:+.{digits}f}{unit}; {diff['test']}, {n}, "
                         f"p = {diff['p_value']:.2g}).")
    return lines


def plot_latency_bars(labels: Sequence[str], medians_us: Sequence[float], p95_us: Sequence[float],
                      path: str | Path, title: str = "Per-image latency (batch 1)") -> Path:
    fig, ax = _figure(7, 0.6 * len(labels) + 1.5)
    positions = range(len(labels))
    ax.barh(list(positions), medians_us, color="tab:blue", label="median")
    ax.errorbar(p95_us, list(positions), fmt="|", color="black", markersize=12, label="p95")
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()
    ax.set_xlabel("µs per image")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------
# The report of `optcv run`: every number comes from `results` (also written as results.json), and every
# sentence of conclusion is computed from those numbers.

COURSE_SPEEDUP = 1185.95 / 63.68  # the course's PyTorch µs ÷ ONNX µs per prediction (≈ 18.6×)


def write_report(results: dict[str, Any], run_dir: Path) -> list[Path]:
    from optcv._io import write_json, write_text

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
             "![loss comparison](compare/loss_comparison.png)", "",
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
    from optcv.stats import wilson

    low, high = wilson(round(accuracy * n), n)
    return f"{100 * accuracy:.2f} % ({100 * low:.1f}–{100 * high:.1f})"


def speedup_text(ratio: float, low: float, high: float) -> str:
    return f"{ratio:.2f}× ({low:.2f}–{high:.2f})"


def throughput_text(throughput: dict[str, Any]) -> str:
    """Batched images/s with its interval and rounds where measured so (results before they were: the bare
    figure)."""
    rate = f"{throughput['images_per_s']:,.0f}"
    if "ci_low" not in throughput:
        return rate
    return f"{rate} ({throughput['ci_low']:,.0f}–{throughput['ci_high']:,.0f}, n={throughput['rounds']})"


def latency_rows(result: Any) -> list[dict[str, Any]]:
    """The course's latency table, per backend: µs per prediction, speed-up, batched images/s."""
    reference = next(iter(result.backends))
    ratios = {r.backend: r for r in result.ratios}
    rows = []
    for name, r in result.backends.items():
        row: dict[str, Any] = {
            "backend": name,
            "threads": r.settings.get("threads"),
            "predictions": r.latency.n,
            "mean µs": r.latency.mean_us,
            "median µs": r.latency.median_us,
            "p95 µs": r.latency.p95_us,
            f"speed-up vs {reference} (95% CI)": "1 (reference)" if name == reference else
            speedup_text(ratios[name].ratio, ratios[name].ci_low, ratios[name].ci_high),
        }
        for batch, t in r.throughput.items():
            row[f"images/s @{batch} (95% CI)"] = throughput_text(t)
        rows.append(row)
    return rows


def _latency_section(latency: dict[str, Any], chart: str | None) -> list[str]:
    lines = ["## 4. Per-image latency and batched throughput", ""]
    for model, bench in latency["models"].items():
        reference = next(iter(bench["backends"]))
        ratios = {r["backend"]: r for r in bench["ratios"].values()}
        rows = []
        for backend, values in bench["backends"].items():
            lat = values["latency_us"]
            row: dict[str, Any] = {"backend": backend, "threads": values["settings"].get("threads"),
                                   "predictions": lat["n"], "mean µs": f"{lat['mean_us']:.1f}",
                                   "median µs": f"{lat['median_us']:.1f}", "p95 µs": f"{lat['p95_us']:.1f}",
                                   "speed-up (95% CI)": "1 (reference)" if backend == reference else
                                   speedup_text(ratios[backend]["ratio"], ratios[backend]["ci_low"],
                                                ratios[backend]["ci_high"])}
            for batch, t in values["throughput"].items():
                row[f"images/s @{batch} (95% CI)"] = throughput_text(t)
            rows.append(row)
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


# ---------------------------------------------------------------------------------------------------------
# The A/B gate and its self-test.


def _signed(value: float) -> str:
    return f"{value:+.1f} %"


def gate_failure_lines(result: Any) -> list[str]:
    """One line per failing case, for a CI log."""
    return [f"SPEED REGRESSION: {f.case} {_signed(f.change_pct)} (95 % CI {_signed(f.ci_low_pct)} … "
            f"{_signed(f.ci_high_pct)}; base {f.base_median_us:,.1f} µs → head {f.head_median_us:,.1f} µs per call; "
            f"threshold {f.threshold_pct:g} %)" for f in result.regressions]


def gate_rows(result: Any) -> list[dict[str, Any]]:
    return [{"case": f.case, "base median µs": f.base_median_us, "head median µs": f.head_median_us,
             "change": _signed(f.change_pct), "95% CI": f"{_signed(f.ci_low_pct)} … {_signed(f.ci_high_pct)}",
             "threshold": f"{f.threshold_pct:g} %", "rounds × calls": f"{f.rounds} × {f.calls_per_turn}",
             "verdict": ("**" + f.verdict.value.upper() + "**") if f.failed else f.verdict.value}
            for f in result.findings]


def profile_rows(profile: dict[str, Any], top: int = 8) -> list[dict[str, Any]]:
    """Operators by their head time per call, with the base's and the change; the rest outside operators."""
    base, head = profile["base"]["ops_us_per_call"], profile["head"]["ops_us_per_call"]
    names = sorted(set(base) | set(head), key=lambda k: -max(head.get(k, 0.0), base.get(k, 0.0)))
    rows = [{"operator": k, "base µs/call": base.get(k, 0.0), "head µs/call": head.get(k, 0.0),
             "change µs": head.get(k, 0.0) - base.get(k, 0.0)} for k in names[:top]]
    outside = {side: profile[side]["wall_us_per_call"] - sum(profile[side]["ops_us_per_call"].values())
               for side in ("base", "head")}
    rows.append({"operator": "(unprofiled call time minus operators)", "base µs/call": outside["base"],
                 "head µs/call": outside["head"], "change µs": outside["head"] - outside["base"]})
    return rows


def _side_line(side: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in side["versions"].items())
    where = side["revision"] or f"working tree {side['tree']}"
    return f"{where}; {side['python']}; {versions}; code {side['code_hash']}"


def gate_markdown(result: Any) -> str:
    env = result.environment
    failed = result.regressions
    head = (f"## optcv gate: {len(failed)} of {len(result.findings)} cases slower beyond their threshold"
            if failed else f"## optcv gate: passed ({len(result.findings)} cases, none slower beyond its threshold)")
    lines = [head, "",
             f"- base: {_side_line(result.base)}", f"- head: {_side_line(result.head)}",
             f"- machine: {env['cpu']} ({env['cpu_count']} cores), load {env.get('load_average_1m')}; "
             f"{result.protocol['workers_per_side']} workers per side, seed {result.protocol['seed']}; "
             f"{result.seconds:.0f} s",
             f"- change = head ÷ base per call − 1: {result.protocol['statistic']}; a case fails when the interval "
             "excludes 0 and the change exceeds its threshold; faster is never a failure", "",
             markdown_table(gate_rows(result))]
    for finding in failed:
        if finding.profile:
            lines += ["", f"### Where the time went: {finding.case}", "", markdown_table(profile_rows(finding.profile))]
    if result.retested:
        final = {f.case: f for f in result.findings}
        lines += ["", "Re-tested with fresh workers (a case fails only if the re-test confirms it):", "",
                  markdown_table([{"case": f.case, "first pass": f"{_signed(f.change_pct)} ({_signed(f.ci_low_pct)} … "
                                   f"{_signed(f.ci_high_pct)})", "re-test": f"{_signed(final[f.case].change_pct)} "
                                   f"({_signed(final[f.case].ci_low_pct)} … {_signed(final[f.case].ci_high_pct)})",
                                   "verdict": final[f.case].verdict.value} for f in result.retested])]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def self_test_markdown(result: Any) -> str:
    from optcv.selftest import affected

    levels = sorted({r.level_pct for r in result.runs if r.target})
    targets = [t for t in ("onnxruntime", "pytorch", "shared") if any(r.target == t for r in result.runs)]
    cases = [f.case for f in result.runs[0].findings] if result.runs else []
    lines = ["## optcv gate self-test", "",
             f"Injected: a busy-wait of the given fraction of each call's own time, from a sitecustomize.py on the "
             f"head's PYTHONPATH; cells: runs that failed the case / runs. Machine: {result.environment['cpu']} "
             f"({result.environment['cpu_count']} cores).", ""]
    for threshold in result.thresholds:
        rows = []
        for target in targets:
            for level in levels:
                found = result.detections(target, level, threshold)
                row: dict[str, Any] = {"injected": f"{target} +{level:g} %"}
                for case in cases:
                    row[case] = "—" if not affected(target, case) else "{}/{}".format(*found.get(case, (0, 0)))
                rows.append(row)
        runs_failed, runs, cases_failed, n_cases = result.false_alarms(threshold)
        lines += [f"### threshold {threshold:g} %", "", markdown_table(rows) if rows else "(no injected runs)", "",
                  f"False alarms: {runs_failed} of {runs} gate runs on unchanged code failed; "
                  f"{cases_failed} of {n_cases} unaffected case measurements (all runs) failed.", ""]
    return "\n".join(lines)


def ratio_fallback_markdown(fallback: Any) -> str:
    from optcv.bench import DEFAULT_MARGIN

    lines = ["## optcv gate: RATIO FALLBACK (no base revision to time against)", "",
             f"- why: {fallback.reason}",
             f"- gated instead: PyTorch ÷ ONNX Runtime speed-ups measured interleaved in this run against "
             f"{fallback.baseline}; a speed-up fails when even its interval's upper end is more than "
             f"{100 * DEFAULT_MARGIN:g} % below the baseline's. This sees a slower ONNX Runtime, not a slower "
             "PyTorch or shared path."]
    if not fallback.comparable:
        lines.append("- **NOT COMPARED: the baseline was recorded on another machine**: "
                     + "; ".join(fallback.machine_differences) + ". Its ratios are shown, never enforced; refresh "
                     "it on this machine (`pytest benchmarks -k ratio_gate --ratio-save`)")
    elif fallback.machine_differences:
        lines.append("- the baseline was recorded with other software: " + "; ".join(fallback.machine_differences))
    enforced = "" if fallback.comparable else "(not enforced) "
    lines += ["", "\n".join(f"- {enforced}{f.message()}" for f in fallback.findings)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Against the machine's limits.


def limits_rows(limits: Any) -> list[dict[str, Any]]:
    """Per backend and batch size: time per image, achieved GMAC/s, % of the GEMM peak, and what bounds it."""
    rows = []
    for r in limits.rows:
        bound = {None: "—", True: "overhead", False: "compute"}[r.overhead_bound]
        rows.append({"backend": r.backend, "batch": r.batch_size, "threads": r.threads, "µs/image": r.us_per_image,
                     "GMAC/s": r.achieved_gmac_per_s, "% of peak": f"{100 * r.peak_fraction:.1f} %",
                     "floor µs/call": r.compute_floor_us, "overhead µs/call": r.overhead_us, "bound by": bound})
    return rows


def limits_markdown(limits: Any) -> str:
    peaks = "; ".join(f"{p.gmac_per_s:.0f} GMAC/s ({p.source})" for p in limits.peaks.values())
    return "\n".join([
        markdown_table(limits_rows(limits)), "",
        f"{limits.model}: {limits.macs_per_image / 1e6:,.2f} MMAC per image. Peak: {peaks}. Floor: the call's MACs "
        "at that peak. Overhead: the same runtime running a model that computes nothing (batch 1). A backend whose "
        "overhead exceeds its floor is overhead-bound: faster kernels cannot help it."])


def parity_line(result: Any) -> str:
    """One line for a parity verdict (optcv.evaluate.ParityResult)."""
    tol = result.tolerance
    bar = ("the reference's class for every image" if tol.exact else
           f"accuracy within {tol.overall_points:g} points overall and {tol.per_class_points:g} per class")
    status = "PASS" if result.passed else "PARITY FAILURE"
    return (f"{status}: {result.backend} vs {result.reference} on {result.n_images:,} images: {result.n_disagree:,} "
            f"classes differ; accuracy {result.overall_diff_points:+.2f} points overall, worst class "
            f"{result.worst_class} {result.worst_class_diff_points:+.1f}; required: {bar}")


def search_rows(result: Any) -> list[dict[str, Any]]:
    """`optcv bench --search`'s grid: per backend and batch size, every setting's µs per image (median over
    rounds, 95 % interval), relative to that group's fastest, the kept one marked."""
    best = result.best()
    rows = []
    groups: dict[tuple[str, int], list[Any]] = {}
    for t in result.timings:
        groups.setdefault((t.backend, t.batch_size), []).append(t)
    for (backend, batch), timings in groups.items():
        fastest = min(t.median_us_per_image for t in timings)
        for t in sorted(timings, key=lambda t: t.median_us_per_image):
            rows.append({"backend": backend, "batch": batch,
                         "settings": ", ".join(f"{k}={v}" for k, v in t.settings.items()),
                         "µs per image": t.median_us_per_image,
                         "95% CI": f"{t.ci_low_us:,.1f}–{t.ci_high_us:,.1f}",
                         "vs fastest": f"{t.median_us_per_image / fastest:.2f}×",
                         "kept": "yes" if best[backend][batch] == t.settings else ""})
    return rows


# ---------------------------------------------------------------------------------------------------------
# `optcv how-fast`: backends × reference models against the machine's limits.


def how_fast_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model and backend: batch-1 µs per image and speed-up over PyTorch (95 % CI), what bounds batch 1,
    batched images/s, GMAC/s and % of the measured GEMM peak, and the model's accuracy."""
    rows = []
    for m in result["models"]:
        bench, limits = m["bench"], m["limits"]
        ratios = {r["backend"]: r for r in bench["ratios"].values()}
        by_key = {(r["backend"], r["batch_size"]): r for r in limits["rows"]}
        for backend, b in bench["backends"].items():
            one = by_key[(backend, 1)]
            batch, t = next(iter(b["throughput"].items()))
            batched = by_key[(backend, int(batch))]
            ratio = ratios.get(backend)
            rows.append({
                "model": m["model"], "accuracy": f"{100 * m['accuracy']['test_accuracy']:.1f} %",
                "backend": backend, "b1 µs/image": b["latency_us"]["median_us"], "b1 threads": one["threads"],
                "b1 vs pytorch": "1" if ratio is None else
                speedup_text(ratio["ratio"], ratio["ci_low"], ratio["ci_high"]),
                "b1 bound by": {None: "—", True: "overhead", False: "compute"}[one["overhead_bound"]],
                f"b{batch} images/s (95% CI)": throughput_text(t), f"b{batch} threads": batched["threads"],
                f"b{batch} GMAC/s": batched["achieved_gmac_per_s"],
                f"b{batch} % of peak": f"{100 * batched['peak_fraction']:.0f} %"})
    return rows


def how_fast_markdown(result: dict[str, Any]) -> str:
    from optcv.env import describe_environment

    # Each model's rows are set against the peak measured right after its own timings: on a shared machine
    # the readings differ by tens of percent through one run, so every one is shown.
    peak_text = "; ".join(f"{m['model']} " + ", ".join(f"{p['gmac_per_s']:.0f} at {t} thread(s)"
                                                      for t, p in sorted(m["limits"]["peaks"].items()))
                          for m in result["models"])
    sources = [p["source"].split(",")[0] for m in result["models"] for p in m["limits"]["peaks"].values()]
    source = sources[0] if sources else "none measured"
    macs = ", ".join(f"{m['model']} {m['limits']['macs_per_image'] / 1e6:,.2f}" for m in result["models"])
    calls = ", ".join(f"{m['model']} {m['bench']['config']['n_single']:,}" for m in result["models"])
    return "\n".join([markdown_table(how_fast_rows(result)), "",
                      f"Machine: {describe_environment(result['environment'])}. fp32 GEMM peak in GMAC/s, measured "
                      f"after each model's timings ({source}; % of peak is against its model's): {peak_text}. "
                      f"MMAC per image: {macs}. Single-image calls per backend, interleaved: {calls}; "
                      "speed-up = median over chunks of the per-chunk median ratio, 95 % bootstrap CI. Each "
                      "backend at its fastest calibrated setting; batched images/s: the median over interleaved "
                      "rounds of one backend after another, 95 % bootstrap CI. Accuracy: the reference model's own "
                      "test accuracy when it was built (optcv.reference). int8 rows count their MACs against the fp32 "
                      "peak, so they can pass 100 %: int8 kernels (VNNI, AMX) do more MACs per cycle.",
                      *_compile_notes(result)])


def _compile_notes(result: dict[str, Any]) -> list[str]:
    """Compile times of the compiling backends, which no timing above includes."""
    notes = []
    for m in result["models"]:
        for backend, b in m["bench"]["backends"].items():
            settings = [b.get("settings", {}), *(t.get("settings", {}) for t in b["throughput"].values())]
            seconds = {batch: s for one in settings for batch, s in one.get("compile_seconds", {}).items()}
            if seconds:
                each = ", ".join(f"batch {size} {seconds[size]:.1f} s" for size in sorted(seconds, key=int))
                notes.append(f"{m['model']} / {backend}: compiled in {each} (outside every timing).")
    return ["", *notes] if notes else []


def plot_how_fast(result: dict[str, Any], path: str | Path) -> Path:
    """Two panels per model group: batch-1 µs per image (log scale) and batched % of the GEMM peak."""
    rows = how_fast_rows(result)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, (left, right) = _figure(11, 0.55 * len(models) * len(backends) / 2 + 2.5, 1, 2)
    width = 0.8 / len(backends)
    peak_key = next(k for k in rows[0] if k.endswith("% of peak"))
    for i, backend in enumerate(backends):
        mine = {r["model"]: r for r in rows if r["backend"] == backend}
        ys = [m + i * width for m in range(len(models)) if models[m] in mine]
        left.barh(ys, [mine[m]["b1 µs/image"] for m in models if m in mine], height=width, label=backend)
        right.barh(ys, [float(mine[m][peak_key].rstrip(" %")) for m in models if m in mine], height=width)
    for ax in (left, right):
        ax.set_yticks([m + 0.4 - width / 2 for m in range(len(models))], models)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    left.set_xscale("log")
    left.set_xlabel("batch 1: µs per image (log scale; lower is faster)")
    right.set_xlabel(f"{peak_key.split()[0]}: % of the measured fp32 GEMM peak")
    left.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def cache_markdown(info: Any) -> str:
    """Per area its entries and size, then every decode with its source and every stale entry with why."""
    from optcv.cache import AREAS

    rows = [{"area": area, "entries": sum(1 for e in info.entries if e.area == area),
             "stale": sum(1 for e in info.entries if e.area == area and e.stale), "size": _size_text(info.bytes(area))}
            for area in AREAS]
    lines = [f"cache: {info.root} ({_size_text(info.bytes())})", "", markdown_table(rows)]
    listed = [e for e in info.entries if e.source is not None or e.stale]
    if listed:
        lines += ["", markdown_table([{"entry": f"{e.area}/{e.path.name}", "size": _size_text(e.bytes),
                                       "state": e.state, "source": e.source} for e in listed])]
    if any(e.stale for e in info.entries):
        lines += ["", "`optcv cache clear --stale` removes the stale entries; `optcv cache clear` everything."]
    return "\n".join(lines)


def cache_removed_line(removed: Sequence[Any], *, stale_only: bool) -> str:
    what = "stale " if stale_only else ""
    return f"removed {len(removed)} {what}cache entr{'y' if len(removed) == 1 else 'ies'}, " \
           f"{_size_text(sum(e.bytes for e in removed))}"
