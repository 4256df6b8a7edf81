"""Shared pytest set-up for tests/ and benchmarks/: the two tiers, synthetic and real CIFAR-10.

Two tiers (docs/reference/tests.md): the pull-request tier, `pytest`'s default (.ci/run and `tox -e pr`: the unit
tests, bad inputs, one kill point per command and signal; then alone on the machine parity of the course's two
nets, the A/B gate against the base revision and, when the gate's own code changed, its boundary self-test); the
nightly tier, `pytest --tier full` (`tox -e full`), adds every case marked `full`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from optcv.data import CLASSES

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# .ci/run sets OPTCV_NO_SKIP=1 whatever CI holds (a runner may export CI=false): there a missing data set,
# service or optional backend fails the run instead of skipping quietly.
NO_SKIP = IN_CI or os.environ.get("OPTCV_NO_SKIP", "").lower() in ("1", "true", "yes")


TIERS = ("pr", "full")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tier", choices=TIERS, default="pr",
                     help="pr (the default: what CI runs on every pull request) or full (every case: the nightly tier)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full: runs only in the nightly tier (pytest --tier full, tox -e full)")
    # A relative data folder (the README's ../shared/data/cifar10) means the folder pytest was started from: the
    # gate's sessions, and any test that changes folder, find it there too.
    data = os.environ.get("OPTCV_DATA_DIR")
    if data and not Path(data).expanduser().is_absolute():
        os.environ["OPTCV_DATA_DIR"] = str((config.invocation_params.dir / data).resolve())


@pytest.hookimpl(optionalhook=True)
def pytest_gate_session_args(config: pytest.Config) -> list[str]:
    """The gate's sessions of each side collect this run's tier (optcv.plugin.hooks)."""
    return ["--tier", config.getoption("tier")]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("tier") == "full":
        return
    later = [item for item in items if item.get_closest_marker("full")]
    if later:
        config.hook.pytest_deselected(items=later)
        items[:] = [item for item in items if not item.get_closest_marker("full")]
        config._optcv_full_only = len(later)  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from tests.faults.conftest import fault_summary

    fault_summary(terminalreporter)
    later = getattr(config, "_optcv_full_only", 0)
    if later:
        terminalreporter.write_line(f"pull-request tier: {later} nightly cases not run here (pytest --tier full "
                                    "runs them)")


def full_tier(config: pytest.Config) -> bool:
    return config.getoption("tier") == "full"


def skip_or_fail(message: str) -> None:
    """Skip with the reason and the fix on a developer's machine; fail where nothing may be skipped."""
    if NO_SKIP:
        pytest.fail(f"{message} (nothing may be skipped here: OPTCV_NO_SKIP or CI is set)", pytrace=False)
    pytest.skip(message)


def make_image_folder(root: Path, train_per_class: int = 8, test_per_class: int = 4, seed: int = 0,
                      suffix: str = ".png") -> Path:
    """A learnable CIFAR-10-shaped image-folder tree: each class a colour, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (len(CLASSES), 3))
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        # Create the folders in reverse order so label order cannot come from creation order.
        for label in reversed(range(len(CLASSES))):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 40, (32, 32, 3))
                pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i:04d}{suffix}")
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny-cifar10"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real CIFAR-10 copy, through the project's normal option: $OPTCV_DATA_DIR.

    Where nothing may be skipped (CI, .ci/run) a missing copy fails the run; elsewhere it skips, saying why.
    """
    from optcv.data import detect_layout, resolve_data_dir
    from optcv.errors import OptcvError

    path = resolve_data_dir(None)
    try:
        detect_layout(path)
    except OptcvError as exc:
        skip_or_fail(f"real CIFAR-10 is needed here: set OPTCV_DATA_DIR ({exc})")
    return path
