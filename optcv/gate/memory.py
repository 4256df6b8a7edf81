"""Each case's resident memory, A/B: the peak the case adds to a process, over its set-up and its calls.

Every measurement is a child forked from a side's memory worker, which has imported the runtimes and loaded the
inputs but run nothing: the child's peak (VmHWM, reset at its start) less its resident memory at that start is
what the case alone made resident — the model's weights, the runtime's session and arenas, the activations of
its calls — with nothing the process held or freed before in it. Repeats alternate the sides in a seeded
order; a case fails when every head repeat lies above every base one and the growth exceeds its threshold
(`optcv.gate.verdict.repeat_change`). What stays resident per call after the warm-up (a leak) is reported, and
so are the bytes and blocks each call asks of the C allocator: the memory workers run with a counting
`malloc` preloaded (a few lines of C compiled once into the cache), which sees PyTorch's tensors, ONNX Runtime's
and OpenVINO's buffers and NumPy's arrays alike, whatever the runtime exposes of its own. Memory a runtime maps
itself (`mmap`) and Python's small objects (pymalloc's arenas) are not in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from optcv.errors import MissingDependency
from optcv.gate.native import compiled_library, missing_compiler
from optcv.gate.sides import Side
from optcv.gate.verdict import MeasureFinding, Thresholds, judge_repeats
from optcv.gate.worker.protocol import CaseSpec, Footprint, MeasureMemory, MemoryReady, Setup
from optcv.gate.workers import Worker

WARMUP_CALLS = 2
MEASURED_CALLS = 5
# glibc's own entry points under the interposed names: no dlsym (which itself allocates) and no recursion.
ALLOCATION_COUNTER = """#include <errno.h>
#include <stddef.h>
extern void *__libc_malloc(size_t); extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t); extern void *__libc_memalign(size_t, size_t);
static unsigned long long optcv_bytes, optcv_blocks;
static void optcv_note(size_t n) {
    __atomic_fetch_add(&optcv_bytes, n, __ATOMIC_RELAXED); __atomic_fetch_add(&optcv_blocks, 1, __ATOMIC_RELAXED);
}
void *malloc(size_t n) { optcv_note(n); return __libc_malloc(n); }
void *calloc(size_t m, size_t n) { optcv_note(m * n); return __libc_calloc(m, n); }
void *realloc(void *p, size_t n) { optcv_note(n); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { optcv_note(n); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { optcv_note(n); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    void *p; optcv_note(n); p = __libc_memalign(a, n); if (!p) return ENOMEM; *out = p; return 0;
}
unsigned long long optcv_allocated_bytes(void) { return optcv_bytes; }
unsigned long long optcv_allocated_blocks(void) { return optcv_blocks; }
"""


class AllocationCountsUnavailable(MissingDependency):
    """No C compiler: the memory workers' allocation counter cannot be built here."""


def allocation_counter(cache_dir: Path | None = None) -> Path:
    """The counting malloc the memory workers preload, compiled once into the cache."""
    if missing_compiler():
        raise AllocationCountsUnavailable("--measure memory", "a C compiler (cc) for its allocation counter",
                                          "apt-get install gcc (Debian's), or drop --measure memory")
    return compiled_library(ALLOCATION_COUNTER, "optcv-malloc-counter", cache_dir)


def measure_memory(sides: Sequence[Side], specs: Sequence[CaseSpec], setup: dict[str, Setup],
                   thresholds: Thresholds, workdir: Path, repeats: int, seed: int = 0) -> list[MeasureFinding]:
    """Per case, `repeats` measurements of each side, each repeat in children of its own memory worker per side:
    repeat r's workers get the same environment padding on both sides and another one per r, so that where a
    process's memory lies (an arena's last block fitting or not) shows as spread, not as a change."""
    rng = np.random.default_rng([seed, 22])
    pads = rng.integers(0, 4096, repeats)
    preload = {"LD_PRELOAD": str(allocation_counter())}
    pools = [[Worker(side, "memory", workdir, index=90 + r, pad=int(pads[r]), extra_env=preload) for side in sides]
             for r in range(repeats)]
    try:
        for worker in (w for pool in pools for w in pool):
            worker.ask(replace(setup[worker.side.label], cases=()), MemoryReady)
        return [_measure_case(pools, spec, thresholds, rng) for spec in specs]
    finally:
        for worker in (w for pool in pools for w in pool):
            worker.close()


def _measure_case(pools: Sequence[Sequence[Worker]], spec: CaseSpec, thresholds: Thresholds,
                  rng: np.random.Generator) -> MeasureFinding:
    answers: dict[str, list[Footprint]] = {w.side.label: [] for w in pools[0]}
    for pool in pools:
        for index in rng.permutation(len(pool)):
            worker = pool[int(index)]
            answers[worker.side.label].append(worker.ask(MeasureMemory(spec, MEASURED_CALLS, WARMUP_CALLS), Footprint))
    peaks = {label: [a.peak_kib for a in got] for label, got in answers.items()}
    per_call = {f"{label}_{what}_per_call": float(np.median([getattr(a, f"{what}_per_call") for a in got]))
                for label, got in answers.items()
                for what in ("retained_kib", "allocated_bytes", "allocated_blocks")}
    return judge_repeats("memory", spec.id, peaks["base"], peaks["head"],
                         thresholds.for_case(spec.id, "memory"), {**per_call, "calls": MEASURED_CALLS})
