"""Optuna search on a tiny synthetic data set: bounds, pruning, resume, divergence, kill, workers, errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import skip_or_fail
from optcv.errors import OptcvError
from optcv.report.study import write_plots
from optcv.training.retrain import finish
from optcv.training.study_results import trials_to_exceed
from optcv.training.study_storage import count_trials, open_study
from optcv.training.tune import Objective, SearchSpace, TuneConfig, tune, tuning_splits

SMALL = dict(epochs=2, train_size=60, val_size=20, batch_size=16, final_epochs=1)
SMALL_SPACE = SearchSpace(n_layers=(1, 2), n_units=(4, 16), lr=(1e-4, 1e-2))


def small_config(**overrides) -> TuneConfig:
    return TuneConfig(**{**SMALL, "space": SMALL_SPACE, **overrides})


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optcv", "tune", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_space_is_sampled_within_bounds(tiny, tmp_path):
    space = SearchSpace(n_layers=(1, 3), n_units=(4, 32), dropout=(0.2, 0.5), lr=(1e-4, 1e-2))
    study = tune(small_config(trials=8, space=space, pruner="none"), tmp_path, data=tiny, progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 8
    for trial in trials:
        p = trial.params
        assert 1 <= p["n_layers"] <= 3 and 1e-4 <= p["lr"] <= 1e-2 and p["optimizer"] in ("Adam", "RMSprop", "SGD")
        assert sorted(k for k in p if k.startswith("n_units")) == [f"n_units_l{i}" for i in range(p["n_layers"])]
        assert all(4 <= p[f"n_units_l{i}"] <= 32 and 0.2 <= p[f"dropout_l{i}"] <= 0.5 for i in range(p["n_layers"]))
        assert sorted(trial.intermediate_values) == [1, 2]  # validation accuracy reported every epoch


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_objective_prunes_when_the_pruner_says_so(tiny):
    config = small_config()
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(Objective(config, *tuning_splits(tiny, config)), n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert all(list(t.intermediate_values) == [1] for t in study.trials)  # stopped after the first epoch


def test_the_objective_is_the_last_epochs_accuracy_not_the_best(tiny, monkeypatch):
    """The trial's value must belong to the weights it ends with (the ones retrained), so a trial whose
    accuracy fell in its last epoch is worth that last value."""
    import optcv.training.tune as tune_module
    from optcv.training.train import EpochRecord, History

    def falling(model, train_split, val_split, config, *, on_epoch, **_):
        history = History(config)
        for epoch, accuracy in enumerate((0.6, 0.4), start=1):
            history.epochs.append(EpochRecord(epoch, 1.0, 1.0, accuracy, [accuracy] * 10, 0.1, 1.0))
            on_epoch(history)
        return history

    monkeypatch.setattr(tune_module, "train", falling)
    config = small_config(pruner="none")
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(config, *tuning_splits(tiny, config)), n_trials=1)
    assert study.trials[0].value == 0.4
    assert study.trials[0].intermediate_values == {1: 0.6, 2: 0.4}


def test_trials_to_exceed_counts_every_trial_up_to_the_first_complete_one_above():
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for state, value in [(TrialState.COMPLETE, 0.45), (TrialState.PRUNED, None), (TrialState.COMPLETE, 0.50),
                         (TrialState.COMPLETE, 0.52), (TrialState.COMPLETE, 0.60)]:
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"x": 0.5}, distributions=dist))
    assert trials_to_exceed(study, 0.50) == 4  # 0.50 itself does not exceed; pruned trials count
    assert trials_to_exceed(study, 0.60) is None


def test_validation_never_touches_the_test_split(tiny):
    config = small_config(train_size=50, val_size=20)
    train, val = tuning_splits(tiny, config)
    assert len(train) == 50 and len(val) == 20
    train_rows = {x.numpy().tobytes() for x in train.images}
    assert not any(x.numpy().tobytes() in train_rows for x in val.images)
    test_rows = {x.numpy().tobytes() for x in tiny.test.images}
    assert not any(x.numpy().tobytes() in test_rows for x in [*train.images, *val.images])


def test_resume_runs_only_the_missing_trials(tiny, tmp_path):
    first = tune(small_config(trials=4), tmp_path, data=tiny, progress=False)
    started = {t.number: t.datetime_start for t in first.trials}
    second = tune(small_config(trials=6), tmp_path, data=tiny, progress=False)
    assert count_trials(second)["finished"] == 6 and len(second.trials) == 6
    assert {t.number: t.datetime_start for t in second.trials if t.number < 4} == started
    again = tune(small_config(trials=6), tmp_path, data=tiny, progress=False)
    assert len(again.trials) == 6  # nothing left to do


def test_resume_refuses_other_search_settings(tiny, tmp_path):
    tune(small_config(trials=1), tmp_path, data=tiny, progress=False)
    with pytest.raises(OptcvError, match="started with other search settings"):
        tune(small_config(trials=2, epochs=3), tmp_path, data=tiny, progress=False)


def test_a_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(tiny, tmp_path):
    space = SearchSpace(n_layers=(1, 1), n_units=(8, 8), optimizers=("SGD",), lr=(1e6, 1e6))
    study = tune(small_config(trials=3, space=space), tmp_path, data=tiny, progress=False)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert all("diverged" in t.user_attrs["fail_reason"] for t in study.trials)


def test_finish_writes_study_json_and_an_exportable_best_model_and_the_plots_are_drawn(tiny, tmp_path):
    config = small_config(trials=5, pruner="none")
    study = tune(config, tmp_path, data=tiny, progress=False)
    summary = finish(study, config, tiny, tmp_path, progress=False)
    assert not list(tmp_path.glob("*.png"))  # the library returns data; drawing is the report's
    write_plots(study, tmp_path)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["summary"]["finished"] == 5 and len(saved["trials"]) == 5
    assert {"number", "state", "params", "value", "duration_s", "intermediate_values"} <= set(saved["trials"][0])
    assert summary["best_value"] == max(t["value"] for t in saved["trials"])
    for name in ("optimization_history.png", "intermediate_values.png", "param_importances.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    from optcv.backends.onnx_export import export_onnx

    assert 0 <= saved["best_model"]["test_accuracy"] <= 1
    export_onnx(tmp_path / "best" / "model.pt", tmp_path / "best.onnx")


def test_cli_prints_statistics_and_show_reads_them_back(tiny_data_dir, tmp_path):
    args = ["--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--trials", "3", "--epochs", "2",
            "--train-size", "60", "--val-size", "20", "--batch-size", "16", "--n-units", "4", "16",
            "--lr-range", "1e-4", "1e-2", "--quiet"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "Study statistics:" in result.stdout and "Number of finished trials:  3" in result.stdout
    assert "test accuracy" in result.stdout
    shown = cli("--show", "--out", str(tmp_path))
    assert shown.returncode == 0 and "Number of finished trials:  3" in shown.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pruner", "sometimes"], "unknown pruner 'sometimes': choose from median, hyperband, none"),
        (["--n-layers", "5", "1"], "empty search range for n_layers: low 5 > high 1"),
        (["--optimizers", "Lion"], "unknown optimizer 'Lion'"),
        (["--storage", "sqlite:////nonexistent-folder/sub/study.db"], "cannot open storage"),
        (["--storage", "postgresql+psycopg://optcv@127.0.0.1:9/none"], "storage"),
        (["--show"], "no study in"),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny_data_dir, tmp_path, args, message):
    result = cli("--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "run"), "--trials", "1", *args,
                 timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def trial_states(db) -> list[str]:
    try:
        with sqlite3.connect(db) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.Error:  # the file exists before Optuna has created its tables
        return []


@pytest.mark.full  # the fast tier's tune kill points cover losing nothing; this adds the dead trial's mark
def test_sigkill_mid_trial_then_resume_loses_no_completed_trial(tiny_data_dir, tmp_path):
    args = ["--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--trials", "5", "--epochs", "12",
            "--train-size", "60", "--val-size", "20", "--batch-size", "8", "--pruner", "none",
            "--n-units", "4", "16", "--no-retrain", "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "optcv", "tune", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    db = tmp_path / "study.db"
    deadline = time.time() + 180
    while time.time() < deadline:
        states = trial_states(db) if db.is_file() else []
        if states.count("COMPLETE") >= 1 and states[-1:] == ["RUNNING"]:
            break
        time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"no trial completed in time: {process.stderr.read().decode() if process.stderr else ''}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = trial_states(db)
    completed_before = [i for i, s in enumerate(before) if s == "COMPLETE"]
    interrupted = len(before) - 1

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    study = open_study(f"sqlite:///{db}", "optcv")
    states = {t.number: t.state for t in study.trials}
    assert all(states[i] == TrialState.COMPLETE for i in completed_before)
    assert states[interrupted] == TrialState.FAIL
    assert "died" in study.trials[interrupted].user_attrs["fail_reason"]
    assert count_trials(study)["finished"] == 5


def check_parallel_study(study) -> None:
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == numbers[-1] + 1  # no duplicated or skipped number
    assert count_trials(study)["finished"] == 6  # exactly the target: no lost trial, no extra one
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both processes ran trials


def test_two_workers_share_a_journal_file(tiny_data_dir, tmp_path):
    result = cli("--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--trials", "6", "--epochs", "8",
                 "--train-size", "60", "--val-size", "20", "--batch-size", "8", "--workers", "2",
                 "--n-units", "4", "16", "--pruner", "none", "--no-retrain", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "study.journal").is_file() and not (tmp_path / "study.db").exists()
    check_parallel_study(open_study(f"journal:{tmp_path / 'study.journal'}", "optcv"))


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("OPTCV_TEST_POSTGRES_URL")
    if not url:
        message = ("set OPTCV_TEST_POSTGRES_URL to a PostgreSQL URL (e.g. postgresql+psycopg://postgres@127.0.0.1:"
                   "55432/optcv, with optcv[postgres] installed) to run the multi-machine test; .ci/run starts one")
        skip_or_fail(message)
    return url


@pytest.mark.full  # needs the PostgreSQL server .ci/run starts
def test_two_workers_against_postgresql(tiny_data_dir, tmp_path, postgres_url):
    name = f"ci-{os.getpid()}-{time.time_ns()}"
    result = cli("--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--trials", "6", "--epochs", "8",
                 "--train-size", "60", "--val-size", "20", "--batch-size", "8", "--workers", "2",
                 "--storage", postgres_url, "--study-name", name, "--n-units", "4", "16", "--pruner", "none",
                 "--no-retrain", "--quiet")
    assert result.returncode == 0, result.stderr
    check_parallel_study(open_study(postgres_url, name))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks for a trial by hand, on purpose
def test_a_trial_killed_before_it_recorded_its_worker_is_failed_on_restart(tiny, tmp_path):
    config = small_config(trials=1)
    tune(config, tmp_path, data=tiny, progress=False)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "optcv")
    orphan = study.ask()  # RUNNING, and no worker ever wrote into it: a process killed right after asking
    study = tune(small_config(trials=2), tmp_path, data=tiny, progress=False)
    failed = study.trials[orphan.number]
    assert failed.state == TrialState.FAIL and "before it started training" in failed.user_attrs["fail_reason"]
    assert count_trials(study)["finished"] == 2


def test_two_tune_commands_on_one_folder_are_refused(tiny_data_dir, tmp_path):
    from optcv._io import folder_lock

    with folder_lock(tmp_path / ".lock", "optcv tune"):
        result = cli("--data-dir", str(tiny_data_dir), "--out", str(tmp_path), "--trials", "1", timeout=120)
    assert result.returncode == 2 and "in use by another optcv tune" in result.stderr


def test_the_best_configuration_is_retrained_with_every_seed(tiny, tmp_path):
    config = small_config(trials=2, pruner="none", final_seeds=2, seed=3)
    study = tune(config, tmp_path, data=tiny, progress=False)
    summary = finish(study, config, tiny, tmp_path, progress=False)
    first = json.loads((tmp_path / "best" / "history.json").read_text())
    second = json.loads((tmp_path / "best" / "seed-4" / "history.json").read_text())
    assert (first["config"]["seed"], second["config"]["seed"]) == (3, 4)
    over = summary["best_model"]["test_accuracy_over_seeds"]
    accuracies = [first["epochs"][-1]["test_accuracy"], second["epochs"][-1]["test_accuracy"]]
    assert over["n"] == 2 and over["mean"] == sum(accuracies) / 2
    assert summary["best_model"]["test_accuracy"] == accuracies[0]  # the exported model is the first seed's


def test_a_one_worker_study_leaves_the_callers_settings_alone(tiny, tmp_path):
    """One worker runs in the caller's process: its thread count, Optuna's log level and the warning
    filters must be as they were."""
    import warnings

    import torch

    threads, verbosity, filters = torch.get_num_threads(), optuna.logging.get_verbosity(), list(warnings.filters)
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    torch.set_num_threads(3)  # not what the worker sets (the machine's cores per worker)
    try:
        tune(small_config(trials=1, pruner="none"), tmp_path, data=tiny, progress=False)
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG and torch.get_num_threads() == 3
        assert warnings.filters == filters
    finally:
        optuna.logging.set_verbosity(verbosity)
        torch.set_num_threads(threads)


def test_a_surplus_trial_is_not_counted_as_a_failure():
    import optuna

    from optcv.training.study_storage import SURPLUS_REASON, count_trials

    study = optuna.create_study()
    for reason in (f"{SURPLUS_REASON}: the target was reached by other workers", "diverged"):
        trial = study.ask()
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), 0.5)
    counts = count_trials(study)
    assert (counts["fail"], counts["surplus"], counts["finished"]) == (1, 1, 1)


POOL_LOGGING_SCRIPT = """
import logging
from sqlalchemy.pool import QueuePool
from optcv.training.tune import quiet_optuna

pool_logger = logging.getLogger(f"{QueuePool.__module__}.{QueuePool.__name__}")

def log(error):
    try:
        raise error
    except BaseException:
        pool_logger.error("Exception during reset or similar", exc_info=True)

with quiet_optuna():
    log(KeyboardInterrupt("inside"))
    log(ValueError("a real pool error"))
log(KeyboardInterrupt("outside"))
"""


def test_a_ctrl_c_logged_by_the_storages_connection_pool_is_dropped_while_tuning():
    """SQLAlchemy logs a KeyboardInterrupt that lands while it resets a pooled connection (with its traceback,
    through logging's last-resort handler) before re-raising it; the CLI already says "interrupted", so that
    record is dropped while optcv tunes (seen once in a SIGINT kill point); any other error of the pool still
    shows, and logging is left as it was after. In a fresh interpreter: pytest's own log handlers would
    change what reaches stderr."""
    done = subprocess.run([sys.executable, "-c", POOL_LOGGING_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "KeyboardInterrupt: inside" not in done.stderr
    assert "ValueError: a real pool error" in done.stderr and "KeyboardInterrupt: outside" in done.stderr
