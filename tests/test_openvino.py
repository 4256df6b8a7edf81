"""The optional OpenVINO backend: same logits as ONNX Runtime from the same file, and a clear message when
it is not installed. CI installs optcv[openvino], so there these tests run; elsewhere they say why not."""

import importlib.util

import numpy as np
import pytest

from conftest import NO_SKIP
from optcv.errors import OptcvError
from optcv.runtime import ModelSource, backend_unavailable, make_predictor
from optcv.training.models import TunableNetConfig
from tests.conftest import export_tiny

if importlib.util.find_spec("openvino") is None:
    reason = backend_unavailable("openvino")
    if NO_SKIP:
        raise RuntimeError(f"{reason} (nothing may be skipped here: every backend must be exercised)")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    config = TunableNetConfig(conv_channels=8, hidden_units=(32,), dropouts=(0.1,))
    return export_tiny(tmp_path_factory.mktemp("ov"), config, seed=3)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_openvino_matches_onnxruntime_in_fp32_at_any_batch_size(source, batch):
    x = np.random.default_rng(batch).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
    openvino = make_predictor("openvino", source, 1)
    np.testing.assert_allclose(openvino.predict(x), make_predictor("onnxruntime", source, 1).predict(x),
                               rtol=1e-4, atol=1e-5)
    settings = openvino.describe()
    assert settings["precision"] == "f32" and settings["threads"] == 1 and batch in settings["compiled_batch_sizes"]
    assert openvino.classes[0] == "airplane"


def test_openvino_output_is_not_overwritten_by_the_next_call(source):
    openvino = make_predictor("openvino", source, 1)
    a, b = (np.random.default_rng(s).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8) for s in (0, 1))
    first = openvino.predict(a)
    kept = first.copy()
    openvino.predict(b)
    np.testing.assert_array_equal(first, kept)


def test_openvino_needs_the_onnx_file(source):
    with pytest.raises(OptcvError, match="openvino backend reads the ONNX model"):
        make_predictor("openvino", ModelSource(source.checkpoint, None), 1)


def test_a_missing_optional_runtime_is_named_with_its_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert "pip install 'optcv[openvino]'" in backend_unavailable("openvino")
    assert backend_unavailable("onnxruntime") is None
