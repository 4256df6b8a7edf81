"""PyTorch's process-wide settings (intra-op threads, the oneDNN flag): set in one place, given back exactly.

Two scopes share one mechanism:

- `torch_settings(threads=..., onednn=...)`: a context manager around a piece of work (training, a tuning
  worker, a GEMM peak); nestable; on exit each setting is put back to what the scope found.
- `SettingsLease`: a predictor's settings for its lifetime. Interleaved timing alternates predictors of
  different thread counts call by call, and restoring after every call would flip the settings twice inside
  each timed call; so a lease sets only what differs before a call, and when the last open lease is
  released the process gets back what it had before the first one was taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TorchState:
    threads: int
    interop_threads: int
    onednn: bool


def current_state() -> TorchState:
    return TorchState(torch.get_num_threads(), torch.get_num_interop_threads(), bool(torch.backends.mkldnn.enabled))


def _apply(threads: int | None, onednn: bool | None) -> None:
    """Change only what differs: setting PyTorch's thread count costs time even when it is already right."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if onednn is not None and bool(torch.backends.mkldnn.enabled) != onednn:
        torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]


@contextmanager
def torch_settings(threads: int | None = None, onednn: bool | None = None) -> Iterator[None]:
    """PyTorch at `threads` intra-op threads and oneDNN on or off (None: as found) inside the block."""
    found = current_state()
    _apply(threads, onednn)
    try:
        yield
    finally:
        _apply(found.threads, found.onednn)


_found: TorchState | None = None  # the process's settings before the first open lease
_open_leases = 0


class SettingsLease:
    """A predictor's thread count and oneDNN flag, applied before each of its calls (see the module's text)."""

    def __init__(self, threads: int, onednn: bool | None = None):
        self.threads, self.onednn = threads, onednn
        self._held = False

    def apply(self) -> None:
        global _found, _open_leases
        if not self._held:
            if _open_leases == 0:
                _found = current_state()
            _open_leases += 1
            self._held = True
        _apply(self.threads, self.onednn)

    def release(self) -> None:
        global _found, _open_leases
        if not self._held:
            return
        self._held = False
        _open_leases -= 1
        if _open_leases == 0 and _found is not None:
            _apply(_found.threads, _found.onednn)
            _found = None


def open_leases() -> int:
    """How many predictors hold settings now (a test checks that every caller closed its predictors)."""
    return _open_leases
