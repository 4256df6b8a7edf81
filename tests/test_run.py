"""`optcv run` end to end on synthetic data: all stages, report = JSON, resume, the lock. (Resuming after SIGKILL
and SIGINT at seeded moments: tests/faults/test_kill_points.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from optcv.errors import OptcvError
from optcv.pipeline import STAGES, resolve_config, run_lock

TINY = ["compare.train_size=none", "compare.test_size=none", "compare.epochs=2", "tune.train_size=50",
        "tune.val_size=20", "tune.trials=3", "tune.epochs=2", "tune.final_epochs=1", "bench.n_single=200",
        "bench.chunk=20", "bench.batch_sizes=8", "bench.batched_images=64", "bench.calibration_calls=40"]


def optcv_run(data_dir, out, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optcv", "run", "--data-dir", str(data_dir), "--out", str(out),
                           "--set", *TINY, *extra], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_run(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = optcv_run(tiny_data_dir, out, "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_every_stage_runs_and_writes_report_and_json(finished_run):
    state = json.loads((finished_run / "stages.json").read_text())
    assert list(state["stages"]) == list(STAGES)
    results = json.loads((finished_run / "results.json").read_text())
    assert results["schema"] == "optcv-results/1" and results["preset"] == "quick"
    assert set(results["latency"]["models"]) == {"tutorial", "tuned"}
    for name in ("report.md", "latency.png", "compare/loss_comparison.png", "models/tutorial.onnx",
                 "models/tuned.onnx", "tune/study.json", "bench-tutorial.json"):
        assert (finished_run / name).is_file(), name
    report = (finished_run / "report.md").read_text()
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (finished_run / image).is_file(), image  # every picture the report shows exists


def test_report_numbers_equal_the_json(finished_run):
    report = (finished_run / "report.md").read_text()
    results = json.loads((finished_run / "results.json").read_text())
    for s in results["compare"]["summary"]:
        accuracy = f"{100 * s['test_accuracy']['mean']:.2f} ± {100 * s['test_accuracy']['std']:.2f}"
        assert re.search(rf"\| {s['optimizer']}\s+\|.*\|\s+{re.escape(accuracy)}\s+\|", report)
    differences = results["compare"]["differences"]
    assert [d["measure"] for d in differences] == ["final_train_loss", "test_accuracy"]
    for d in differences:  # every comparative sentence carries its n and its test's p-value
        n, p = d["difference"]["n_a"], d["difference"]["p_value"]
        assert n == 2 and f"n = 2 seeds each, p = {p:.2g})" in report
    tune = results["tune"]
    assert f"Number of finished trials:  {tune['finished']}" in report
    assert f"{100 * tune['best_model']['test_accuracy']:.2f} %" in report
    assert f"Objective: {tune['objective']}" in report
    needed = tune["trials_to_exceed_course"]
    assert (f"{needed} trials were needed" if needed else "No trial exceeded the course's best") in report
    for bench in results["latency"]["models"].values():
        for values in bench["backends"].values():
            assert f"{values['latency_us']['median_us']:.1f}" in report
        for ratio in bench["ratios"].values():
            assert f"{ratio['ratio']:.2f}× ({ratio['ci_low']:.2f}–{ratio['ci_high']:.2f})" in report
    from optcv.stats import wilson

    for evaluation in results["parity"]["models"].values():
        n = evaluation["n_images"]
        for values in evaluation["backends"].values():
            low, high = wilson(round(values["accuracy"] * n), n)
            assert f"{100 * values['accuracy']:.2f} % ({100 * low:.1f}–{100 * high:.1f})" in report


def test_rerun_skips_finished_stages(finished_run, tiny_data_dir):
    before = json.loads((finished_run / "stages.json").read_text())["stages"]
    result = optcv_run(tiny_data_dir, finished_run)
    assert result.returncode == 0, result.stderr
    after = json.loads((finished_run / "stages.json").read_text())["stages"]
    for stage in STAGES[:-1]:
        assert after[stage]["finished_at"] == before[stage]["finished_at"], stage
        assert f"{stage}: done earlier, skipped" in result.stderr


def test_a_damaged_output_reruns_its_stage(finished_run, tiny_data_dir):
    (finished_run / "bench-tutorial.json").write_text("{}")
    result = optcv_run(tiny_data_dir, finished_run)
    assert result.returncode == 0
    assert "latency: done earlier" not in result.stderr and "export: done earlier, skipped" in result.stderr
    assert json.loads((finished_run / "bench-tutorial.json").read_text())["schema"] == "optcv-bench/1"


def test_other_settings_in_the_same_folder_are_refused(finished_run, tiny_data_dir):
    result = optcv_run(tiny_data_dir, finished_run, "tune.trials=4")
    assert result.returncode == 2 and "holds a run with other settings" in result.stderr


def test_a_second_run_on_the_same_folder_is_locked_out(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        result = optcv_run(tiny_data_dir, out)
    assert result.returncode == 2
    assert "in use by another optcv run" in result.stderr and ".lock" in result.stderr
    assert not (out / "stages.json").exists()


def test_presets_and_overrides():
    config = resolve_config("course", ["tune.trials=7", "compare.train_size=none", "bench.batch_sizes=1,8"])
    assert config.tune.trials == 7 and config.compare.train_size is None and config.bench.batch_sizes == (1, 8)
    assert resolve_config("course").tune.trials == 100 and resolve_config("course").bench.n_single == 10_000
    for bad, message in [("tune.trials=many", "not a whole number"), ("tune.colour=1", "unknown setting"),
                         ("tune=3", "is a section"), ("trials", "SECTION.FIELD=VALUE")]:
        with pytest.raises(OptcvError, match=message):
            resolve_config("quick", [bad])
    with pytest.raises(OptcvError, match="unknown preset"):
        resolve_config("huge")
