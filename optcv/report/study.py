"""A study as the course printed it ('Study statistics: …') and as Optuna's plots."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from optcv._io import write_atomic


def statistics_text(summary: dict[str, Any]) -> str:
    """The course's console output: 'Study statistics: …'."""
    lines = ["Study statistics: ",
             f"  Number of finished trials:  {summary['finished']}",
             f"  Number of pruned trials:  {summary['pruned']}",
             f"  Number of complete trials:  {summary['complete']}"]
    if summary.get("failed"):
        lines.append(f"  Number of failed trials:  {summary['failed']}")
    if "best_value" in summary:
        lines += ["Best trial:", f"  Number: {summary['best_trial']}", f"  Value:  {summary['best_value']:.4f}",
                  "  Params: "]
        lines += [f"    {key}: {value}" for key, value in summary["best_params"].items()]
    else:
        lines.append("No trial has completed yet.")
    return "\n".join(lines)


def tune_text(summary: dict[str, Any], search_seconds: float, workers: int, train_images: int, out: Path) -> str:
    """`optcv tune`'s output: the course's statistics, the search's wall time, the best configuration retrained."""
    lines = [statistics_text(summary), "",
             f"search wall time this run: {search_seconds:.0f} s with {workers} worker(s)"]
    if "best_model" in summary:
        best = summary["best_model"]
        over = best["test_accuracy_over_seeds"]
        spread_text = (f" (over {over['n']} seeds: {100 * over['mean']:.2f} ± {100 * over['std']:.2f} %)"
                       if over["n"] > 1 else "")
        lines.append(f"best configuration retrained on all {train_images:,} training images for {best['epochs']} "
                     f"epochs: test accuracy {100 * best['test_accuracy']:.2f}%{spread_text} → {best['checkpoint']}")
    lines.append(f"study: {out / 'study.json'}; plots: {out}/*.png")
    return "\n".join(lines)


def write_plots(study: optuna.Study, run_dir: Path) -> list[Path]:
    """optuna.visualization.matplotlib plots as PNG: history, intermediate values, importances."""
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        plots.append(("optimization_history.png", lambda: optuna_plots.plot_optimization_history(study)))
        plots.append(("intermediate_values.png", lambda: optuna_plots.plot_intermediate_values(study)))
    if len(complete) >= 3 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        plots.append(("param_importances.png", lambda: optuna_plots.plot_param_importances(study)))
    written = []
    with warnings.catch_warnings(), pyplot_on_agg() as plt:
        warnings.simplefilter("ignore")
        for name, draw in plots:
            try:
                axes = draw()
            except (ValueError, RuntimeError):
                continue  # e.g. importances when every completed trial shares one value
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            written.append(write_atomic(run_dir / name, _png_writer(figure)))
            plt.close(figure)
    return written


def _png_writer(figure: Any) -> Callable[[Path], None]:
    return lambda tmp: figure.savefig(tmp, format="png", dpi=110)


@contextmanager
def pyplot_on_agg() -> Iterator[Any]:
    """pyplot on the Agg backend inside the block, and pyplot's backend setting as found after it. Optuna
    draws through pyplot, and its importances plot asserts an Agg canvas (it failed under "svg")."""
    import matplotlib
    import matplotlib.pyplot as plt

    found = matplotlib.rcParams._get("backend")  # unresolved: may still be 'choose on first use'
    plt.switch_backend("Agg")
    try:
        yield plt
    finally:
        if isinstance(found, str) and found.lower() != "agg":
            plt.switch_backend(found)
        else:
            matplotlib.rcParams._set("backend", found)
