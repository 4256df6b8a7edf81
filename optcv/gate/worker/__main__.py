"""The script each side's interpreter runs for the gate: `python optcv/gate/worker/__main__.py MODE`.

Its folder is taken off sys.path (it must not shadow the side's packages) and the harness package beside it is
loaded by its path under a private name, so the side's `optcv`, first on PYTHONPATH, is the only one importable
as `optcv`: every model, export, predictor and training step comes from the side's own code.
"""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    del sys.path[0]
spec = importlib.util.spec_from_file_location("_optcv_gate_worker", HERE / "__init__.py",
                                              submodule_search_locations=[str(HERE)])
assert spec is not None and spec.loader is not None
harness = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = harness
spec.loader.exec_module(harness)
harness.main()
