"""Process-wide state optcv touches (PyTorch's threads and oneDNN flag, pyplot's backend) is given back exactly,
whatever ran before; and training gives the same weights whatever ran first."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from optcv.backends.onnxruntime_int8 import int8_path
from optcv.data import CIFAR10
from optcv.measure.limits import measure_gemm_peak
from optcv.report.study import write_plots
from optcv.runtime import ModelSource, backend_unavailable, make_predictor
from optcv.torch_settings import SettingsLease, current_state, torch_settings
from optcv.training.models import TutorialNetConfig, build_model
from optcv.training.train import TrainConfig, train
from optcv.training.tune import TuneConfig, tune
from tests.conftest import export_tiny

IMAGES = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)


def test_torch_settings_nest_and_restore_exactly():
    found = current_state()
    with torch_settings(threads=1, onednn=not found.onednn):
        assert current_state().threads == 1 and current_state().onednn is not found.onednn
        with torch_settings(threads=2, onednn=found.onednn):
            assert (current_state().threads, current_state().onednn) == (2, found.onednn)
        assert current_state().threads == 1 and current_state().onednn is not found.onednn
    assert current_state() == found


def test_leases_set_what_differs_and_the_last_release_gives_back_what_was_found(monkeypatch):
    found = current_state()
    one, two = SettingsLease(1, onednn=False), SettingsLease(2, onednn=True)
    one.apply()
    two.apply()
    assert (current_state().threads, current_state().onednn) == (2, True)
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    two.apply()
    assert calls == []  # already right: nothing set, so no flip inside a timed call
    one.apply()
    two.release()
    assert (current_state().threads, current_state().onednn) == (1, False)  # one still holds its settings
    one.release()
    one.release()  # a second release changes nothing
    assert current_state() == found


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory) -> tuple[CIFAR10, ModelSource, Path]:
    folder = tmp_path_factory.mktemp("state")
    source = export_tiny(folder, TutorialNetConfig(), seed=5)
    shutil.copyfile(source.onnx, int8_path(source.onnx))  # the int8 backend's session: any ONNX model will do
    return tiny, source, folder


def _steps(world: tuple[CIFAR10, ModelSource, Path], weights: list[list[np.ndarray]]) -> dict[str, Callable[[], None]]:
    data, source, folder = world

    def predict(backend: str, **options: object) -> Callable[[], None]:
        def step() -> None:
            with make_predictor(backend, source, 1, **options) as predictor:
                predictor.predict(IMAGES)
        return step

    def training() -> None:
        model = build_model(TutorialNetConfig(), seed=0)
        train(model, data.train, data.test, TrainConfig("SGD", epochs=1, batch_size=8, seed=0), progress=False)
        weights.append([p.detach().numpy().copy() for p in model.parameters()])

    def tuning_and_plots() -> None:
        run = folder / f"tune-{len(list(folder.glob('tune-*')))}"
        config = TuneConfig(trials=2, epochs=1, train_size=40, val_size=20, batch_size=8, pruner="none")
        write_plots(tune(config, run, data=data, progress=False), run)

    steps = {"pytorch": predict("pytorch", mkldnn=False), "pytorch-onednn": predict("pytorch", mkldnn=True),
             "onnxruntime": predict("onnxruntime"), "onnxruntime-int8": predict("onnxruntime-int8"),
             "torch-compile": predict("torch-compile", cache_dir=folder / "inductor", mode="default"),
             "training": training, "tuning": tuning_and_plots,
             "gemm peak": lambda: measure_gemm_peak(1, size=64, repeats=1, min_seconds=0.001)}
    if backend_unavailable("openvino") is None:
        steps["openvino"] = predict("openvino")
    return steps


def _state() -> tuple[object, ...]:
    return (*vars(current_state()).values(), matplotlib.rcParams._get("backend"))


@pytest.mark.full  # trains and times every backend in turn (19 s): nightly
def test_state_is_given_back_and_training_is_the_same_whatever_ran_first(world):
    weights: list[list[np.ndarray]] = []
    steps = _steps(world, weights)
    names = list(steps)
    orders = [names, names[::-1], names[3:] + names[:3]]
    for order in orders:
        before = _state()
        with torch_settings(threads=2, onednn=False):  # as a predictor or a caller might have left it
            for name in order:
                steps[name]()
                assert _state()[:3] == (2, before[1], False), f"{name} left {_state()}"
        assert _state() == before
    assert len(weights) == len(orders)
    for other in weights[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(weights[0], other, strict=True))
