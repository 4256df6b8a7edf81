"""Instructions per call, A/B: the one-thread cases run under valgrind's callgrind, which counts the instructions
the program executes on a simulated CPU — the same count whatever else the machine is doing.

Each side's cases run in one valgrind process (`worker.py instructions`) with instrumentation off until a case's
timed calls: a tiny C library (compiled once into the cache from valgrind's `callgrind.h`) switches it on, zeroes
the counts, and after the calls dumps them under the case's name. A dump gives the instructions of those calls in
all, and per function, so a change is also shown where it happened.

Limits, stated with every result: valgrind runs the code path its simulated CPU selects (it has no AVX-512, so on
an AVX-512 machine MLAS and oneDNN pick their AVX2 kernels: the counts are of those); it sees no threading or
memory-bandwidth effect (one-thread cases only); and it is slow (the gate's log gives its seconds per side).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optcv.errors import GateSetupError, MissingDependency
from optcv.gate.native import compiled_library, missing_compiler
from optcv.gate.sides import Side
from optcv.gate.verdict import MeasureFinding, Thresholds, judge_repeats
from optcv.gate.worker.protocol import CaseSpec, Counted, CountInstructions, Failed, Setup, decode, encode
from optcv.gate.workers import WORKER_SCRIPT, worker_start
from optcv.measure.reference import COURSE_MODELS

# Valgrind processes per side. One process's count is exact, but identical code under another tree's path or
# environment counts differently (dict collisions and method-cache hits move with string hashes and addresses:
# -0.3 % on TutorialNet's PyTorch call here), so each repeat gets its own hash seed and environment padding,
# the same on both sides, and the interval is the spread that this leaves.
REPEATS = 2  # GateConfig.instruction_repeats
# Calls counted per case and repeat, the same on both sides. One-off work (an arena taking its next block, a pool
# growing) landed in some processes' counted calls and not others': +0.5 ... +4 % on TutorialNet's ONNX Runtime
# call counted over 20 calls after 2 warm-up calls; more warm-up moves it out, more calls dilute what is left.
# (A first counted call to size the rest was tried: callgrind's count of one call right after switching
# instrumentation on came out wrong, even negative.) A net with more arithmetic gets fewer calls, as many as make
# COUNTED_MACS multiply-accumulates (100 of TutorialNet's 0.65 M, 25 of TunableNet's 3.4 M): valgrind runs float
# GEMM kernels some 500 times slower than the machine (a 67 M-MAC float32 matrix product, 0.01 s natively, 5.8 s
# under it), and at 100 calls TunableNet's float cases took 20-40 s each of every process.
COUNTED_CALLS = 100
MIN_COUNTED_CALLS = 25
COUNTED_MACS = 65_000_000
WARMUP_CALLS = 10
# A case whose call takes longer than this under valgrind before counting starts (its JIT alone, ~5-10x slower
# than the machine) would take minutes per counted call; it is reported as not counted, with its time.
MAX_WARMUP_S = 0.5
TOP_FUNCTIONS = 8
HEADER = Path("/usr/include/valgrind/callgrind.h")
# Code without a symbol (ONNX Runtime's stripped library, OpenVINO's JIT-compiled kernels) sits at addresses that
# differ between processes: one row per binary for all of it.
UNNAMED = "code without a symbol"
CLIENT_SOURCE = """#include <valgrind/callgrind.h>
void optcv_callgrind_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void optcv_callgrind_stop(const char *label) { CALLGRIND_DUMP_STATS_AT(label); CALLGRIND_STOP_INSTRUMENTATION; }
"""


class InstructionCountsUnavailable(MissingDependency):
    """valgrind, its header or a C compiler is missing: the counts cannot be taken here."""


def client_library(cache_dir: Path | None = None) -> Path:
    """The client-request library, compiled once per source into the cache."""
    missing = [what for what, ok in (("valgrind", shutil.which("valgrind")), (str(HEADER), HEADER.is_file()))
               if not ok] + missing_compiler()
    if missing:
        raise InstructionCountsUnavailable("--measure instructions", " and ".join(missing),
                                           "apt-get install valgrind gcc (Debian's), or drop --measure instructions")
    return compiled_library(CLIENT_SOURCE, "optcv-callgrind", cache_dir)


def hardware_counters() -> str:
    """Whether `perf stat` can count instructions here, as a sentence (these gates never use it: its counts move
    with the machine's load and other processes, and many VMs expose none)."""
    if not shutil.which("perf"):
        return "perf is not installed"
    done = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True)
    counted = next((line.split(",")[0] for line in done.stderr.splitlines() if "instructions" in line), "")
    return ("perf counts instructions here" if counted.strip().isdigit()
            else f"perf stat -e instructions said {counted.strip() or done.stderr.strip()[:80]!r}")


def start_count(side: Side, specs: Sequence[CaseSpec], setup: Setup, workdir: Path, tag: str,
                library: Path, repeat: int) -> dict[str, Any]:
    """Start one valgrind process of `side` through every case (hash seed and padding from `repeat`);
    `collect_count` waits for it and reads per case instructions per call and per function."""
    out = workdir / f"callgrind-{side.label}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
               f"--callgrind-out-file={out}/cg.%p",
               "--compress-strings=no", "--compress-pos=no", "--dump-line=no", side.python, str(WORKER_SCRIPT),
               "instructions"]
    request = CountInstructions(setup.inputs, setup.artifacts, tuple(specs), str(library), COUNTED_CALLS,
                                MIN_COUNTED_CALLS, COUNTED_MACS, MAX_WARMUP_S, WARMUP_CALLS)
    env = {**side.env(int(np.random.default_rng(repeat).integers(0, 4096))), "PYTHONHASHSEED": str(repeat)}
    with open(out / "valgrind.log", "w") as log:  # a file, not a pipe: nobody reads it while valgrind runs
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                   env=env, cwd=workdir, preexec_fn=worker_start)
    assert process.stdin is not None
    process.stdin.write(encode(request))
    process.stdin.close()
    return {"process": process, "side": side, "out": out}


def collect_count(started: dict[str, Any]) -> dict[str, Any]:
    """A started count's per-case results, once its valgrind process has ended."""
    process, side, out = started["process"], started["side"], started["out"]
    stdout = process.stdout.read()
    process.wait()
    stderr = (out / "valgrind.log").read_text(errors="replace")
    answer = decode(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    if process.returncode or not isinstance(answer, Counted):
        tail = answer.error if isinstance(answer, Failed) else (stderr.strip().splitlines() or ["no output"])[-1]
        raise GateSetupError(f"the {side.label} side's instruction count under valgrind failed: {tail}")
    # This process's main thread only: a child it forks writes its own file, and a runtime's background thread
    # (OpenVINO loading its plugins after import) overlapped the first case's calls in some processes and not
    # in others, by up to +1.2 % on TutorialNet's PyTorch call. The cases run on one thread, the calling one.
    dumps = {d["label"]: d for d in map(read_dump, out.glob(f"cg.{process.pid}.*-01"))}
    return {"counts": {case: {"per_call": dumps[case]["total"] / n, "calls": n,
                              "functions": {k: v / n for k, v in dumps[case]["functions"].items()}}
                       for case, n in answer.calls.items()},
            "warmup_s": answer.warmup_s, "case_s": answer.case_s, "cpu_capability": answer.cpu_capability}


def read_dump(path: Path) -> dict[str, Any]:
    """A callgrind dump (uncompressed names, --dump-line=no): its trigger label, total Ir and self Ir per
    function. A cost line after `calls=` is the call's inclusive cost and is not the caller's own."""
    label, total, current, binary, skip_next = "", 0, "", "", False
    functions: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("desc: Trigger: Client Request: "):
            label = line.split("Client Request: ", 1)[1].strip()
        elif line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
        elif line.startswith("ob="):
            binary = Path(line[3:].strip()).name
        elif line.startswith("fn="):
            current = f"{UNNAMED} in {binary or '?'}" if line[3:].startswith("0x") else line[3:]
        elif line.startswith("calls="):
            skip_next = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip_next:
                skip_next = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                functions[current] = functions.get(current, 0) + int(parts[1])
    return {"label": label, "total": total, "functions": functions}


def changed_functions(base: Sequence[dict[str, float]], head: Sequence[dict[str, float]],
                      top: int = TOP_FUNCTIONS) -> list[dict[str, float | str]]:
    """The functions whose instructions per call changed most (median over repeats), largest change first."""
    names = set().union(*base, *head)
    rows: list[dict[str, float | str]] = []
    for name in names:
        b = float(np.median([r.get(name, 0.0) for r in base]))
        h = float(np.median([r.get(name, 0.0) for r in head]))
        if b != h:
            rows.append({"function": name, "base_per_call": b, "head_per_call": h, "change_per_call": h - b})
    return sorted(rows, key=lambda r: -abs(float(r["change_per_call"])))[:top]


def counted(specs: Sequence[CaseSpec]) -> list[CaseSpec]:
    """The cases instructions are counted for: batch 1 on one thread, of the course's models and of declared
    ones. Under valgrind, batched calls, training steps and the torchvision reference nets' set-up (OpenVINO's
    compilation above all) take minutes per case."""
    return [s for s in specs if s.threads == 1 and s.batch == 1 and s.kind == "predict"
            and (s.declared or s.model in COURSE_MODELS)]


def measure_instructions(sides: Sequence[Side], specs: Sequence[CaseSpec], setup: dict[str, Setup],
                         thresholds: Thresholds, workdir: Path, seed: int = 0, log: Callable[[str], None] = print,
                         repeats: int = REPEATS) -> tuple[list[MeasureFinding], list[str]]:
    """Per counted case, instructions per call of each side over `repeats` valgrind processes, judged with the rule
    of every measure; the functions that changed most go with it."""
    library = client_library()
    chosen = counted(specs)
    jobs = [(repeat, side) for repeat in range(repeats) for side in sides]
    done = _run_all(jobs, lambda repeat, side: start_count(side, chosen, setup[side.label], workdir, str(repeat),
                                                            library, seed + repeat), log)
    runs = {side.label: [done[(repeat, side.label)] for repeat in range(repeats)] for side in sides}
    everywhere = [s.id for s in chosen if all(s.id in r["counts"] for rs in runs.values() for r in rs)]
    return [_finding(case, runs, thresholds) for case in everywhere], _notes(len(specs) - len(chosen), runs)


def _run_all(jobs: list[tuple[int, Side]], start: Callable[[int, Side], dict[str, Any]], log: Callable[[str], None]
             ) -> dict[tuple[int, str], dict[str, Any]]:
    """Every (repeat, side) process, as many at once as the machine has cores: a count does not depend on what else
    runs, and valgrind uses one core, so a core that one process leaves is taken by the next, not left idle
    while the other side's process of the same repeat finishes."""
    waiting = list(jobs)
    running: list[tuple[int, Side, float, dict[str, Any]]] = []
    done: dict[tuple[int, str], dict[str, Any]] = {}
    while waiting or running:
        while waiting and len(running) < max(os.cpu_count() or 1, 1):
            repeat, side = waiting.pop(0)
            running.append((repeat, side, time.perf_counter(), start(repeat, side)))
        ended = [r for r in running if r[3]["process"].poll() is not None]
        for item in ended:
            repeat, side, started_at, count = item
            running.remove(item)
            done[(repeat, side.label)] = result = collect_count(count)
            seconds = time.perf_counter() - started_at
            log(f"instructions: {len(done)}/{len(jobs)}, the {side.label} side's repeat {repeat + 1}: {seconds:.0f} s "
                f"under valgrind ({_where_the_time_went(result, seconds)})")
        if not ended:
            time.sleep(0.2)
    return done


def _where_the_time_went(process: dict[str, Any], seconds: float) -> str:
    """A process's seconds per case (set-up, warm-up and counted calls) and the rest (valgrind and Python starting),
    so that a slow gate says what to leave out."""
    cases = ", ".join(f"{case} {s:.0f} s" for case, s in process["case_s"].items())
    return f"start-up {max(seconds - sum(process['case_s'].values()), 0.0):.0f} s; {cases}"


def _notes(left_out: int, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What the counts are of (the kernels valgrind's CPU selects), and which cases they leave out."""
    import torch

    native = torch.backends.cpu.get_cpu_capability()
    simulated = sorted({r["cpu_capability"] for rs in runs.values() for r in rs})
    notes = [f"instructions: PyTorch's CPU capability is {native} on this machine and {', '.join(simulated)} under "
             "valgrind" + ("" if simulated == [native] else ": the counts are of other kernels than the timings")
             + f"; hardware counters: {hardware_counters()}"]
    if left_out:
        notes.append(f"instructions not counted for {left_out} case(s): only batch 1, one thread, of the course's "
                     "and declared models are (the others take minutes each under valgrind)")
    notes += [f"instructions not counted for {case}: a call took {seconds:.2f} s under valgrind before counting "
              f"(more than {MAX_WARMUP_S} s; counted, minutes per call)" for case, seconds in not_counted(runs).items()]
    return notes


def not_counted(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """The cases left out for their time under valgrind: the slowest warm-up call, in s."""
    slowest: dict[str, float] = {}
    for rs in runs.values():
        for r in rs:
            for case, seconds in r["warmup_s"].items():
                if case not in r["counts"]:
                    slowest[case] = max(seconds, slowest.get(case, 0.0))
    return slowest


def _finding(case: str, runs: dict[str, list[dict[str, Any]]], thresholds: Thresholds) -> MeasureFinding:
    base = [r["counts"][case] for r in runs["base"]]
    head = [r["counts"][case] for r in runs["head"]]
    detail = {"calls": [c["calls"] for c in base + head],
              "cpu_capability": {label: r[0]["cpu_capability"] for label, r in runs.items()},
              "functions": changed_functions([b["functions"] for b in base], [h["functions"] for h in head])}
    return judge_repeats("instructions", case, [b["per_call"] for b in base], [h["per_call"] for h in head],
                         thresholds.for_case(case, "instructions"), detail)
