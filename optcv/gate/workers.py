"""The gate's worker processes: started per side with the same environment, asked one JSON request at a time."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from optcv.errors import GateSetupError
from optcv.gate.config import SETUP_ORDERS
from optcv.gate.sides import Side
from optcv.gate.worker.protocol import (
    Build,
    Built,
    Exit,
    Failed,
    Recipe,
    Reply,
    Request,
    decode,
    encode,
)

R = TypeVar("R", bound=Reply)
WORKER_SCRIPT = Path(__file__).resolve().parent / "worker" / "__main__.py"


def worker_start() -> None:
    """Run in each worker process before it starts the side's interpreter (Linux; elsewhere nothing).

    Address-space randomisation off (`setarch -R`): where each process's memory lands shifts PyTorch's per-call time
    by up to ±10 % between processes of identical code, a bias that no number of rounds averages out; with a fixed
    layout, identical code gets identical placement on both sides. And the worker is killed with the gate
    (PR_SET_PDEATHSIG): a gate killed outright cannot stop a worker that is building a model for minutes.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = libc.personality(0xFFFFFFFF)
        libc.personality(current | 0x0040000)  # ADDR_NO_RANDOMIZE
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Worker:
    """One worker process of a side, answering one JSON request at a time."""

    def __init__(self, side: Side, mode: str, workdir: Path, index: int = 0, pad: int = 0,
                 extra_env: dict[str, str] | None = None):
        self.side = side
        self.log_path = workdir / f"{side.label}-{mode}-{index}.log"
        self._log: IO[str] = open(self.log_path, "w")
        try:
            self.process = subprocess.Popen([side.python, str(WORKER_SCRIPT), mode], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self._log,
                                            env={**side.env(pad), **(extra_env or {})}, cwd=workdir,
                                            text=True, preexec_fn=worker_start)
        except OSError as exc:
            self._log.close()
            raise GateSetupError(f"cannot start the {side.label} side's interpreter {side.python}: {exc}") from exc

    def ask(self, request: Request, expect: type[R]) -> R:
        """The worker's reply to `request`, which must be an `expect`; anything else is a set-up error."""
        self.send(request)
        return self.receive(expect)

    def send(self, request: Request) -> None:
        """Send a request without waiting for its answer (`receive`), so that several workers work at once."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(encode(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker has stopped: receive() reports it with its log's last line

    def receive(self, expect: type[R], what: str = "worker") -> R:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        where = f"the {self.side.label} side's {what} ({self.side.revision or self.side.tree})"
        if not line:
            raise GateSetupError(f"{where} stopped: {self._tail()}")
        try:
            reply = decode(line)
        except ValueError as exc:
            raise GateSetupError(f"{where} answered out of protocol: {exc}") from None
        if isinstance(reply, Failed):
            raise GateSetupError(f"{where} failed: {reply.error}")
        if not isinstance(reply, expect):
            raise GateSetupError(f"{where} answered {type(reply).__name__}, not {expect.__name__}")
        return reply

    def _tail(self) -> str:
        self._log.flush()
        lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else f"exit code {self.process.poll()}"

    def request_exit(self) -> None:
        """Ask the worker to exit without waiting, so several workers tear down at once."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(encode(Exit()) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                self.process.kill()

    def close(self) -> None:
        self.request_exit()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def models_cache_key(tree: Path) -> str:
    """A key over everything the cached model builds of optcv at `tree` depend on on this machine: the benchmark
    suite's reference builds and the gate's (recipes, code, the worker's build harness, libraries, CPU). For a CI
    cache that must be saved anew when any of them changes; each entry inside is still checked on its own."""
    from dataclasses import asdict

    from optcv.build_cache import key_of, machine_inputs, source_closure
    from optcv.gate.config import MODELS, build_recipes
    from optcv.gate.worker.build import BUILD_ROLES, harness_hash
    from optcv.gate.worker.side import side_module_names
    from optcv.measure.reference import BUILD_ROOTS

    inputs = {"reference": source_closure(tree, BUILD_ROOTS),
              "gate": source_closure(tree, side_module_names(tree, BUILD_ROLES)),
              "gate_recipes": {name: asdict(r) for name, r in build_recipes(MODELS, MODELS).items()},
              "harness": harness_hash(),
              "machine": machine_inputs()}
    return f"optcv-models-{key_of(inputs)}"


def build_artifacts(side: Side, workdir: Path, recipes: Mapping[str, Recipe], data_dir: str | Path | None,
                    cache_dir: Path) -> Built:
    """Each model (optcv.gate.config.build_recipes) trained, exported and, where asked, quantised by the side's
    own code (or taken from its cache)."""
    return build_all_artifacts([side], workdir, recipes, data_dir, cache_dir)[side.label]


def build_all_artifacts(sides: Sequence[Side], workdir: Path, recipes: Mapping[str, Recipe],
                        data_dir: str | Path | None, cache_dir: Path) -> dict[str, Built]:
    """Every side's artifacts, the sides' builders running at once (a cached build is mostly imports)."""
    # Absolute: a side's worker runs in its own folder, where a path relative to the caller's means nothing.
    data = str(Path(data_dir).absolute()) if data_dir else None
    builders = [Worker(side, "build", workdir) for side in sides]
    answers: dict[str, Built] = {}
    try:
        for worker in builders:
            assert worker.process.stdin is not None
            worker.process.stdin.write(encode(Build(dict(recipes), data, str(Path(cache_dir).absolute()),
                                                    str(worker.side.tree))))
            worker.process.stdin.close()
        for worker in builders:
            answers[worker.side.label] = worker.receive(Built, "model build")
            worker.process.wait()
    finally:
        for worker in builders:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
            worker._log.close()
    for side in sides:
        expected = (side.optcv_root / "optcv" / "__init__.py").resolve()
        if Path(answers[side.label].optcv_file).resolve() != expected:
            raise GateSetupError(f"the {side.label} side imported optcv from {answers[side.label].optcv_file}, "
                                 f"not {expected}")
    return answers


def pair_orders(sides: Sequence[Side], per_side: int, order: str, seed: int) -> list[list[Side]]:
    """Per worker pair, its two sides in the order their sessions are started: base first in pairs 0 and 3 of every
    four, head first in 1 and 2 ("abba"), so that whatever coming first does to a process's speed is on both sides
    alike; the others exist to measure that effect (benchmarks/proofs/side_bias.py)."""
    if order not in SETUP_ORDERS:
        raise ValueError(f"unknown set-up order {order!r}: choose from {', '.join(SETUP_ORDERS)}")
    rng = np.random.default_rng([seed, 35])
    abba = [i % 4 in (0, 3) for i in range(per_side)]
    first_is_own: list[bool] = {
        "abba": abba,
        "base-first": [True] * per_side,
        "head-first": [False] * per_side,
        "alternate": [i % 2 == 0 for i in range(per_side)],
        "random": [bool(rng.integers(2)) for _ in range(per_side)],
    }[order]
    return [list(sides) if own else list(sides)[::-1] for own in first_is_own]


def pair_layouts(workers: int, per_side: int, attempt: int, layout_seed: int, hash_seeds: str
                 ) -> tuple[list[int], list[int]]:
    """Per worker pair, its environment padding and hash seed (the same for both of its workers): drawn from the
    gate's seed and the pass, so pairs, passes and gates sample other layouts."""
    rng = np.random.default_rng([attempt, workers, layout_seed])
    pads = rng.integers(0, 4096, per_side)
    seeds = rng.integers(1, 2**32 - 1, per_side) if hash_seeds == "per-pair" else np.zeros(per_side, dtype=int)
    return [int(p) for p in pads], [int(s) for s in seeds]
