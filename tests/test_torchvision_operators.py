"""The torchvision nets' operators, kept covered in seconds: ResNet-18 (CIFAR stem) and MobileNetV3-small with random
weights, exported as the suite exports them, give PyTorch's logits in ONNX Runtime and OpenVINO.

Their trained twins' parity on the test split is the nightly tier's (benchmarks/test_parity.py, minutes of training);
this keeps an exporter, opset or runtime change that breaks one of their operators (batch norm folded, hardswish,
squeeze-excitation, adaptive pooling, the residual adds) from waiting for the nightly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import skip_or_fail
from optcv.backends.onnx_export import export_onnx
from optcv.measure.parity import fp32_logits_match
from optcv.runtime import ModelSource, backend_unavailable, make_predictor
from optcv.training.models import Checkpoint, MobileNetV3SmallConfig, ResNet18Config, build_model, save_checkpoint

NETS = {"resnet18": ResNet18Config(), "mobilenet_v3_small": MobileNetV3SmallConfig()}


def random_net(config, folder: Path) -> ModelSource:
    """Random weights with batch-norm statistics of real activations: as initialised, MobileNetV3-small's logits
    are ~1e-10, which any runtime would 'match'; one train-mode pass over random inputs gives them a spread."""
    net = build_model(config, seed=1)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: the pass's own statistics
    net.train()
    with torch.no_grad():
        net(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    net.eval()
    save_checkpoint(folder / "m.pt", Checkpoint(config, net.state_dict()))
    export_onnx(folder / "m.pt", folder / "m.onnx")
    return ModelSource(folder / "m.pt", folder / "m.onnx")


@pytest.fixture(scope="module", params=list(NETS))
def net(request, tmp_path_factory) -> tuple[str, ModelSource]:
    return request.param, random_net(NETS[request.param], tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_torchvision_net_gives_pytorchs_logits(net, backend):
    name, source = net
    if backend_unavailable(backend):
        skip_or_fail(backend_unavailable(backend) or "")
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    with make_predictor("pytorch", source, 1) as reference, make_predictor(backend, source, 1) as other:
        expected, got = reference.predict(images), other.predict(images)
    spread = float(expected.std(axis=0).mean())  # between images, per class
    assert spread > 0.01, f"{name}: logits that hardly differ between images prove nothing ({spread:.3g})"
    worst = float(np.max(np.abs(got - expected)))
    assert fp32_logits_match(expected, got), f"{name} in {backend}: logits differ from PyTorch's by up to {worst:.3g}"
    assert (got.argmax(1) == expected.argmax(1)).all()
