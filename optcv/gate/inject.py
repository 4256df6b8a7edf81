"""Real slowdowns injected from outside the code under test, for the gate's self-test.

A `sitecustomize.py` placed first on a side's PYTHONPATH wraps entry points after import and busy-waits inside
them, the way a slower dependency or a slower line in optcv would arrive: nothing in the measured code knows
about it. A fraction is of the whole timed call (optcv's `predict` or `train`, measured on the previous call),
so a nominal 5 % is 5 % of what the gate times even where the target is a part of the call. Each target has
its own fraction, so one gate run can slow one backend at the boundary and another just below it; a fraction
of 0 wraps without waiting, which is what the other side gets (the wrapper's own cost, then, is on both sides).

- onnxruntime: `InferenceSession.run` (fp32 and int8 alike);
- openvino: `InferRequest.infer`;
- pytorch: the outermost `nn.Module.__call__` (forward) and `torch.autograd.backward`;
- pytorch-op: the outermost `nn.Module.__call__`, the extra time spent in an extra operator (`aten::exp` on the
  input, repeated) instead of a wait, so that the gate's per-operator comparison can be checked to name it;
- shared: optcv's own path every case goes through: the `predict` of every predictor (optcv.backends) and
  `optcv.training.train.train`. It is the only target that reaches torch-compile, whose compiled call goes
  around `nn.Module.__call__`.
- work: extra arithmetic after each of those calls, a fixed mean number of loop iterations per call for each
  case (no clock in it; a fraction of an iteration is carried to the next call), sized by the self-test from
  the case's instructions per call and an iteration's cost, both counted in the worker, so that instruction
  counts see it;
- memory: after the second of those calls, a buffer of the fraction of the memory the case has made resident
  is kept, so that the case's peak resident memory grows by about that fraction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# Which cases each target slows, by the backend part of the case name ("train" for a training step).
TOUCHES: dict[str, frozenset[str]] = {
    "onnxruntime": frozenset({"onnxruntime", "onnxruntime-int8"}),
    "openvino": frozenset({"openvino"}),
    "pytorch": frozenset({"pytorch", "train"}),
    "pytorch-op": frozenset({"pytorch", "train"}),
    "shared": frozenset({"pytorch", "onnxruntime", "onnxruntime-int8", "openvino", "torch-compile", "train"}),
    "work": frozenset({"pytorch", "onnxruntime", "onnxruntime-int8", "openvino", "torch-compile", "train"}),
    "memory": frozenset({"pytorch", "onnxruntime", "onnxruntime-int8", "openvino", "torch-compile", "train"}),
}
TARGETS = tuple(TOUCHES)

_SITECUSTOMIZE = '''\
# Written by optcv's gate self-test: slows each target by its fraction of each timed call: {fractions!r}
import functools
import os
import time

_clock = time.perf_counter_ns
# The timed unit is optcv's predict or train call. A target's waits are scaled so that, summed over a unit,
# they come to the fraction of the whole unit, measured on the previous one: a nominal 5 % is 5 % of what the
# gate times, wherever in the call the target's share lies.
_unit = {{"depth": 0, "ns": 0, "target_ns": 0, "previous_ns": 0, "previous_target_ns": 0, "waited_ns": 0}}
_WORK_ITERATIONS = {work!r}  # case name -> loop iterations per call, a mean: a fraction is carried over
_work_owed = [0.0]
_memory = {{"baseline_kib": 0, "kept": bytearray(), "calls": 0}}

{work_loop}

def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rebase_memory():
    _memory.update(baseline_kib=_status_kib("VmRSS"), kept=bytearray(), calls=0)


def _retain(fraction):
    # Once, after the second call (the case set up and run once, its memory in place): a buffer of the fraction
    # of what the case has made resident, every page touched, kept for the life of the process. Grown later,
    # freed heap blocks would stay resident and the growth would compound.
    _memory["calls"] += 1
    if _memory["calls"] == 2:
        wanted = int((_status_kib("VmHWM") - _memory["baseline_kib"]) * 1024 * fraction)
        kept = bytearray(max(wanted, 0))
        kept[::4096] = b"\\x01" * len(range(0, len(kept), 4096))
        _memory["kept"] = kept


def _wait(ns, extra_op=None, args=()):
    started = _clock()
    end = started + int(ns)
    while _clock() < end:
        if extra_op is not None:
            extra_op(args)
    _unit["waited_ns"] += _clock() - started


def _timed_unit(fn, fraction, work=False, memory=0.0):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _unit["depth"]:
            return fn(*args, **kwargs)
        _unit.update(depth=1, target_ns=0, waited_ns=0)
        started = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            own = _clock() - started - _unit["waited_ns"]
            _unit.update(depth=0, previous_ns=own, previous_target_ns=_unit["target_ns"])
            _wait(own * fraction)
            if work:
                _work_owed[0] += _WORK_ITERATIONS.get(os.environ.get("OPTCV_GATE_CASE"), 0)
                whole = int(_work_owed[0] + 1e-9)  # 100 × 1.65 adds up to 164.99999…
                _work_owed[0] -= whole
                extra_work(whole)
            if memory:
                _retain(memory)
    return wrapper


def _slowed(fn, fraction, outermost_only=False, extra_op=None):
    depth = [0]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if outermost_only and depth[0]:
            return fn(*args, **kwargs)
        depth[0] += 1
        waited = _unit["waited_ns"]
        started = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            depth[0] -= 1
            own = _clock() - started - (_unit["waited_ns"] - waited)
            _unit["target_ns"] += own
            scale = _unit["previous_ns"] / _unit["previous_target_ns"] if _unit["previous_target_ns"] else 1.0
            _wait(own * fraction * scale, extra_op, args)
    return wrapper


def _inject(fractions):
    # Every side imports the same modules in the same order, wrapped or not: which library loads first
    # (ONNX Runtime or torch) changed PyTorch's batched speed by ~10 % here, an effect of the injection
    # itself rather than of the slowdown it injects.
    import torch
    from onnxruntime.capi import onnxruntime_inference_collection as ort
    import optcv.backends.onnxruntime as ort_backend
    import optcv.backends.openvino as ov_backend
    import optcv.backends.pytorch as torch_backend
    import optcv.backends.torch_compile as compile_backend
    import optcv.training.train as train

    if not fractions:
        return
    if "onnxruntime" in fractions:
        ort.InferenceSession.run = _slowed(ort.InferenceSession.run, fractions["onnxruntime"])
    if "openvino" in fractions:  # imported only where wrapped: both sides wrap the same targets
        from openvino import _ov_api

        _ov_api.InferRequest.infer = _slowed(_ov_api.InferRequest.infer, fractions["openvino"])
    if "pytorch" in fractions:
        torch.nn.Module.__call__ = _slowed(torch.nn.Module.__call__, fractions["pytorch"], outermost_only=True)
        torch.autograd.backward = _slowed(torch.autograd.backward, fractions["pytorch"])
    if "pytorch-op" in fractions:
        def exp_of_input(args):
            torch.exp(args[1])  # (module, input): an operator the profiler sees, its result dropped

        torch.nn.Module.__call__ = _slowed(torch.nn.Module.__call__, fractions["pytorch-op"], outermost_only=True,
                                           extra_op=exp_of_input)
    # Every wrapped side measures its units, slowed or not, and both sides run the same wrappers.
    unit = functools.partial(_timed_unit, fraction=fractions.get("shared", 0.0), work="work" in fractions,
                             memory=fractions.get("memory", 0.0))
    for module in (torch_backend, ort_backend, ov_backend, compile_backend):
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == module.__name__ and "predict" in vars(value):
                value.predict = unit(value.predict)
    train.train = unit(train.train)
    _rebase_memory()
    os.register_at_fork(after_in_child=_rebase_memory)


_inject({fractions!r})
'''


# The extra work of the `work` target: integer arithmetic whose instructions per iteration are the same in every
# iteration and every run of an interpreter (the self-test counts them under valgrind:
# optcv.gate.instructions). Small ints only: with 31-bit ones, the first iterations (small x) were cheaper than
# the average, and 1 % injected read +0.84 % on a call that needs 5 iterations.
WORK_LOOP = """def extra_work(iterations):
    x = 1
    for _ in range(iterations):
        x = (x * 75 + 74) % 65537
    return x
"""


def write_injection(folder: str | Path, fractions: Mapping[str, float],
                    work_iterations: Mapping[str, float] | None = None) -> Path:
    """Write the sitecustomize.py that slows each target by its fraction (0.05 = 5 %; 0 wraps it without
    waiting) into `folder`; no targets: the same imports, nothing wrapped. The `work` target's extra work is
    `work_iterations` per case, a mean per call (none given: no extra work), and its fraction is only a label."""
    for target, fraction in fractions.items():
        if target not in TARGETS:
            raise ValueError(f"unknown injection target {target!r}: choose from {', '.join(TARGETS)}")
        if not 0 <= fraction < 10:
            raise ValueError(f"slowdown fraction must be in [0, 10), got {fraction}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sitecustomize.py"
    text = _SITECUSTOMIZE.format(fractions={t: float(f) for t, f in sorted(fractions.items())},
                                 work=dict(sorted((work_iterations or {}).items())), work_loop=WORK_LOOP)
    path.write_text(text, encoding="utf-8")
    return folder
