"""Real slowdowns injected from outside the code under test, for the gate's self-test.

A `sitecustomize.py` placed first on a side's PYTHONPATH wraps an entry point after import and busy-waits
for a fixed fraction of each call's own duration, the way a slower dependency or a slower line in optcv
would arrive: nothing in the measured code knows about it.

- onnxruntime: `InferenceSession.run`;
- pytorch: the outermost `nn.Module.__call__` (forward) and `torch.autograd.backward`;
- shared: optcv's own path every case goes through: the `predict` of the pytorch and onnxruntime predictors
  (optcv.backends) and `optcv.training.train.train`.
"""

from __future__ import annotations

from pathlib import Path

TARGETS = ("onnxruntime", "pytorch", "shared")
NONE = "none"  # the same imports, nothing wrapped: the other side of a self-test

_SITECUSTOMIZE = '''\
# Written by optcv's gate self-test: slows {target} by {fraction!r} of each call's own time.
import functools
import time

_FRACTION = {fraction!r}
_clock = time.perf_counter_ns


def _slowed(fn, outermost_only=False):
    depth = [0]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if outermost_only and depth[0]:
            return fn(*args, **kwargs)
        depth[0] += 1
        started = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            depth[0] -= 1
            end = _clock() + int((_clock() - started) * _FRACTION)
            while _clock() < end:
                pass
    return wrapper


def _inject(target):
    # Every side imports the same modules in the same order, wrapped or not: which library loads first
    # (ONNX Runtime or torch) changed PyTorch's batched speed by ~10 % here, an effect of the injection
    # itself rather than of the slowdown it injects.
    import torch
    from onnxruntime.capi import onnxruntime_inference_collection as ort
    import optcv.backends.onnxruntime as ort_backend
    import optcv.backends.pytorch as torch_backend
    import optcv.training.train as train

    if target == "onnxruntime":
        ort.InferenceSession.run = _slowed(ort.InferenceSession.run)
    elif target == "pytorch":
        torch.nn.Module.__call__ = _slowed(torch.nn.Module.__call__, outermost_only=True)
        torch.autograd.backward = _slowed(torch.autograd.backward)
    elif target == "shared":
        for module in (torch_backend, ort_backend):
            for value in list(vars(module).values()):
                if isinstance(value, type) and value.__module__ == module.__name__ and "predict" in vars(value):
                    value.predict = _slowed(value.predict)
        train.train = _slowed(train.train)
    elif target != "none":
        raise ValueError(target)


_inject({target!r})
'''


def write_injection(folder: str | Path, target: str, fraction: float) -> Path:
    """Write the sitecustomize.py that slows `target` by `fraction` (0.05 = 5 %) into `folder`."""
    if target not in (*TARGETS, NONE):
        raise ValueError(f"unknown injection target {target!r}: choose from {', '.join(TARGETS)}")
    if not 0 <= fraction < 10:
        raise ValueError(f"slowdown fraction must be in (0, 10), got {fraction}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sitecustomize.py"
    path.write_text(_SITECUSTOMIZE.format(target=target, fraction=float(fraction)), encoding="utf-8")
    return folder
