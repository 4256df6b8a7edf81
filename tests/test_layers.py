"""The layering holds at run time too: a backend imports neither the gate nor matplotlib, and every piece of
process-wide state optcv touches is given back as found, whatever ran before it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from optcv.torch_settings import SettingsLease, current_state, torch_settings


@pytest.mark.parametrize("module", ["optcv.backends.pytorch", "optcv.backends.onnxruntime", "optcv.runtime"])
def test_a_backend_imports_neither_the_gate_nor_matplotlib(module):
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in sys.modules if m.startswith(('optcv.gate', 'optcv.report', 'matplotlib'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


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
