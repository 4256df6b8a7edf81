"""The command line as a user meets it: outputs written, one-line errors, resume."""

import json
import subprocess
import sys

import pytest

from optcv.cli import main


def optcv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optcv", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def compared(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "compare"
    code = main(["compare", "--data-dir", str(tiny_data_dir), "--optimizers", "SGD", "Adagrad", "Adam",
                 "--epochs", "2", "--batch-size", "8", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_compare_writes_plot_histories_checkpoints_and_config(compared, capsys):
    for name in ("SGD", "Adagrad", "Adam"):
        assert (compared / name / "model.pt").is_file()
        history = json.loads((compared / name / "history.json").read_text())
        assert len(history["epochs"]) == 2
        assert not (compared / name / "train_state.pt").exists()
    png = (compared / "loss_comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    config = json.loads((compared / "config.json").read_text())
    assert config["compare"]["optimizers"] == ["SGD", "Adagrad", "Adam"]
    assert config["environment"]["versions"]["torch"]
    assert set(json.loads((compared / "histories.json").read_text())) == {"SGD", "Adagrad", "Adam"}


def test_compare_starts_every_optimizer_from_the_same_weights(tiny_data_dir, tmp_path):
    import torch

    from optcv.models import TutorialNetConfig, build_model

    # With a vanishing learning rate the trained weights are the initial ones: all equal, and seeded.
    assert main(["compare", "--data-dir", str(tiny_data_dir), "--optimizers", "SGD", "Adam", "--epochs", "1",
                 "--lr", "SGD=1e-12", "Adam=1e-12", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    initial = build_model(TutorialNetConfig(), seed=0).state_dict()
    for name in ("SGD", "Adam"):
        trained = torch.load(tmp_path / "c" / name / "model.pt", weights_only=True)["state_dict"]
        assert all(torch.allclose(trained[k], initial[k], atol=1e-8) for k in initial)


def test_compare_rerun_skips_finished_work(compared, tiny_data_dir, capsys):
    stamp = (compared / "SGD" / "model.pt").stat().st_mtime_ns
    assert main(["compare", "--data-dir", str(tiny_data_dir), "--optimizers", "SGD", "Adagrad", "Adam",
                 "--epochs", "2", "--batch-size", "8", "--out", str(compared), "--quiet"]) == 0
    assert (compared / "SGD" / "model.pt").stat().st_mtime_ns == stamp
    assert "| SGD" in capsys.readouterr().out


def test_compare_refuses_other_settings_in_the_same_folder(compared, tiny_data_dir, capsys):
    code = main(["compare", "--data-dir", str(tiny_data_dir), "--epochs", "3", "--out", str(compared), "--quiet"])
    assert code == 2
    assert "holds a comparison with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "--optimizers", "Lion"], "unknown optimizer 'Lion'"),
        (["compare", "--data-dir", "/nonexistent/cifar"], "data folder /nonexistent/cifar does not exist"),
        (["compare", "--lr", "SGD"], "--lr takes OPTIMIZER=VALUE pairs"),
        (["export", "/nonexistent.pt"], "checkpoint /nonexistent.pt does not exist"),
        (["evaluate", "model.txt"], "expected a checkpoint (.pt) or an ONNX model (.onnx)"),
        (["gate", "/nonexistent.json", "--baseline", "/nonexistent-baseline.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message, tmp_path):
    result = optcv(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_argument_errors_exit_non_zero():
    result = optcv("compare", "--epochs", "0")
    assert result.returncode == 2 and "must be at least 1" in result.stderr and "Traceback" not in result.stderr


def test_console_script_and_module_agree():
    result = optcv("--version")
    assert result.returncode == 0 and result.stdout.startswith("optcv ")
