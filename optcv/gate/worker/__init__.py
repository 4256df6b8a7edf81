"""The A/B gate's worker: the measuring harness each side's interpreter runs (`__main__.py`), with that side's
source tree first on sys.path.

It is not code under test, so both sides run these same files (the head's) while every model, export, predictor
and training step comes from the side's own `optcv` (`side.side_module`). It talks JSON lines: `build` trains and
exports the models with the side's code (cached by optcv.build_cache); `serve` answers set-up, timing and profiling
requests one at a time, so the gate decides which worker runs when; `memory` measures each case's resident memory
in a child of its own; `instructions` runs the cases under callgrind. It imports only the standard library and
NumPy before the side's optcv, and no optcv module by name but the side's (an import-linter contract).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .build import build_models
from .cases import CASE_VARIABLE, Case
from .measures import count_instructions, serve_memory
from .operators import profile
from .protocol import (
    Build,
    CountInstructions,
    Exit,
    Failed,
    Profile,
    Ready,
    Reply,
    Setup,
    Time,
    Timed,
    decode,
    encode,
    failure,
)
from .side import optcv_file, versions


def serve(stdin: Any, reply: Any) -> None:
    cases: dict[str, Case] = {}
    for line in stdin:
        try:
            request = decode(line)
            if isinstance(request, Setup):
                inputs = {name: np.load(path) for name, path in request.inputs.items()}
                for spec in request.cases:
                    cases[spec.id] = Case(spec, request.artifacts, inputs)
                answer: Reply = Ready(optcv_file(), versions(), os.getpid(), {k: c.settings for k, c in cases.items()})
            elif isinstance(request, Time):
                os.environ[CASE_VARIABLE] = request.case
                answer = Timed(tuple(cases[request.case].time(request.calls)))
            elif isinstance(request, Profile):
                answer = profile(cases[request.case], request.calls)
            elif isinstance(request, Exit):
                return
            else:
                answer = Failed(f"a serving worker does not answer {type(request).__name__}")
        except Exception as exc:  # reported to the gate as a set-up error of this side
            answer = failure(exc)
        reply.write(encode(answer) + "\n")
        reply.flush()


# The workers that answer one request and end: the request's type, and what answers it.
ONE_SHOT: dict[str, tuple[type, Callable[[Any], Reply]]] = {"build": (Build, build_models),
                                                           "instructions": (CountInstructions, count_instructions)}


def main() -> None:
    # Replies go through a private copy of stdout; anything a library prints goes to stderr instead.
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if len(sys.argv) == 2 and sys.argv[1] in ONE_SHOT:
        kind, handler = ONE_SHOT[sys.argv[1]]
        try:
            request = decode(sys.stdin.read())
            answer = handler(request) if isinstance(request, kind) else Failed(
                f"a {sys.argv[1]} worker needs a {kind.__name__} request, not {type(request).__name__}")
        except Exception as exc:
            answer = failure(exc)
        reply.write(encode(answer) + "\n")
    elif sys.argv[1:] in (["serve"], ["memory"]):
        (serve if sys.argv[1] == "serve" else serve_memory)(sys.stdin, reply)
        reply.flush()
        sys.stderr.flush()
        # Asked to exit, a serving worker has nothing left to say, and the interpreter's teardown (freeing every
        # model, session and thread pool of PyTorch, ONNX Runtime and OpenVINO) is seconds the gate would wait for.
        os._exit(0)
    else:
        sys.exit("usage: optcv/gate/worker/__main__.py build|serve|memory|instructions (JSON on standard input)")
    reply.flush()


