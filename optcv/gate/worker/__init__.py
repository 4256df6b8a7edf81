"""The A/B gate's worker: the measuring harness each side's interpreter runs (`__main__.py`), with that side's
source tree first on sys.path.

It is not code under test, so both sides run these same files (the head's) while every model, export, predictor
and training step comes from the side's own `optcv` (`side.side_module`). It talks JSON lines: `build` trains and
exports the models with the side's code (cached by optcv.build_cache); `memory` measures each case's resident memory
in a child of its own; `instructions` runs the cases under callgrind. (Timing is not here: each side's pytest
sessions time the cases' tests, optcv.gate.sessions.) It imports only the standard library and
NumPy before the side's optcv, and no optcv module by name but the side's (an import-linter contract).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from .build import build_models
from .measures import count_instructions, serve_memory
from .protocol import Build, CountInstructions, Failed, Reply, decode, encode, failure

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
    elif sys.argv[1:] == ["memory"]:
        serve_memory(sys.stdin, reply)
        reply.flush()
        sys.stderr.flush()
        # Asked to exit, a serving worker has nothing left to say, and the interpreter's teardown (freeing every
        # model, session and thread pool of PyTorch, ONNX Runtime and OpenVINO) is seconds the gate would wait for.
        os._exit(0)
    else:
        sys.exit("usage: optcv/gate/worker/__main__.py build|memory|instructions (JSON on standard input)")
    reply.flush()


