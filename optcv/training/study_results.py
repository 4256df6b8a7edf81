"""A study as data: its summary (counts, best trial, the course's bar) and study.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optcv._io import write_json
from optcv.training.study_storage import FINISHED, count_trials
from optcv.training.tune import COURSE_BEST_ACCURACY, OBJECTIVE


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


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
            "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
            "duration_s": trial.duration.total_seconds() if trial.duration else None,
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "user_attrs": trial.user_attrs}


def write_study_json(study: optuna.Study, path: Path, extra: dict[str, Any] | None = None) -> Path:
    return write_json(path, {"summary": study_summary(study), **(extra or {}),
                             "trials": [trial_record(t) for t in study.get_trials(deepcopy=False)]})
