"""A study as the course printed it and as files: the summary, the statistics text, study.json, plots."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optcv._io import write_json
from optcv.study_storage import FINISHED, count_trials
from optcv.tune import COURSE_BEST_ACCURACY, OBJECTIVE


def study_summary(study: optuna.Study) -> dict[str, Any]:
    counts = count_trials(study)
    summary: dict[str, Any] = {"study_name": study.study_name, "finished": counts["finished"],
                               "pruned": counts["pruned"], "complete": counts["complete"],
                               "failed": counts["fail"], "running": counts["running"]}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete:
        best = study.best_trial
        summary.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                        "objective": OBJECTIVE, "course_best_value": COURSE_BEST_ACCURACY,
                        "trials_to_exceed_course": trials_to_exceed(study, COURSE_BEST_ACCURACY)})
    durations = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False, states=FINISHED) if t.duration]
    if durations:
        summary["trial_seconds_total"] = sum(durations)
    return summary


def trials_to_exceed(study: optuna.Study, value: float) -> int | None:
    """How many trials (in the order they were numbered, pruned and failed ones included) it took until one
    completed above `value`; None if none did."""
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE and trial.value is not None and trial.value > value:
            return trial.number + 1
    return None


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


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
            "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
            "duration_s": trial.duration.total_seconds() if trial.duration else None,
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "user_attrs": trial.user_attrs}


def write_study_json(study: optuna.Study, path: Path, extra: dict[str, Any] | None = None) -> Path:
    return write_json(path, {"summary": study_summary(study), **(extra or {}),
                             "trials": [trial_record(t) for t in study.get_trials(deepcopy=False)]})


def write_plots(study: optuna.Study, run_dir: Path) -> list[Path]:
    """optuna.visualization.matplotlib plots as PNG: history, intermediate values, importances."""
    import matplotlib

    # Optuna draws through pyplot, and its importances plot asserts an Agg canvas (it failed under "svg"):
    # the one place optcv selects pyplot's backend.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    from optcv._io import write_atomic

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        plots.append(("optimization_history.png", lambda: optuna_plots.plot_optimization_history(study)))
        plots.append(("intermediate_values.png", lambda: optuna_plots.plot_intermediate_values(study)))
    if len(complete) >= 3 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        plots.append(("param_importances.png", lambda: optuna_plots.plot_param_importances(study)))
    written = []
    with warnings.catch_warnings():
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
