import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from optcv.backends.base import check_images
from optcv.backends.onnx_export import export_onnx, read_onnx_metadata
from optcv.backends.onnxruntime import OrtPredictor
from optcv.backends.pytorch import TorchPredictor
from optcv.errors import OptcvError
from optcv.runtime import ModelSource, candidate_predictors, make_predictor, resolve_sources
from optcv.training.models import (
    Checkpoint,
    TunableNetConfig,
    TutorialNet,
    TutorialNetConfig,
    build_model,
    save_checkpoint,
)


@pytest.fixture(scope="module", params=["tutorial", "tunable"])
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    config = (TutorialNetConfig() if request.param == "tutorial"
              else TunableNetConfig(conv_channels=8, hidden_units=(32, 16), dropouts=(0.3, 0.2)))
    save_checkpoint(folder / "m.pt", Checkpoint(config, build_model(config, seed=1).state_dict()))
    result = export_onnx(folder / "m.pt", folder / "m.onnx")
    return folder / "m.pt", folder / "m.onnx", result


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def test_export_passes_checker_and_carries_metadata(exported):
    checkpoint, path, result = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert result.max_abs_diff <= 1e-4
    assert [o.version for o in model.opset_import if o.domain == ""] == [20]
    meta = read_onnx_metadata(path)
    assert meta["classes"][0] == "airplane" and len(meta["classes"]) == 10
    assert set(meta["normalization"]) == {"mean", "std"}
    assert meta["opset"] == "20" and meta["optcv_version"]
    from optcv._io import sha256_file

    assert meta["source_checkpoint_sha256"] == sha256_file(checkpoint)
    assert not path.with_suffix(".onnx.data").exists()


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_ort_matches_pytorch_at_any_batch_size(exported, batch):
    checkpoint, path, _ = exported
    from optcv.training.models import load_checkpoint

    x = images(batch, seed=batch)
    with TorchPredictor(load_checkpoint(checkpoint)) as eager, OrtPredictor(path) as ort:
        torch_logits, ort_logits = eager.predict(x), ort.predict(x)
    assert ort_logits.shape == (batch, 10)
    np.testing.assert_allclose(ort_logits, torch_logits, rtol=1e-3, atol=1e-5)


def test_mkldnn_setting_does_not_change_results_or_leak(exported):
    from optcv.training.models import load_checkpoint

    checkpoint = load_checkpoint(exported[0])
    x = images(16)
    before = (torch.backends.mkldnn.enabled, torch.get_num_threads())
    with_onednn, without = TorchPredictor(checkpoint, 1, mkldnn=True), TorchPredictor(checkpoint, 2, mkldnn=False)
    a, b = with_onednn.predict(x), without.predict(x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert (torch.backends.mkldnn.enabled, torch.get_num_threads()) == (False, 2)  # the last user's, until closed
    with_onednn.close()
    assert (torch.backends.mkldnn.enabled, torch.get_num_threads()) == (False, 2)  # still in use by `without`
    without.close()
    assert (torch.backends.mkldnn.enabled, torch.get_num_threads()) == before


def test_consecutive_predictions_change_no_process_setting(exported, monkeypatch):
    from optcv.training.models import load_checkpoint

    checkpoint = load_checkpoint(exported[0])
    predictor, other = TorchPredictor(checkpoint, 1, mkldnn=True), TorchPredictor(checkpoint, 2)
    predictor.predict(images(1))
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    for _ in range(5):
        predictor.predict(images(1))
    assert calls == []  # not a setting flipped per call
    other.predict(images(1))
    predictor.predict(images(1))
    assert calls == [2, 1]  # only where another predictor ran in between
    predictor.close()
    other.close()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 32, 32, 3), np.uint8), r"got uint8 \(1, 32, 32, 3\) \(channels last\?"),
        (np.zeros((1, 3, 32, 32), np.float32), r"must be uint8 .* got float32"),
        (np.zeros((3, 32, 32), np.uint8), r"got uint8 \(3, 32, 32\)"),
        (np.zeros((0, 3, 32, 32), np.uint8), r"N >= 1"),
        ([[1, 2]], "must be a NumPy array"),
    ],
)
def test_wrong_input_is_rejected_before_running(exported, bad, message):
    with pytest.raises(OptcvError, match=message):
        OrtPredictor(exported[1]).predict(bad)
    with pytest.raises(OptcvError, match=message):
        check_images(bad)


def test_corrupt_and_foreign_onnx_files(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"this is not protobuf")
    with pytest.raises(OptcvError, match="bad.onnx"):
        OrtPredictor(tmp_path / "bad.onnx")
    with pytest.raises(OptcvError, match="does not exist"):
        OrtPredictor(tmp_path / "none.onnx")


def test_export_of_bad_checkpoints_fails_cleanly(tmp_path):
    raw = Checkpoint(TutorialNetConfig(), TutorialNet().state_dict()).to_dict()
    raw["arch"] = "mystery"
    torch.save(raw, tmp_path / "mystery.pt")
    with pytest.raises(OptcvError, match="unknown architecture 'mystery'"):
        export_onnx(tmp_path / "mystery.pt", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(OptcvError, match="not a readable optcv checkpoint"):
        export_onnx(tmp_path / "broken.pt", tmp_path / "out.onnx")


def test_export_above_tolerance_writes_nothing_and_keeps_old_file(exported, tmp_path):
    target = tmp_path / "kept.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(OptcvError, match="differs from PyTorch .* nothing was written"):
        export_onnx(exported[0], target, atol=1e-30)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.onnx"]


def test_sources_and_backends(exported, tmp_path):
    checkpoint, path, _ = exported
    source = resolve_sources([checkpoint])
    assert source == ModelSource(checkpoint, path)  # the export beside the checkpoint is found
    assert resolve_sources([path]) == ModelSource(checkpoint, path)
    with pytest.raises(OptcvError, match="unknown backend 'tensorrt'"):
        make_predictor("tensorrt", source)
    with pytest.raises(OptcvError, match="needs an ONNX model"):
        make_predictor("onnxruntime", ModelSource(checkpoint, None))
    settings = [p.describe() for p in candidate_predictors("pytorch", source)]
    assert {s["mkldnn"] for s in settings} == {True, False}
    assert all(p.describe()["threads"] == 1 for p in candidate_predictors("onnxruntime", source, threads=1))


def test_an_onnx_model_of_another_checkpoint_is_refused(exported, tmp_path):
    """The pair is matched by the checkpoint hash export wrote into the ONNX file, not by the file name."""
    import shutil

    from optcv.training.models import load_checkpoint

    checkpoint, path, _ = exported
    other = tmp_path / "model.pt"
    retrained = load_checkpoint(checkpoint)
    first = next(k for k, v in retrained.state_dict.items() if v.is_floating_point())
    retrained.state_dict[first] = retrained.state_dict[first] + 1e-3  # other weights, same file name
    save_checkpoint(other, retrained)
    shutil.copy(path, tmp_path / "model.onnx")
    with pytest.raises(OptcvError, match="is not the export of .*model.pt.* export it again"):
        resolve_sources([other])
    assert resolve_sources([checkpoint]) == ModelSource(checkpoint, path)  # the true pair still resolves


CTRL_C_INSIDE_EXPORT = """
import os, signal, sys
import numpy as np, torch
from optcv.cli.interrupts import interrupts_reach_the_command
from optcv.backends.onnx_export import export_module
from optcv.training.models import TutorialNetConfig, build_model

real_export = torch.export.export
reached = []

def export_interrupted(*args, **kwargs):  # Ctrl-C arrives inside the exporter's own work
    os.kill(os.getpid(), signal.SIGINT)
    reached.append("export ran on")
    return real_export(*args, **kwargs)

torch.export.export = export_interrupted
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (an xdist worker's children ignore it)
images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
try:
    with interrupts_reach_the_command():
        export_module(build_model(TutorialNetConfig(), seed=0).eval(), images, sys.argv[1], {})
    print("no interrupt")
except KeyboardInterrupt:
    print(reached, "KeyboardInterrupt", os.path.exists(sys.argv[1]))
"""


def test_ctrl_c_inside_the_export_is_an_interrupt_after_it(tmp_path):
    """Raised inside torch.onnx.export, the CLI's Ctrl-C could become the exporter's own failure ("export failed",
    exit 1; 3 of 24 random moments) or abort the process from a callback out of C++ (a CI kill point); it is held
    until the export returns, then interrupts, and nothing is written."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_INSIDE_EXPORT, str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['export ran on'] KeyboardInterrupt False"
