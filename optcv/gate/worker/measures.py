"""Memory and instruction counts, measured inside the worker: a case's resident memory in a forked child of its own
(`memory`), and its calls counted under callgrind (`instructions`)."""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any

import numpy as np

from .cases import CASE_VARIABLE, Case
from .protocol import (
    Built,
    CaseSpec,
    Counted,
    CountInstructions,
    Exit,
    Failed,
    Footprint,
    MeasureMemory,
    MemoryReady,
    Reply,
    Setup,
    decode,
    encode,
    failure,
)
from .side import side_module


def _status_kib(field: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


def footprint(spec: CaseSpec, artifacts: Built, inputs: dict[str, np.ndarray], calls: int,
              warmup: int) -> Footprint:
    """One case's memory in this (fresh, forked) process: the peak resident memory the case added over its set-up,
    `warmup` calls and `calls` more, and what stayed resident per call after the warm-up."""
    os.environ[CASE_VARIABLE] = spec.id
    _reset_peak()
    before = _status_kib("VmRSS")
    case = Case(spec, artifacts, inputs)
    for _ in range(warmup):
        case.call()
    warm = _status_kib("VmRSS")
    counter = _allocation_counter()
    bytes_before, blocks_before = counter.optcv_allocated_bytes(), counter.optcv_allocated_blocks()
    for _ in range(calls):
        case.call()
    bytes_after, blocks_after = counter.optcv_allocated_bytes(), counter.optcv_allocated_blocks()
    return Footprint(peak_kib=_status_kib("VmHWM") - before, after_setup_and_warmup_kib=warm - before,
                     retained_kib_per_call=(_status_kib("VmRSS") - warm) / calls,
                     allocated_bytes_per_call=(bytes_after - bytes_before) / calls,
                     allocated_blocks_per_call=(blocks_after - blocks_before) / calls)


def _allocation_counter() -> Any:
    """The counting malloc preloaded into this memory worker (optcv.gate.memory.ALLOCATION_COUNTER)."""
    import ctypes

    process = ctypes.CDLL(None)
    try:
        counter = process.optcv_allocated_bytes, process.optcv_allocated_blocks
    except AttributeError:
        raise RuntimeError("the allocation counter is not preloaded (LD_PRELOAD) into this memory worker") from None
    for function in counter:
        function.restype = ctypes.c_ulonglong
    return process


def in_child(work: Any) -> Reply:
    """`work()`'s answer, computed in a forked child so that nothing the parent held or freed counts."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, then leave without running the parent's clean-up
        os.close(read_end)
        try:
            answer = work()
        except Exception as exc:  # reported to the gate as a set-up error of this side
            answer = failure(exc)
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(encode(answer))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    return decode(text) if text else Failed(f"the measuring child ended with status {status}")


def _import_runtimes() -> None:
    """What any case imports, imported before the fork, so that it is in every child alike and in no footprint."""
    side_module("runtime")
    side_module("train")
    for name in ("torch", "onnxruntime", "openvino"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def serve_memory(stdin: Any, reply: Any) -> None:
    """`Setup` keeps the inputs and artifacts; each `MeasureMemory` measures one case in a fresh child."""
    held: dict[str, Any] = {}
    for line in stdin:
        try:
            request = decode(line)
            if isinstance(request, Setup):
                held = {"inputs": {name: np.load(path) for name, path in request.inputs.items()},
                        "artifacts": request.artifacts}
                _import_runtimes()
                answer: Reply = MemoryReady(os.getpid(), len(os.listdir("/proc/self/task")))
            elif isinstance(request, MeasureMemory):
                answer = in_child(lambda r=request, h=held: footprint(r.spec, h["artifacts"], h["inputs"], r.calls,
                                                                      r.warmup))
            elif isinstance(request, Exit):
                return
            else:
                answer = Failed(f"a memory worker does not answer {type(request).__name__}")
        except Exception as exc:
            answer = failure(exc)
        reply.write(encode(answer) + "\n")
        reply.flush()


def _count_calls(client: Any, case: Case, label: str, warmup: int, calls: int) -> None:
    """`warmup` uncounted calls, then `calls` counted ones dumped under `label`."""
    import gc

    for _ in range(warmup):  # one-off growth (an arena's next block) before counting
        case.call()
    gc.collect()
    gc.disable()  # as timeit does: a collection falls into one process's counted calls and not another's
    # The GIL is handed over every 5 ms of wall time while another thread waits for it: under valgrind that is
    # a number of hand-overs that moves with the machine's load (PyTorch's call: +-0.7 % between processes).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e6)
    client.optcv_callgrind_start()
    for _ in range(calls):
        case.call()
    client.optcv_callgrind_stop(label.encode())
    sys.setswitchinterval(interval)
    gc.enable()


def _macs_per_call(case: Case) -> int | None:
    """Multiply-accumulates of one call of the case's net, by the side's own counter; None where there is no
    PyTorch net to count (an ONNX-only declared model) or the side's revision has no counter."""
    import torch

    models = side_module("models")
    if not hasattr(models, "count_macs") or case.spec.kind != "predict":
        return None
    source, spec = case.source, case.source.input_spec
    if source.declared is not None:
        net, dtype = source.declared.build_inference(), getattr(torch, spec.dtype)
    elif source.checkpoint is not None:
        net, dtype = models.load_checkpoint(source.checkpoint).build(), torch.float32
    else:
        return None
    shape = (case.spec.batch, *(spec.shape if spec is not None else (3, 32, 32)))
    return int(models.count_macs(net, shape, dtype))


def counted_calls(macs: int | None, request: CountInstructions) -> int:
    """Calls to count: enough for `counted_macs` multiply-accumulates, within [min_calls, max_calls] (a call's
    time under valgrind grows with its arithmetic: optcv.gate.instructions). The same net gets the same number
    on both sides."""
    if not macs:
        return request.max_calls
    return max(request.min_calls, min(request.max_calls, -(-request.counted_macs // macs)))


def count_instructions(request: CountInstructions) -> Counted:
    """Under callgrind with instrumentation off: per case, set up and warm up, then count `calls` calls, dumped
    under the case's name (optcv.gate.instructions). A case whose call is too slow under valgrind is left out."""
    import ctypes
    import gc

    client = ctypes.CDLL(request.library)
    client.optcv_callgrind_stop.argtypes = [ctypes.c_char_p]
    inputs = {name: np.load(path) for name, path in request.inputs.items()}
    calls: dict[str, int] = {}
    warmup_s: dict[str, float] = {}
    case_s: dict[str, float] = {}
    for spec in request.cases:
        case_started = time.perf_counter()
        os.environ[CASE_VARIABLE] = spec.id
        case = Case(spec, request.artifacts, inputs)
        case.call()  # its first call may set up (OpenVINO compiles here): not the call's own time
        started = time.perf_counter()
        case.call()
        warmup_s[spec.id] = time.perf_counter() - started
        if warmup_s[spec.id] <= request.max_warmup_s:  # else counted, it would take minutes: reported
            calls[spec.id] = counted_calls(_macs_per_call(case), request)
            _count_calls(client, case, spec.id, request.warmup_calls, calls[spec.id])
        del case
        gc.collect()
        case_s[spec.id] = time.perf_counter() - case_started
    import torch

    return Counted(calls, warmup_s, case_s, torch.backends.cpu.get_cpu_capability())


