"""The optimizer comparison: its table and its sentences, each claiming only what its test supports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optcv.report.tables import markdown_table
from optcv.stats import ALPHA


def _pm(spread: dict[str, Any], scale: float = 1.0, digits: int = 4) -> str:
    """mean ± std of an optcv.stats.Spread (as a dict), or the value alone for one seed."""
    if spread["n"] == 1:
        return f"{scale * spread['mean']:.{digits}f}"
    return f"{scale * spread['mean']:.{digits}f} ± {scale * spread['std']:.{digits}f}"


def compare_rows(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparison table from optcv.training.compare.OptimizerSummary records: mean ± std over n seeds."""
    return [{"optimizer": s["optimizer"], "lr": f"{s['lr']:g}", "seeds": s["final_train_loss"]["n"],
             "final train loss": _pm(s["final_train_loss"]), "test loss": _pm(s["test_loss"]),
             "test accuracy %": _pm(s["test_accuracy"], 100, 2), "s/epoch": s["seconds_per_epoch"],
             "images/s": s["images_per_s"]} for s in summary]


_MEASURES = {"final_train_loss": ("final training loss", "lower", 1.0, 4, ""),
             "test_accuracy": ("test accuracy", "higher", 100.0, 2, " points")}


def compare_conclusions(differences: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per optcv.training.compare.OptimizerDifference, claiming a difference only where its test does."""

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


def compare_text(summary: Sequence[dict[str, Any]], differences: Sequence[dict[str, Any]], loss_plot: str,
                 example_checkpoint: str, out_dir: str, machine: str) -> str:
    """What `optcv compare` prints: the table, the conclusions and where the results are."""
    return "\n".join([markdown_table(compare_rows(summary)), "", *compare_conclusions(differences), "",
                      f"loss plot: {loss_plot}",
                      f"checkpoints: {out_dir}/<optimizer>/seed-<seed>/model.pt, e.g. {example_checkpoint}",
                      f"machine: {machine}"])
