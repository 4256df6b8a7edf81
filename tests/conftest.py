"""What the unit tests share: their own cache folder, and small models saved and exported once."""

from __future__ import annotations

from pathlib import Path

import pytest

from optcv.backends.onnx_export import export_onnx
from optcv.data import CIFAR10, load_cifar10
from optcv.runtime import ModelSource
from optcv.torch_settings import open_leases
from optcv.training.models import Checkpoint, ModelConfig, TutorialNetConfig, build_model, save_checkpoint


@pytest.fixture(scope="package", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Unit tests keep their decoded-data caches out of the user's cache folder; only while tests/ runs, so the
    benchmarks of the same session still reuse their warm cache of reference models."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPTCV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "optcv-cache"))
        yield


@pytest.fixture(autouse=True)
def _predictors_closed():
    """Every test closes the predictors it makes: one left open keeps PyTorch's threads and oneDNN flag as it set
    them, for every test after it."""
    before = open_leases()
    yield
    assert open_leases() == before, f"{open_leases() - before} predictor(s) left open: close them (`with` or .close())"


def export_tiny(folder: Path, config: ModelConfig, seed: int = 0) -> ModelSource:
    """A model with seeded random weights, saved as a checkpoint and exported to ONNX beside it."""
    save_checkpoint(folder / "m.pt", Checkpoint(config, build_model(config, seed=seed).state_dict()))
    export_onnx(folder / "m.pt", folder / "m.onnx")
    return ModelSource(folder / "m.pt", folder / "m.onnx")


@pytest.fixture(scope="session")
def tiny(tiny_data_dir: Path) -> CIFAR10:
    """The small synthetic CIFAR-10 (8 training, 4 test images per class), loaded once for the session."""
    return load_cifar10(tiny_data_dir, progress=False)


@pytest.fixture(scope="session")
def tiny_tutorial(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    """TutorialNet with random weights, exported: for tests that need any real model file and never write to it."""
    return export_tiny(tmp_path_factory.mktemp("tiny-tutorial"), TutorialNetConfig(), seed=3)
