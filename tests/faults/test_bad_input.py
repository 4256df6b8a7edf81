"""Bad input to every command: one line on stderr naming the thing and the fix, exit 2, no traceback, nothing
half-written. Each row builds its fault in a fresh folder, runs the CLI in this process, and checks all four."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from optcv.backends.onnx_export import export_onnx
from optcv.cli import main
from optcv.env import machine_fingerprint
from optcv.gate.ratio import BASELINE_SCHEMA
from optcv.measure.latency import RESULT_SCHEMA
from optcv.training.models import Checkpoint, TunableNetConfig, TutorialNetConfig, build_model, save_checkpoint
from tests.user_repo import TINY, write_labelled, write_onnx, write_user_repo


@dataclass(frozen=True)
class Files:
    """The valid inputs a fault is made from."""

    data: Path
    tutorial: Path  # a checkpoint with its export beside it (tutorial.onnx)
    tunable: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("valid")
    data = make_image_folder(folder / "data", train_per_class=4, test_per_class=2)
    checkpoints = {}
    for name, config in (("tutorial", TutorialNetConfig()),
                         ("tunable", TunableNetConfig(conv_channels=4, hidden_units=(8,), dropouts=(0.0,)))):
        path = save_checkpoint(folder / f"{name}.pt", Checkpoint(config, build_model(config, seed=0).state_dict()))
        export_onnx(path, path.with_suffix(".onnx"))
        checkpoints[name] = path
    return Files(data, checkpoints["tutorial"], checkpoints["tunable"])


# ---- the faults: each takes (valid files, a fresh folder) and returns the argv -------------------------------


def _data(tmp: Path, change: Callable[[Path], object]) -> str:
    root = make_image_folder(tmp / "cifar", train_per_class=3, test_per_class=2)
    change(root)
    return str(root)


def _empty_folder(path: Path) -> str:
    path.mkdir()
    return str(path)


def _compare_on(data_dir: str, tmp: Path) -> list[str]:
    return ["compare", "--data-dir", data_dir, "--epochs", "1", "--out", str(tmp / "out"), "--quiet"]


def _write_image(path: Path, size: tuple[int, int], mode: str) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).convert(mode).save(path)


def _symlink_loop(root: Path) -> None:
    os.symlink(root / "train" / "cat" / "loop.png", root / "train" / "cat" / "loop.png")


def _truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def _edited_checkpoint(src: Path, dst: Path, edit: Callable[[dict], object]) -> str:
    raw = torch.load(src, weights_only=True)
    edit(raw)
    torch.save(raw, dst)
    return str(dst)


def _declared(tmp: Path, change: Callable[[str], str],
              prepare: Callable[[Path], object] = lambda root: None) -> list[str]:
    """`optcv models` on a user's repository whose declaration `change` spoiled."""
    prepare(tmp)
    return ["models", "--declarations", str(write_user_repo(tmp / "repo", change(TINY)))]


def _one_channel(declaration: str) -> str:
    return (declaration.replace("shape = [3, 16, 16]", "shape = [1, 16, 16]").replace("[0.5, 0.5, 0.5]", "[0.5]")
            .replace("[0.25, 0.25, 0.25]", "[0.25]"))


def _onnx_in_repo(tmp: Path) -> None:
    (tmp / "repo").mkdir(parents=True, exist_ok=True)
    write_onnx(tmp / "repo" / "plain.onnx", shape=(3, 16, 16))


PLAIN = '[tool.optcv.models.plain]\nonnx = "plain.onnx"\ninput = { shape = [3, 8, 8] }\nbackends = ["onnxruntime"]\n'


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): a checkpoint crafted to run code on load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _crafted(f: Files, tmp: Path) -> list[str]:
    path = tmp / "crafted.pt"
    torch.save({"format": 1, "arch": "tutorial", "payload": _RunsCode(tmp / "code-ran")}, path)
    return ["export", str(path), "-o", str(tmp / "x.onnx")]


def _other_inputs_onnx(tmp: Path) -> str:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    path = tmp / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return str(path)


def _mismatched_pair(f: Files, tmp: Path) -> list[str]:
    checkpoint = _copy(f.tutorial, tmp / "pair" / "model.pt")
    _copy(f.tunable.with_suffix(".onnx"), tmp / "pair" / "model.onnx")
    return ["evaluate", str(checkpoint), "--data-dir", str(f.data), "--quiet"]


def _json_file(tmp: Path, name: str, content: object) -> str:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _gate_files(tmp: Path, results: object, baseline: object) -> list[str]:
    return ["gate", _json_file(tmp, "results.json", results), "--baseline", _json_file(tmp, "baseline.json", baseline)]


RATIOS = {"schema": BASELINE_SCHEMA, "machines": [{"fingerprint": machine_fingerprint(),
                                                  "ratios": {"tutorial:pytorch/onnxruntime": {"ratio": 4.0}}}]}
OTHER_MACHINE = {"schema": BASELINE_SCHEMA, "machines": [{"fingerprint": {**machine_fingerprint(), "cpu": "Other CPU"},
                                                         "ratios": RATIOS["machines"][0]["ratios"]}]}
BENCH = {"schema": RESULT_SCHEMA, "model": "tutorial",
         "ratios": {"pytorch/onnxruntime": {"ratio": 4.0, "ci_low": 3.9, "ci_high": 4.1}}}
NO_RATIO_KEY = {"schema": BASELINE_SCHEMA, "machines": [{"fingerprint": machine_fingerprint(),
                                                        "ratios": {"tutorial:pytorch/onnxruntime": {"ci": [3.9]}}}]}


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Files, Path], list[str]]
    names: str  # the message must name this (a path's tail, a flag, a value)
    fix: str  # … and say this much of what to do


def case(id: str, argv: Callable[[Files, Path], list[str]], names: str, fix: str) -> Case:
    return Case(id, argv, names, fix)


CASES = [
    # ---- flags, every command
    case("compare/negative-epochs", lambda f, t: ["compare", "--epochs", "-1"], "--epochs", "at least 1"),
    case("compare/batch-size-0", lambda f, t: ["compare", "--batch-size", "0"], "--batch-size", "at least 1"),
    case("compare/seeds-0", lambda f, t: ["compare", "--seeds", "0"], "--seeds", "at least 1"),
    case("compare/unknown-optimizer", lambda f, t: ["compare", "--optimizers", "Lion", "--data-dir", str(f.data)],
         "Lion", "choose from"),
    case("compare/lr-without-value", lambda f, t: ["compare", "--lr", "SGD"], "--lr", "OPTIMIZER=VALUE"),
    case("compare/lr-not-a-number", lambda f, t: ["compare", "--lr", "SGD=fast"], "fast", "number"),
    case("compare/lr-negative", lambda f, t: ["compare", "--lr", "SGD=-0.1"], "-0.1", "positive"),
    case("compare/train-size-above-data", lambda f, t: [*_compare_on(str(f.data), t), "--train-size", "100000"],
         "100000", "choose 1.."),
    case("compare/unknown-flag", lambda f, t: ["compare", "--epoch", "2", "--bogus"], "--bogus", "--help"),
    case("tune/inverted-lr-range", lambda f, t: ["tune", "--data-dir", str(f.data), "--lr-range", "0.1", "0.001",
                                                 "--out", str(t / "t")], "0.1", "LOW at most HIGH"),
    case("tune/inverted-layers", lambda f, t: ["tune", "--data-dir", str(f.data), "--n-layers", "3", "1",
                                               "--out", str(t / "t")], "3", "LOW at most HIGH"),
    case("tune/dropout-out-of-range", lambda f, t: ["tune", "--data-dir", str(f.data), "--dropout", "0.1", "1.5",
                                                    "--out", str(t / "t")], "1.5", "dropout"),
    case("tune/lr-range-zero", lambda f, t: ["tune", "--lr-range", "0", "0.1"], "--lr-range", "positive"),
    case("tune/unknown-pruner", lambda f, t: ["tune", "--pruner", "random"], "random", "choose from"),
    case("tune/unknown-optimizer", lambda f, t: ["tune", "--data-dir", str(f.data), "--optimizers", "Lion",
                                                 "--out", str(t / "t")], "Lion", "choose from"),
    case("tune/val-size-above-train", lambda f, t: ["tune", "--data-dir", str(f.data), "--train-size", "20",
                                                    "--val-size", "40", "--out", str(t / "t"), "--quiet"],
         "40", "choose"),
    case("tune/trials-0", lambda f, t: ["tune", "--trials", "0"], "--trials", "at least 1"),
    case("tune/show-without-study", lambda f, t: ["tune", "--show", "--out", str(t / "none")], "none",
         "optcv tune --out"),
    case("export/opset-0", lambda f, t: ["export", str(f.tutorial), "--opset", "0"], "--opset", "at least 1"),
    case("export/atol-negative", lambda f, t: ["export", str(f.tutorial), "--atol", "-1"], "--atol", "positive"),
    case("evaluate/unknown-backend", lambda f, t: ["evaluate", str(f.tutorial), "--backends", "tensorrt"],
         "tensorrt", "choose from"),
    case("evaluate/test-size-above-data", lambda f, t: ["evaluate", str(f.tutorial), "--data-dir", str(f.data),
                                                        "--test-size", "50000", "--quiet"], "50000", "choose 1.."),
    case("evaluate/not-a-model-file", lambda f, t: ["evaluate", _json_file(t, "model.txt", "x")], "model.txt",
         ".onnx"),
    case("bench/missing-model", lambda f, t: ["bench", str(t / "gone.pt")], "gone.pt", "check the path"),
    case("bench/n-0", lambda f, t: ["bench", str(f.tutorial), "-n", "0"], "-n", "at least 1"),
    case("bench/batch-size-0", lambda f, t: ["bench", str(f.tutorial), "--batch-sizes", "0"], "--batch-sizes",
         "at least 1"),
    case("bench/threads-0", lambda f, t: ["bench", str(f.tutorial), "--threads", "0"], "--threads", "at least 1"),
    case("gate/unknown-model", lambda f, t: ["gate", "--models", "vgg"], "vgg", "choose from"),
    case("gate/case-seconds-0", lambda f, t: ["gate", "--case-seconds", "0"], "--case-seconds", "positive"),
    case("gate/unknown-revision", lambda f, t: ["gate", "--against", "no-such-rev-xyz", "--data-dir", str(f.data)],
         "no-such-rev-xyz", "revision"),
    case("gate/base-python-missing", lambda f, t: ["gate", "--base-python", str(t / "no-python"),
                                                   "--data-dir", str(f.data)], "no-python", "interpreter"),
    case("run/unknown-preset", lambda f, t: ["run", "--preset", "huge", "--out", str(t / "r")], "huge",
         "choose from"),
    case("run/set-without-value", lambda f, t: ["run", "--set", "compare.epochs", "--out", str(t / "r")],
         "compare.epochs", "SECTION.FIELD=VALUE"),
    case("run/set-unknown-field", lambda f, t: ["run", "--set", "compare.speed=2", "--out", str(t / "r")],
         "compare.speed", "valid at this level"),
    case("run/set-negative-epochs", lambda f, t: ["run", "--set", "compare.epochs=-1", "--out", str(t / "r")],
         "compare.epochs", "at least 1"),
    case("run/set-not-a-number", lambda f, t: ["run", "--set", "tune.trials=many", "--out", str(t / "r")],
         "tune.trials", "whole number"),
    case("run/workers-0", lambda f, t: ["run", "--workers", "0"], "--workers", "at least 1"),
    case("how-fast/unknown-model", lambda f, t: ["how-fast", "--models", "vgg"], "vgg", "choose from"),
    case("cache/unknown-area", lambda f, t: ["cache", "clear", "--areas", "everything"], "everything",
         "choose from"),
    case("unknown-command", lambda f, t: ["train"], "train", "choose from"),
    case("export/missing-checkpoint-argument", lambda f, t: ["export"], "checkpoint", "--help"),
    case("evaluate/missing-model-argument", lambda f, t: ["evaluate", "--quiet"], "models", "--help"),
    case("cache/missing-action", lambda f, t: ["cache"], "action", "--help"),
    # ---- data folders
    case("data/missing", lambda f, t: _compare_on(str(t / "nowhere"), t), "nowhere", "--data-dir"),
    case("data/empty", lambda f, t: _compare_on(_empty_folder(t / "empty"), t), "empty", "--data-dir"),
    case("data/no-test-split", lambda f, t: _compare_on(_data(t, lambda r: shutil.rmtree(r / "test")), t),
         "test", "--data-dir"),
    case("data/missing-class", lambda f, t: _compare_on(_data(t, lambda r: shutil.rmtree(r / "train" / "cat")), t),
         "cat", "each split needs"),
    case("data/extra-class", lambda f, t: _compare_on(_data(t, lambda r: (r / "train" / "unicorn").mkdir()), t),
         "unicorn", "must be exactly"),
    case("data/empty-class", lambda f, t: _compare_on(_data(t, lambda r: [p.unlink() for p in
                                                                          (r / "test" / "dog").iterdir()]), t),
         "dog", "holds no"),
    case("data/truncated-image", lambda f, t: _compare_on(_data(t, lambda r: _truncate(
        r / "train" / "frog" / "0001.png", 60)), t), "0001.png", "remove or replace"),
    case("data/not-an-image", lambda f, t: _compare_on(_data(t, lambda r: (r / "train" / "ship" / "0000.png")
                                                             .write_text("not a picture")), t), "0000.png",
         "remove or replace"),
    case("data/wrong-size", lambda f, t: _compare_on(_data(t, lambda r: _write_image(
        r / "test" / "bird" / "0000.png", (16, 16), "RGB")), t), "16x16", "resize or remove"),
    case("data/wrong-mode", lambda f, t: _compare_on(_data(t, lambda r: _write_image(
        r / "train" / "deer" / "0002.png", (32, 32), "L")), t), "mode L", "convert or remove"),
    case("data/symlink-loop", lambda f, t: _compare_on(_data(t, _symlink_loop), t), "loop.png", "remove or replace"),
    # ---- checkpoints
    case("checkpoint/missing", lambda f, t: ["export", str(t / "gone.pt")], "gone.pt", "optcv compare"),
    case("checkpoint/truncated", lambda f, t: ["export", str(_truncate(_copy(f.tutorial, t / "cut.pt"), 900))],
         "cut.pt", "not a readable"),
    case("checkpoint/not-a-checkpoint", lambda f, t: ["export", _json_file(t, "notes.pt", "hello")], "notes.pt",
         "not a readable"),
    case("checkpoint/other-architecture", lambda f, t: ["export", _edited_checkpoint(
        f.tutorial, t / "swapped.pt", lambda raw: raw.update(state_dict=torch.load(
            f.tunable, weights_only=True)["state_dict"]))], "swapped.pt", "do not fit"),
    case("checkpoint/tampered-config", lambda f, t: ["export", _edited_checkpoint(
        f.tunable, t / "tampered.pt", lambda raw: raw["config"].update(conv_channels=16))], "tampered.pt",
         "do not fit"),
    case("checkpoint/unknown-arch", lambda f, t: ["export", _edited_checkpoint(
        f.tutorial, t / "vgg.pt", lambda raw: raw.update(arch="vgg"))], "vgg", "choose one of"),
    case("checkpoint/crafted-to-run-code", _crafted, "crafted.pt", "not a readable"),
    # ---- ONNX models
    case("onnx/truncated", lambda f, t: ["evaluate", str(_truncate(_copy(f.tutorial.with_suffix(".onnx"),
                                                                          t / "cut.onnx"), 500)),
                                         "--backends", "onnxruntime", "--data-dir", str(f.data)], "cut.onnx",
         "export"),
    case("onnx/not-onnx", lambda f, t: ["evaluate", _json_file(t, "fake.onnx", "{}"), "--backends", "onnxruntime",
                                        "--data-dir", str(f.data)], "fake.onnx", "export"),
    case("onnx/other-inputs", lambda f, t: ["evaluate", _other_inputs_onnx(t), "--backends", "onnxruntime",
                                            "--data-dir", str(f.data)], "other.onnx", "optcv export"),
    case("onnx/not-the-checkpoints-export", _mismatched_pair, "model.onnx", "export it again"),
    case("onnx/pytorch-backend-without-checkpoint", lambda f, t: [
        "evaluate", str(_copy(f.tutorial.with_suffix(".onnx"), t / "alone.onnx")), "--data-dir", str(f.data)],
         "pytorch", "checkpoint"),
    # ---- results and baselines
    case("gate/results-missing", lambda f, t: ["gate", str(t / "r.json"), "--baseline", str(t / "b.json")],
         "r.json", "optcv bench MODEL --json"),
    case("gate/results-truncated", lambda f, t: _gate_files(t, json.dumps(BENCH)[:30], RATIOS), "results.json",
         "not valid JSON"),
    case("gate/results-other-schema", lambda f, t: _gate_files(t, {"schema": "pytest-benchmark"}, RATIOS),
         "pytest-benchmark", RESULT_SCHEMA),
    case("gate/baseline-missing-ratio-key", lambda f, t: _gate_files(t, BENCH, NO_RATIO_KEY), "ratio",
         "refresh"),
    case("gate/baseline-of-another-machine", lambda f, t: _gate_files(t, BENCH, OTHER_MACHINE), "Other CPU",
         "--ratio-save"),
    case("gate/baseline-missing", lambda f, t: ["gate", _json_file(t, "r.json", BENCH), "--baseline",
                                                str(t / "nope.json")], "nope.json", "--ratio-save"),
    case("gate/results-without-baseline", lambda f, t: ["gate", _json_file(t, "r.json", BENCH)], "--baseline",
         "ratios.json"),
    case("gate/thresholds-truncated", lambda f, t: ["gate", "--thresholds", _json_file(t, "th.json", "{\"sch"),
                                                    "--data-dir", str(f.data)], "th.json", "fix it"),
    # ---- Optuna storage
    case("tune/storage-unreachable", lambda f, t: [
        "tune", "--data-dir", str(f.data), "--storage", "postgresql+psycopg://nobody@127.0.0.1:9/optcv",
        "--out", str(t / "t"), "--trials", "1", "--quiet"], "127.0.0.1:9", "storage"),
    case("tune/storage-read-only", lambda f, t: [
        "tune", "--data-dir", str(f.data), "--storage", "sqlite:////proc/optcv/study.db", "--out", str(t / "t"),
        "--trials", "1", "--quiet"], "/proc/optcv", "storage"),
    case("tune/storage-unknown-scheme", lambda f, t: [
        "tune", "--data-dir", str(f.data), "--storage", "mongodb://localhost/x", "--out", str(t / "t"),
        "--trials", "1", "--quiet"], "mongodb", "storage"),
    # ---- output paths
    case("out/compare-into-a-file", lambda f, t: _compare_on(str(f.data), t)[:-3] + [
        "--out", _json_file(t, "taken", "x"), "--quiet"], "taken", "choose another path"),
    case("out/tune-under-proc", lambda f, t: ["tune", "--data-dir", str(f.data), "--out", "/proc/optcv/tune",
                                              "--trials", "1", "--quiet"], "/proc/optcv", "choose another path"),
    case("out/export-under-proc", lambda f, t: ["export", str(f.tutorial), "-o", "/proc/optcv/x.onnx"],
         "/proc/optcv", "choose another path"),
    case("out/evaluate-json-under-proc", lambda f, t: ["evaluate", str(f.tutorial), "--data-dir", str(f.data),
                                                       "--json", "/proc/optcv/e.json", "--quiet"], "/proc/optcv",
         "choose another path"),
    case("out/run-into-a-file", lambda f, t: ["run", "--data-dir", str(f.data), "--out", _json_file(t, "taken", "x"),
                                              "--quiet"], "taken", "choose another path"),
    case("how-fast/data-missing", lambda f, t: ["how-fast", "--out", str(t / "hf"), "--data-dir", str(t / "nowhere")],
         "nowhere", "--data-dir"),
    # ---- a user's own models, declared in their pyproject.toml
    case("declared/factory-does-not-import", lambda f, t: _declared(t, lambda d: d.replace(
        "usernets.nets:build", "usernets.gone:build")), "usernets.gone:build", "give a module importable"),
    case("declared/factory-raises", lambda f, t: _declared(t, lambda d: d.replace(
        "usernets.nets:build", "usernets.nets:broken")), "the factory is broken", "fix the factory"),
    case("declared/input-rejected", lambda f, t: _declared(t, _one_channel), "rejects the declared input",
         "set input.shape"),
    case("declared/onnx-input-differs", lambda f, t: _declared(t, lambda d: PLAIN, _onnx_in_repo), "plain.onnx",
         "declare the file's input"),
    case("declared/samples-missing", lambda f, t: _declared(t, lambda d: d.replace(
        "input = { ", 'input = { samples = "shots", ')), "input.samples", "give a folder"),
    case("declared/samples-empty", lambda f, t: _declared(t, lambda d: d.replace(
        "input = { ", 'input = { samples = "shots", '), lambda root: (root / "repo" / "shots").mkdir(parents=True)),
         "input.samples", "add some or remove samples"),
    case("declared/labels-other-class-count", lambda f, t: _declared(
        t, lambda d: d + 'labels = "val"\n', lambda root: write_labelled(root / "repo" / "val", 3, 1)),
         "3 class folders but the model returns 5 logits", "one sub-folder per class"),
    case("declared/paths-not-a-folder", lambda f, t: _declared(t, lambda d: d + 'paths = ["src"]\n'), "paths",
         "give the folder your package is in"),
    case("declared/unknown-model-name", lambda f, t: _declared(t, lambda d: d) + ["nope"], "nope", "declared: tiny"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("fault", CASES, ids=[c.id for c in CASES])
def test_bad_input(fault: Case, files: Files, tmp_path: Path, capsys, fault_tally) -> None:
    argv = fault.argv(files, tmp_path)
    valid_before, mine_before = _snapshot(files.data.parent), _snapshot(tmp_path)
    capsys.readouterr()
    fault_tally.bad_inputs += 1
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    except BaseException:
        fault_tally.tracebacks.append(f"{fault.id}: {traceback.format_exc().splitlines()[-1]}")
        raise
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert code == 2, err
    assert len(lines) == 1, err
    assert fault.names in lines[0] and fault.fix in lines[0], lines[0]
    assert _snapshot(files.data.parent) == valid_before  # the valid inputs untouched
    after = _snapshot(tmp_path)
    assert not [p for p in after if p.endswith(".tmp")], after  # nothing half-written
    assert {p: h for p, h in after.items() if p in mine_before} == mine_before
    assert not (tmp_path / "code-ran").exists()  # the crafted checkpoint ran nothing
