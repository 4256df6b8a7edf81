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
        assert (compared / name / "seed-0" / "model.pt").is_file()
        history = json.loads((compared / name / "seed-0" / "history.json").read_text())
        assert len(history["epochs"]) == 2
        assert not (compared / name / "seed-0" / "train_state.pt").exists()
    png = (compared / "loss_comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    config = json.loads((compared / "config.json").read_text())
    assert config["compare"]["optimizers"] == ["SGD", "Adagrad", "Adam"]
    assert config["environment"]["versions"]["torch"]
    assert set(json.loads((compared / "histories.json").read_text())) == {"SGD", "Adagrad", "Adam"}


def test_compare_starts_every_optimizer_from_the_same_weights(tiny_data_dir, tmp_path):
    import torch

    from optcv.training.models import TutorialNetConfig, build_model

    # With a vanishing learning rate the trained weights are the initial ones: per seed all equal, and seeded.
    assert main(["compare", "--data-dir", str(tiny_data_dir), "--optimizers", "SGD", "Adam", "--epochs", "1",
                 "--lr", "SGD=1e-12", "Adam=1e-12", "--seed", "5", "--seeds", "2", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    for seed in (5, 6):
        initial = build_model(TutorialNetConfig(), seed=seed).state_dict()
        for name in ("SGD", "Adam"):
            trained = torch.load(tmp_path / "c" / name / f"seed-{seed}" / "model.pt", weights_only=True)["state_dict"]
            assert all(torch.allclose(trained[k], initial[k], atol=1e-8) for k in initial)
    other = build_model(TutorialNetConfig(), seed=6).state_dict()
    assert not all(torch.equal(other[k], build_model(TutorialNetConfig(), seed=5).state_dict()[k]) for k in other)


def test_compare_rerun_skips_finished_work(compared, tiny_data_dir, capsys):
    stamp = (compared / "SGD" / "seed-0" / "model.pt").stat().st_mtime_ns
    assert main(["compare", "--data-dir", str(tiny_data_dir), "--optimizers", "SGD", "Adagrad", "Adam",
                 "--epochs", "2", "--batch-size", "8", "--out", str(compared), "--quiet"]) == 0
    assert (compared / "SGD" / "seed-0" / "model.pt").stat().st_mtime_ns == stamp
    assert "| SGD" in capsys.readouterr().out


def test_compare_refuses_other_settings_in_the_same_folder(compared, tiny_data_dir, capsys):
    code = main(["compare", "--data-dir", str(tiny_data_dir), "--epochs", "3", "--out", str(compared), "--quiet"])
    assert code == 2
    assert "holds a comparison with other settings" in capsys.readouterr().err


def test_argument_errors_exit_non_zero():
    result = optcv("compare", "--epochs", "0")
    assert result.returncode == 2 and "must be at least 1" in result.stderr and "Traceback" not in result.stderr


def test_console_script_and_module_agree():
    result = optcv("--version")
    assert result.returncode == 0 and result.stdout.startswith("optcv ")


def test_evaluate_exits_1_when_a_backend_leaves_its_parity_tolerance(compared, tiny_data_dir, tmp_path,
                                                                     monkeypatch, capsys):
    """A script or CI relies on the exit code: 0 when every backend is within tolerance, 1 when one drifted."""
    import numpy as np

    from optcv.backends.onnxruntime import OrtPredictor

    checkpoint = compared / "SGD" / "seed-0" / "model.pt"
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "m.onnx")]) == 0
    args = ["evaluate", str(checkpoint), str(tmp_path / "m.onnx"), "--data-dir", str(tiny_data_dir), "--quiet",
            "--json", str(tmp_path / "eval.json")]
    capsys.readouterr()
    assert main(args) == 0
    assert "PASS: onnxruntime vs pytorch" in capsys.readouterr().out
    exact = OrtPredictor.predict
    monkeypatch.setattr(OrtPredictor, "predict", lambda self, x: np.roll(exact(self, x), 1, axis=1))  # drifted
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "PARITY FAILURE: onnxruntime vs pytorch" in captured.out
    assert captured.err.strip().splitlines() == [
        "optcv evaluate: 1 backend(s) outside their parity tolerance: onnxruntime"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert [v["passed"] for v in saved["parity"]] == [False]


def test_an_output_path_that_cannot_be_written_is_a_one_line_error(compared, tiny_data_dir, tmp_path):
    """A folder that cannot be made and an output folder that is a file: one line, exit 2, nothing written;
    --debug shows the traceback. (As root chmod does not stop a write, so /proc stands for read-only.)"""
    unwritable = optcv("export", str(compared / "SGD" / "seed-0" / "model.pt"), "-o", "/proc/optcv-test/x.onnx")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    into_file = ["compare", "--data-dir", str(tiny_data_dir), "--epochs", "1", "--out", str(blocker), "--quiet"]
    as_file = optcv(*into_file)
    for result, path in ((unwritable, "/proc/optcv-test"), (as_file, str(blocker))):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert path in result.stderr and "choose another path" in result.stderr
    assert blocker.read_text() == "not a folder"
    debug = optcv("--debug", *into_file)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def _as_from_a_terminal() -> None:
    """Ctrl-C's default disposition: a CI job started in the background inherits SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


INTERRUPTED_WITH_A_THREAD_LEFT = """
import threading
import optcv.cli.commands.cache as command

def run(args):
    # As Optuna's heartbeat after a Ctrl-C inside its __enter__: a non-daemon thread nobody will stop.
    threading.Thread(target=threading.Event().wait, name="left-running").start()
    raise KeyboardInterrupt

command.run = run
from optcv.cli import run_cli
run_cli(["cache", "info"])
"""


def _interrupted_command(script: str) -> tuple[subprocess.CompletedProcess, float]:
    """`script` (a patched optcv command) in a fresh interpreter started as from a terminal; and its seconds."""
    import time

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=_as_from_a_terminal)
    return done, time.monotonic() - started


def test_ctrl_c_ends_the_process_even_with_a_thread_left_running():
    done, seconds = _interrupted_command(INTERRUPTED_WITH_A_THREAD_LEFT)
    assert done.returncode == 130, done.stderr
    assert "interrupted; finished work is saved" in done.stderr and "Traceback" not in done.stderr
    assert seconds < 30  # imports, then the 2 s grace: never the thread's forever


SWALLOWED_BY_A_FINALISER = """
import time
import weakref
import optcv.cli.commands.cache as command

class Thing:
    pass

def run(args):
    # As a Ctrl-C that lands in a weakref callback the garbage collector runs (SQLAlchemy has several): Python
    # prints "Exception ignored" and drops it. Then the command goes on working for 20 s.
    def callback(_ref):
        raise KeyboardInterrupt
    thing = Thing()
    keep = weakref.ref(thing, callback)
    del thing
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sum(range(1000))
    return 0

command.run = run
from optcv.cli import run_cli
run_cli(["cache", "info"])
"""


def test_ctrl_c_swallowed_by_a_finaliser_still_ends_the_command():
    done, seconds = _interrupted_command(SWALLOWED_BY_A_FINALISER)
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "interrupted; finished work is saved" in done.stderr and "Exception ignored" not in done.stderr
    assert seconds < 15  # not the 20 s of work the interrupt was meant to stop


def _every_command() -> list[list[str]]:
    from optcv.cli import build_parser

    commands = []
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        for name, parser in action.choices.items():
            commands.append([name])
            for sub in parser._subparsers._group_actions if parser._subparsers else ():
                commands += [[name, child] for child in sub.choices]
    return commands


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_every_commands_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: optcv" in capsys.readouterr().out
