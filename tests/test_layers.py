"""The layering holds at run time too: a backend imports neither the gate, nor the report, nor matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["optcv.backends.pytorch", "optcv.backends.onnxruntime", "optcv.runtime"])
def test_a_backend_imports_neither_the_gate_nor_matplotlib(module):
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in sys.modules if m.startswith(('optcv.gate', 'optcv.report', 'matplotlib'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
