"""A user's own models, declared in their repository: read, refused field by field, built and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optcv.cli import main
from optcv.declared.build import build_torch_model, check_model
from optcv.declared.config import DeclarationError, find_declarations, load_declarations
from optcv.declared.inputs import labelled_inputs, sample_inputs, synthetic_inputs
from optcv.history.store import HistoryStore
from optcv.runtime import BACKENDS
from tests.user_repo import TINY, write_images, write_labelled, write_onnx, write_user_repo


def _load(path):
    return load_declarations(path, known_backends=tuple(BACKENDS))


def test_a_declaration_is_read_with_its_defaults_and_paths_from_its_own_folder(tmp_path):
    path = write_user_repo(tmp_path / "repo", TINY + 'labels = "val"\n')
    write_labelled(tmp_path / "repo" / "val", classes=5)
    model = _load(path)["tiny"]
    assert model.factory == "usernets.nets:build" and model.kwargs == {"classes": 5}
    assert model.input.shape == (3, 16, 16) and model.input.value_range == (0.0, 1.0)
    assert model.batch_sizes == (1, 4) and model.threads == (1,) and model.reference_backend == "pytorch"
    assert model.labels == (tmp_path / "repo" / "val").resolve()
    (tmp_path / "repo" / "src" / "deep").mkdir(parents=True)
    assert find_declarations(tmp_path / "repo" / "src" / "deep") == path.resolve()
    (tmp_path / "repo" / "optcv.toml").write_text(TINY.replace("tool.optcv.", ""))
    assert find_declarations(tmp_path / "repo") == (tmp_path / "repo" / "optcv.toml").resolve()


def test_a_pyproject_without_an_optcv_table_declares_nothing(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_declarations(tmp_path) is None


@pytest.mark.parametrize("change, field, fix", [
    (lambda t: t.replace('factory = "usernets.nets:build"\n', ""), "exactly one of", "onnx"),
    (lambda t: t.replace("usernets.nets:build", "usernets.nets.build"), "factory", "package.module:callable"),
    (lambda t: t.replace("kwargs = { classes = 5 }", "kwargs = 5"), "kwargs", "table"),
    (lambda t: t.replace("shape = [3, 16, 16]", "shape = [3, -16, 16]"), "input.shape", ">= 1"),
    (lambda t: t.replace('dtype = "float32"', 'dtype = "complex64"'), "input.dtype", "choose from"),
    (lambda t: t.replace(", std = [0.25, 0.25, 0.25]", ""), "input.mean", "go together"),
    (lambda t: t.replace("mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]").replace(
        "std = [0.25, 0.25, 0.25]", "std = [0.25, 0.25]"), "input.mean", "one per channel"),
    (lambda t: t.replace('dtype = "float32", ', 'dtype = "float32", range = [1, 0], '), "input.range", "low < high"),
    (lambda t: t.replace("input = {", "inputs = {"), "inputs", "the fields are"),
    (lambda t: t.replace('"onnxruntime"]', '"tensorrt"]'), "backends", "choose from"),
    (lambda t: t.replace("batch_sizes = [1, 4]", "batch_sizes = []"), "batch_sizes", "non-empty"),
    (lambda t: t + "tolerances = { openvino = 1e-3 }\n", "tolerances.openvino", "does not list"),
    (lambda t: t + 'weights = "nowhere.pt"\n', "weights", "does not exist"),
    (lambda t: t + 'labels = "no-such-folder"\n', "labels", "not a folder"),
    (lambda t: t.replace("input = { ", 'input = { samples = "empty", '), "input.samples", "holds no"),
    (lambda t: t.replace("input = { ", 'input = { resize = 20, '), "input.resize", "sample images only"),
    (lambda t: t.replace("tool.optcv.models.tiny", "tool.optcv.model.tiny"), "unknown key 'model'", "models.NAME"),
])
def test_a_malformed_declaration_is_refused_naming_the_field_and_the_fix(tmp_path, change, field, fix):
    (tmp_path / "empty").mkdir()
    path = write_user_repo(tmp_path, change(TINY))
    with pytest.raises(DeclarationError) as refused:
        _load(path)
    message = str(refused.value)
    assert str(path) in message and field in message and fix in message, message
    assert "\n" not in message


def test_synthetic_inputs_are_reproducible_in_their_range_and_normalised(tmp_path):
    spec = _load(write_user_repo(tmp_path))["tiny"].input
    first, again = synthetic_inputs(spec, 8, seed=3), synthetic_inputs(spec, 8, seed=3)
    assert first.dtype == np.float32 and first.shape == (8, 3, 16, 16) and np.array_equal(first, again)
    assert first.min() >= (0 - 0.5) / 0.25 and first.max() <= (1 - 0.5) / 0.25 and first.std() > 1
    raw = _load(write_user_repo(tmp_path, TINY.replace('dtype = "float32", mean = [0.5, 0.5, 0.5], '
                                                       'std = [0.25, 0.25, 0.25]', 'dtype = "uint8"')))["tiny"].input
    pixels = synthetic_inputs(raw, 64)
    assert pixels.dtype == np.uint8 and pixels.max() > 200 and pixels.min() < 50


def test_sample_and_labelled_images_are_resized_cropped_and_normalised_as_declared(tmp_path):
    write_images(tmp_path / "samples", 3, size=(40, 20))
    path = write_user_repo(tmp_path, TINY.replace("input = { ", 'input = { samples = "samples", resize = 16, '))
    spec = _load(path)["tiny"].input
    inputs = sample_inputs(spec, 5)
    assert inputs.shape == (5, 3, 16, 16) and inputs.dtype == np.float32
    assert np.array_equal(inputs[0], inputs[3])  # three images, repeated in name order
    assert -2.0 <= inputs.min() and inputs.max() <= 2.0  # (x/255 - 0.5) / 0.25
    images, labels, classes = labelled_inputs(spec, write_labelled(tmp_path / "val", classes=3, per_class=2))
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert classes == ("class0", "class1", "class2")


def test_a_declared_factory_is_built_from_the_users_tree_with_its_weights(tmp_path):
    path = write_user_repo(tmp_path)
    model = _load(path)["tiny"]
    net = build_torch_model(model)
    weights = {k: torch.full_like(v, 0.01) for k, v in net.state_dict().items()}
    torch.save(weights, tmp_path / "w.pt")
    weighted = build_torch_model(_load(write_user_repo(tmp_path, TINY + 'weights = "w.pt"\n'))["tiny"])
    assert all(torch.equal(v, weighted.state_dict()[k]) for k, v in weights.items())
    check = check_model(model)
    assert (check.classes, check.parameters, check.reference) == (5, sum(p.numel() for p in net.parameters()),
                                                                 "pytorch")


@pytest.mark.parametrize("change, says", [
    (lambda t: t.replace("usernets.nets:build", "usernets.gone:build"), "does not import"),
    (lambda t: t.replace("usernets.nets:build", "usernets.nets:nothing"), "has no callable"),
    (lambda t: t.replace("usernets.nets:build", "usernets.nets:broken"), "raised RuntimeError: the factory is broken"),
    (lambda t: t.replace("shape = [3, 16, 16]", "shape = [1, 16, 16]").replace(
        "mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25]", "mean = [0.5], std = [0.25]"),
     "rejects the declared input"),
    (lambda t: t + 'labels = "val"\n', "3 class folders but the model returns 5 logits"),
])
def test_a_declaration_that_cannot_be_built_is_refused_with_what_went_wrong(tmp_path, change, says):
    write_labelled(tmp_path / "val", classes=3, per_class=1)
    model = _load(write_user_repo(tmp_path, change(TINY)))["tiny"]
    with pytest.raises(DeclarationError, match=says):
        check_model(model)


def test_an_onnx_only_model_is_checked_against_its_declared_input(tmp_path):
    write_onnx(tmp_path / "plain.onnx")
    declared = ('[tool.optcv.models.plain]\nonnx = "plain.onnx"\n'
                'input = { shape = [3, 16, 16] }\nbackends = ["onnxruntime", "openvino"]\n')
    check = check_model(_load(write_user_repo(tmp_path, declared))["plain"])
    assert (check.classes, check.parameters, check.reference) == (5, None, "onnxruntime")
    other = _load(write_user_repo(tmp_path, declared.replace("[3, 16, 16]", "[3, 8, 8]")))["plain"]
    with pytest.raises(DeclarationError, match=r"takes float \['N', 3, 16, 16\].*declared input is float32"):
        check_model(other)
    with pytest.raises(DeclarationError, match="no PyTorch code"):
        _load(write_user_repo(tmp_path, declared.replace('["onnxruntime"', '["pytorch", "onnxruntime"')))


def test_cli_models_lists_what_it_built_and_refuses_a_bad_declaration_in_one_line(tmp_path, capsys, monkeypatch):
    path = write_user_repo(tmp_path)
    assert main(["models", "--declarations", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| tiny " in out and "float32 [N, 3, 16, 16]" in out and " 5 | 137 " in out
    monkeypatch.chdir(tmp_path)
    assert main(["models", "tiny"]) == 0
    assert main(["models", "other"]) == 2
    assert "no model 'other' is declared" in capsys.readouterr().err
    write_user_repo(tmp_path, TINY.replace("usernets.nets:build", "usernets.nets:broken"))
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the factory is broken" in err[0] and "Traceback" not in err[0]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts)


def test_evaluate_holds_every_backend_to_the_reference_and_writes_nothing_into_the_users_repository(
        tmp_path, capsys):
    path = write_user_repo(tmp_path / "repo", TINY.replace('backends = ["pytorch", "onnxruntime"]',
                                                           'backends = ["pytorch", "onnxruntime", "onnxruntime-int8"]'))
    before = _files(tmp_path / "repo")
    assert main(["evaluate", "tiny", "--declarations", str(path)]) == 0
    out = capsys.readouterr().out
    assert "on 64 synthetic inputs" in out
    assert "PASS: onnxruntime vs pytorch on 64 inputs: top-1 agrees on 100.0 %" in out
    assert "PASS: onnxruntime-int8 vs pytorch" in out and "98 % of inputs" in out
    assert _files(tmp_path / "repo") == before


def test_a_labelled_folder_gives_per_class_parity_under_the_class_names(tmp_path, capsys):
    write_labelled(tmp_path / "val", classes=5, per_class=2)
    path = write_user_repo(tmp_path, TINY + 'labels = "val"\n')
    assert main(["evaluate", "tiny", "--declarations", str(path), "--backends", "pytorch", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "class4" in out and "PASS: onnxruntime vs pytorch on 10 images" in out


def test_an_edited_forward_is_exported_again_and_an_unchanged_one_is_not(tmp_path):
    from optcv.runtime import declared_source

    path = write_user_repo(tmp_path)
    first = declared_source(_load(path)["tiny"]).onnx
    assert declared_source(_load(path)["tiny"]).onnx == first
    nets = tmp_path / "usernets" / "nets.py"
    nets.write_text(nets.read_text().replace("self.conv(x).relu()", "self.conv(x).relu().exp()"))
    import importlib
    import sys

    for name in [m for m in sys.modules if m.startswith("usernets")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    assert declared_source(_load(path)["tiny"]).onnx != first


def test_an_onnx_only_model_runs_on_onnx_backends_and_refuses_pytorch(tmp_path, capsys):
    write_onnx(tmp_path / "plain.onnx")
    path = write_user_repo(tmp_path, '[tool.optcv.models.plain]\nonnx = "plain.onnx"\n'
                                     'input = { shape = [3, 16, 16] }\nbackends = ["onnxruntime", "openvino"]\n')
    assert main(["evaluate", "plain", "--declarations", str(path)]) == 0
    assert "PASS: openvino vs onnxruntime" in capsys.readouterr().out
    assert main(["evaluate", "plain", "--declarations", str(path), "--backends", "onnxruntime", "pytorch"]) == 2
    assert "declare a factory" in capsys.readouterr().err


class _Fixed:
    def __init__(self, name, logits):
        self.name, self.logits = name, logits

    def predict(self, inputs):
        return self.logits[: len(inputs)]


def test_agreement_fails_a_backend_that_changes_one_class_in_fp32_but_allows_int8_its_two_percent():
    from optcv.measure.parity import agreement_on_inputs

    reference = np.tile(np.array([[2.0, 1.0, 0.0]], np.float32), (100, 1))
    one_flipped = reference.copy()
    one_flipped[0] = [0.0, 1.0, 2.0]
    inputs = np.zeros((100, 1), np.float32)
    fp32, int8 = agreement_on_inputs([_Fixed("pytorch", reference), _Fixed("onnxruntime", one_flipped),
                                      _Fixed("onnxruntime-int8", one_flipped)], inputs, batch_size=100)
    assert (fp32.n_disagree, fp32.passed, int8.passed) == (1, False, True)
    near = reference + np.float32(1e-3)
    [judged] = agreement_on_inputs([_Fixed("pytorch", reference), _Fixed("openvino", near)], inputs,
                                   {"openvino": 1e-4}, batch_size=100)
    assert judged.n_disagree == 0 and not judged.passed and abs(judged.max_abs_diff - 1e-3) < 1e-6


def test_export_writes_a_declared_models_onnx_and_int8_twin_that_onnx_runtime_runs_on_its_input(tmp_path, capsys):
    import onnxruntime as ort

    path = write_user_repo(tmp_path / "repo")
    out = tmp_path / "out" / "tiny.onnx"
    out.parent.mkdir()
    assert main(["export", "tiny", "--declarations", str(path), "-o", str(out), "--int8",
                 "--calibration-images", "16"]) == 0
    assert "input 'images' float32 [N, 3, 16, 16]" in capsys.readouterr().out
    for model in (out, out.with_suffix(".int8.onnx")):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"images": synthetic_inputs(_load(path)["tiny"].input, 3)})[0]
        assert logits.shape == (3, 5)


def test_the_tutorials_full_declaration_is_read_and_built_as_it_stands(tmp_path, capsys):
    import re
    from pathlib import Path

    tutorial = (Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "your-model.md").read_text("utf-8")
    section = tutorial[tutorial.index("\n## What a declaration can say\n"):]
    declaration = re.search(r"```toml\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "vision.py").write_text(
        "import torchvision\n\n\ndef build_resnet50(num_classes=1000):\n"
        "    return torchvision.models.resnet50(num_classes=num_classes)\n")
    import torchvision

    (tmp_path / "weights").mkdir()
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), tmp_path / "weights" / "resnet50.pt")
    write_labelled(tmp_path / "data" / "val", classes=10, per_class=1)
    (tmp_path / "models").mkdir()
    write_onnx(tmp_path / "models" / "head.onnx", shape=(3, 224, 224), classes=4)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "their-app"\n\n' + declaration)
    # --no-backends: an ImageNet-sized export and int8 calibration would take minutes in a unit test.
    assert main(["models", "--no-backends", "--declarations", str(tmp_path / "pyproject.toml")]) == 0
    out = capsys.readouterr().out
    assert "| resnet50 " in out and "| detector-head " in out and "23,528,522" in out, out


def test_bench_times_a_declared_model_on_its_own_inputs_with_its_limits(tmp_path, capsys):
    import json

    path = write_user_repo(tmp_path / "repo")
    out = tmp_path / "bench.json"
    history = tmp_path / "history.sqlite"
    assert main(["bench", "tiny", "--declarations", str(path), "--no-calibrate", "--threads", "1", "-n", "40",
                 "--chunk", "20", "--batch-sizes", "4", "--json", str(out), "--quiet", "--history", str(history)]) == 0
    with HistoryStore(history) as store:  # the run was recorded, at the commit it ran in, with its intervals
        (run,) = store.runs()
    assert run.record.kind == "bench" and run.record.commit and len(run.record.machine.key) == 12
    latency = next(m for m in run.record.measurements if m.case == "tiny/onnxruntime/b1")
    assert latency.n == 40 and latency.low <= latency.value <= latency.high
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and set(result["backends"]) == {"pytorch", "onnxruntime"}
    # the MACs counted on the declared input: a 3x3 convolution 3 -> 4 channels at 16x16, then a 4 -> 5 linear layer
    assert result["limits"]["macs_per_image"] == 16 * 16 * 4 * 3 * 9 + 4 * 5
    assert "| onnxruntime" in capsys.readouterr().out


def test_how_fast_measures_a_declared_model_beside_no_reference_one(tmp_path, capsys):
    path = write_user_repo(tmp_path / "repo")
    out = tmp_path / "hf"
    assert main(["how-fast", "--models", "tiny", "--declarations", str(path), "--backends", "pytorch", "onnxruntime",
                 "openvino", "--batch-size", "4", "--seconds", "0.05", "--out", str(out), "--quiet",
                 "--no-history"]) == 0
    table = (out / "how-fast.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and all("| —" in row for row in rows)  # openvino is not among its backends
    write_onnx(tmp_path / "repo" / "plain.onnx")
    (tmp_path / "repo" / "optcv.toml").write_text(
        '[models.plain]\nonnx = "plain.onnx"\ninput = { shape = [3, 16, 16] }\nbackends = ["onnxruntime"]\n')
    assert main(["how-fast", "--models", "plain", "--declarations", str(tmp_path / "repo" / "optcv.toml"),
                 "--out", str(out)]) == 2
    assert "declare a factory" in capsys.readouterr().err


DOUBLE = TINY.replace('dtype = "float32"', 'dtype = "float64"').replace(
    'backends = ["pytorch", "onnxruntime"]',
    'backends = ["pytorch", "onnxruntime", "onnxruntime-int8", "openvino", "torch-compile"]')


def test_a_backend_that_cannot_run_the_models_dtype_is_left_out_and_the_others_run(tmp_path, capsys):
    """A float64 network: ONNX Runtime has no float64 convolution on the CPU (nor can it calibrate the int8 twin),
    and torch.compile's oneDNN weight packing takes no doubles; PyTorch and OpenVINO run it."""
    # A package of its own: this process has imported usernets (float32) for the tests before.
    path = write_user_repo(tmp_path / "repo", DOUBLE.replace("usernets.nets:build", "doublenets.nets:build"))
    (path.parent / "usernets").rename(path.parent / "doublenets")
    nets = path.parent / "doublenets" / "nets.py"
    nets.write_text(nets.read_text().replace("return Tiny(classes, width)", "return Tiny(classes, width).double()"))
    assert main(["models", "--declarations", str(path)]) == 0
    out = capsys.readouterr().out
    unavailable = out.split("Unavailable for their model", 1)[1]
    assert "- onnxruntime for tiny: " in unavailable and "NOT_IMPLEMENTED" in unavailable
    assert "- onnxruntime-int8 for tiny: " in unavailable and "- torch-compile for tiny: " in unavailable
    assert "openvino" not in unavailable and "pytorch" not in unavailable
    assert main(["bench", "tiny", "--declarations", str(path), "--no-calibrate", "--threads", "1", "-n", "20",
                 "--chunk", "10", "--batch-sizes", "4", "--quiet", "--no-history"]) == 0
    captured = capsys.readouterr()
    left_out = [line.split(":")[0] for line in captured.err.splitlines() if "unavailable for this model" in line]
    assert left_out == ["onnxruntime", "onnxruntime-int8", "torch-compile"], captured.err
    timed = {line.split("|")[1].strip() for line in captured.out.splitlines() if line.startswith("| ")}
    assert {"pytorch", "openvino"} <= timed and not timed & {"onnxruntime", "onnxruntime-int8", "torch-compile"}
