"""The hooks optcv's pytest plugin adds: a conftest implements them to shape the gate's sessions."""

from __future__ import annotations

import pytest


def pytest_gate_session_args(config: pytest.Config) -> list[str]:  # type: ignore[empty-body]
    """Arguments each side's pytest session of `--gate-against` gets before the tests' files: the options a suite's
    own conftest needs to collect and set up the same tests as this run (its tier, say). Each session otherwise
    runs the named tests and nothing of this run's command line (its `addopts`, output files, xdist).
    Implement it in a conftest with `@pytest.hookimpl(optionalhook=True)`, so that it loads without optcv too."""
