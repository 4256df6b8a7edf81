"""The A/B gate: two sides (an interpreter plus a source tree) timed side by side in one job.

A side is a revision checked out with `git worktree`, or the working tree under another interpreter
(`--base-python`). Each side builds its reference models with its own code, then runs in its own worker
processes (`optcv/gate_worker.py`, the same harness for both), several per side. Case by case, every
worker warms up identically, then rounds run: in each round every worker times the same number of calls,
one worker at a time, in a seeded random order. No absolute time from another run enters a decision.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from optcv.errors import OptcvError
from optcv.gate import CaseFinding, GateResult, GateSetupError, Thresholds, judge, paired_change

WORKER_SCRIPT = Path(__file__).resolve().parent / "gate_worker.py"
MODELS = ("tutorial", "tunable")
BACKENDS = ("pytorch", "onnxruntime")
PREDICT_IMAGES = 2048
# Batched and training cases are gated at one thread: on a 2-core machine shared with the gate's own
# processes, all-core runs of 5-50 ms calls moved ±5-20 % between rounds of identical code (measured here),
# too much to see 5 %. The suite still times them at every thread count.
BATCH_THREADS = 1
# glibc's malloc raises its mmap threshold to the size of the last freed mmapped block, so where a large
# tensor lands (page-aligned or inside the heap) depends on the process's history; PyTorch's batched and
# training calls then ran up to 14-22 % apart in processes of identical code, and a 5 % slowdown measured
# +13.9 % here. A fixed threshold puts every large buffer at a page boundary in every worker: unchanged
# pairs then agreed within 1 % and the 5 % read +3.8 … +5.4 %. Both sides get the same settings.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "1073741824", "MALLOC_TOP_PAD_": "0"}


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class GateConfig:
    models: tuple[str, ...] = MODELS
    workers_per_side: int = 2
    min_rounds: int = 20
    turn_ms: float = 20.0  # timed work per worker turn; short turns let both sides share the machine's moods
    case_seconds: float = 3.0  # timed work per case, both sides: sets the number of rounds
    # A noisy case (a training step on a shared VM) keeps adding rounds, up to max_case_seconds, until its
    # interval's half-width is at most target_half_width_pct. The rule looks at the interval's width only,
    # never at the estimate, so it cannot steer the verdict.
    target_half_width_pct: float = 1.0
    max_case_seconds: float = 9.0
    warmup_ms: float = 200.0
    gap_ms: float = 2.0  # idle time between turns, so the last worker's spinning threads settle first
    batch_sizes: tuple[int, ...] = (64, 256)
    train_batch: int = 64
    cases: tuple[str, ...] = ()  # glob patterns; empty: every case
    profile_ms: float = 500.0  # per side, for a failing case's operator comparison
    # A case that fails is timed again with a fresh pool of workers before the gate says so: a process's
    # memory placement alone moved identical code by +17 % once in CI, and a real slowdown survives the re-test.
    retest_failures: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown or not self.models:
            name = unknown[0] if unknown else "(none)"
            raise OptcvError(f"unknown gate model {name}: choose from {', '.join(MODELS)}")
        if self.workers_per_side < 1 or self.min_rounds < 5:
            raise OptcvError("the gate needs at least 1 worker per side and 5 rounds")


def case_specs(config: GateConfig) -> list[dict[str, Any]]:
    """Every gated case: each backend at batch 1 (1 thread and all cores), batched at all cores, and a
    training step, for each model."""
    import fnmatch

    cores = all_cores()
    specs: list[dict[str, Any]] = []
    for model in config.models:
        for backend in BACKENDS:
            for threads in sorted({1, cores}):
                specs.append({"model": model, "kind": "predict", "backend": backend, "batch": 1, "threads": threads})
        for batch in config.batch_sizes:
            for backend in BACKENDS:
                specs.append({"model": model, "kind": "predict", "backend": backend, "batch": batch,
                              "threads": BATCH_THREADS})
        specs.append({"model": model, "kind": "train", "backend": "pytorch", "batch": config.train_batch,
                      "threads": BATCH_THREADS})
    for spec in specs:
        what = spec["backend"] if spec["kind"] == "predict" else "train"
        spec["id"] = f"{spec['model']}/{what}/b{spec['batch']}/t{spec['threads']}"
    if config.cases:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s["id"], p) for p in config.cases)]
        if not specs:
            raise OptcvError(f"no gate case matches {' '.join(config.cases)}; case names look like "
                             "tutorial/onnxruntime/b1/t1 or tunable/train/b64/t2")
    return specs


# ---------------------------------------------------------------------------------------------------------
# Sides


@dataclass(frozen=True)
class Side:
    label: str
    python: str
    tree: Path  # the folder that holds the `optcv` package
    revision: str | None = None  # the commit, or None for a working tree
    extra_path: tuple[Path, ...] = ()  # put before the tree on PYTHONPATH (the self-test's injection)

    def env(self, pad: int = 0) -> dict[str, str]:
        env = dict(os.environ)
        env["OPTCV_GATE_PAD"] = "x" * pad  # the same per worker index on both sides; see worker_pool
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*self.extra_path, self.tree))
        env["PYTHONHASHSEED"] = "0"
        env.update(MALLOC_ENV)
        env.pop("PYTHONSTARTUP", None)
        return env

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "python": self.python, "tree": str(self.tree.resolve()), "revision": self.revision,
                "injection": [str(p) for p in self.extra_path]}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise GateSetupError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


def repo_root(tree: Path) -> Path | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def default_base_revision(repo: Path) -> str:
    """The merge-base with the main branch when on another branch, else HEAD~1."""
    branch = subprocess.run(["git", "-C", str(repo), "rev-parse", "--abbrev-ref", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for main in ("main", "master", "origin/main", "origin/master"):
        exists = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{main}^{{commit}}"],
                                capture_output=True, text=True).returncode == 0
        if exists and branch not in ("HEAD", main, main.split("/")[-1]):
            return git(repo, "merge-base", "HEAD", main)
    return "HEAD~1"


def resolve_revision(repo: Path, revision: str) -> str | None:
    """The commit `revision` names, or None where the history does not have it (a first commit, a shallow
    clone)."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


@contextmanager
def revision_tree(repo: Path, commit: str) -> Iterator[Path]:
    """`commit` checked out with `git worktree` into a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="optcv-gate-base-"))
    git(repo, "worktree", "add", "--detach", "--quiet", str(folder / "tree"), commit)
    try:
        yield folder / "tree"
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(folder / "tree")],
                       capture_output=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def check_python(python: str) -> str:
    """`python` as an absolute path (not resolved: a venv's interpreter is a link that must stay one), once
    it has shown it can import what the worker needs."""
    python = os.path.abspath(python)
    done = subprocess.run([python, "-c", "import sys, numpy, torch, onnxruntime; print(sys.version.split()[0])"],
                          capture_output=True, text=True) if Path(python).exists() else None
    if done is None or done.returncode != 0:
        detail = "does not exist" if done is None else (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise GateSetupError(f"base interpreter {python}: {detail}; give a Python with numpy, torch and "
                             "onnxruntime installed (e.g. another venv's bin/python)")
    return python


# ---------------------------------------------------------------------------------------------------------
# Workers


def _fixed_address_layout() -> None:
    """Turn address-space randomisation off for the worker (Linux `setarch -R`).

    Where each process's memory lands shifts PyTorch's per-call time by up to ±10 % between processes of
    identical code (measured here: one process's median 15 % above another's), a bias that no number of
    rounds averages out. With a fixed layout, identical code gets identical placement on both sides.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = libc.personality(0xFFFFFFFF)
        libc.personality(current | 0x0040000)  # ADDR_NO_RANDOMIZE
    except (OSError, AttributeError):
        pass


class Worker:
    """One worker process of a side, answering one JSON request at a time."""

    def __init__(self, side: Side, mode: str, workdir: Path, index: int = 0, pad: int = 0, pair: int = 0):
        self.side = side
        self.pair = pair
        self.log_path = workdir / f"{side.label}-{mode}-{index}.log"
        self._log: IO[str] = open(self.log_path, "w")
        try:
            self.process = subprocess.Popen([side.python, str(WORKER_SCRIPT), mode], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self._log, env=side.env(pad),
                                            cwd=workdir, text=True, preexec_fn=_fixed_address_layout)
        except OSError as exc:
            self._log.close()
            raise GateSetupError(f"cannot start the {side.label} side's interpreter {side.python}: {exc}") from exc

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        import json

        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        return self.answer(line, "worker")

    def answer(self, line: str, what: str) -> dict[str, Any]:
        """A reply line as data, or a set-up error naming the side, its revision and what failed."""
        import json

        where = f"the {self.side.label} side's {what} ({self.side.revision or self.side.tree})"
        if not line:
            raise GateSetupError(f"{where} stopped: {self._tail()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise GateSetupError(f"{where} failed: {answer['error']}")
        return answer

    def _tail(self) -> str:
        self._log.flush()
        lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else f"exit code {self.process.poll()}"

    def request_exit(self) -> None:
        """Ask the worker to exit without waiting, so several workers tear down at once."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write('{"op": "exit"}\n')
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


def build_artifacts(side: Side, workdir: Path, models: Sequence[str], data_dir: str | Path,
                    cache_dir: Path) -> dict[str, Any]:
    """Each model trained and exported by the side's own code (or taken from its cache)."""
    return build_all_artifacts([side], workdir, models, data_dir, cache_dir)[side.label]


def build_all_artifacts(sides: Sequence[Side], workdir: Path, models: Sequence[str], data_dir: str | Path,
                        cache_dir: Path) -> dict[str, dict[str, Any]]:
    """Every side's artifacts, the sides' builders running at once (a cached build is mostly imports)."""
    import json

    request = json.dumps({"models": list(models), "data_dir": str(data_dir), "cache_dir": str(cache_dir)})
    builders = [Worker(side, "build", workdir) for side in sides]
    answers: dict[str, dict[str, Any]] = {}
    try:
        for worker in builders:
            assert worker.process.stdin is not None
            worker.process.stdin.write(request)
            worker.process.stdin.close()
        for worker in builders:
            assert worker.process.stdout is not None
            line = worker.process.stdout.readline()
            worker.process.wait()
            answers[worker.side.label] = worker.answer(line, "model build")
    finally:
        for worker in builders:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
            worker._log.close()
    for side in sides:
        expected = (side.tree / "optcv" / "__init__.py").resolve()
        if Path(answers[side.label]["optcv_file"]).resolve() != expected:
            raise GateSetupError(f"the {side.label} side imported optcv from {answers[side.label]['optcv_file']}, "
                                 f"not {expected}")
    return answers


@contextmanager
def worker_pool(sides: Sequence[Side], per_side: int, workdir: Path, setup: dict[str, dict[str, Any]],
                seed: int = 0) -> Iterator[list[Worker]]:
    """`per_side` serving workers for each side, set up with that side's artifacts and the cases.

    Memory layout shifts a process's speed by several % (the environment's size alone moves the stack), so
    worker i of each side gets the same environment padding, a different one per i: identical code gets
    identical layouts, and several layouts are sampled.
    """
    pads = np.random.default_rng([seed, len(sides) * per_side]).integers(0, 4096, per_side)
    workers: list[Worker] = []
    try:
        # Pair by pair, base then head: processes set up at about the same time get memory from about the same
        # place, and where a worker's memory lies moved its speed by up to 20 % here (workers set up side by
        # side after each other made identical code read +17 % in CI); this way a pair shares its luck.
        for i in range(per_side):
            workers += [Worker(side, "serve", workdir, i + seed * per_side, int(pads[i]), pair=i) for side in sides]
        for worker in workers:  # started together, set up one by one: their imports overlap
            info = worker.ask(setup[worker.side.label])
            expected = (worker.side.tree / "optcv" / "__init__.py").resolve()
            if Path(info["optcv_file"]).resolve() != expected:
                raise GateSetupError(f"a {worker.side.label} worker imported optcv from {info['optcv_file']}, "
                                     f"not {expected}")
            worker.settings = info["settings"]  # type: ignore[attr-defined]
        yield workers
    finally:
        for worker in workers:
            worker.request_exit()
        for worker in workers:
            worker.close()


# ---------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class CaseSamples:
    case: str
    calls_per_turn: int
    # Per worker index, per round: the median µs of that worker's calls in its turn.
    base_us: list[list[float]] = field(default_factory=list)
    head_us: list[list[float]] = field(default_factory=list)


def same_length_trees(side: Side, workdir: Path) -> Side:
    """The side with its tree reached through `workdir/sides/<label>`, so both sides' paths (and so their
    environments and module paths) have the same length."""
    link = workdir / "sides" / side.label
    link.parent.mkdir(exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(side.tree.resolve(), target_is_directory=True)
    return replace(side, tree=link)


def time_case(workers: Sequence[Worker], case: str, config: GateConfig, rng: np.random.Generator) -> CaseSamples:
    """Warm every worker up alike, then rounds (at least `config.min_rounds`, about `config.case_seconds` of
    timed work) in which every worker takes one turn of the same number of calls, in a random order."""
    import time

    probe = [np.median(w.ask({"op": "time", "case": case, "calls": 3})["ns"]) for w in workers]
    per_call_ns = float(np.median(probe))
    warmup = int(min(2000, max(3, config.warmup_ms * 1e6 / per_call_ns)))
    for worker in workers:
        worker.ask({"op": "time", "case": case, "calls": warmup})
    calls = int(min(1000, max(1, round(config.turn_ms * 1e6 / per_call_ns))))
    turn_seconds = calls * per_call_ns / 1e9
    round_seconds = len(workers) * turn_seconds
    rounds = max(config.min_rounds, int(config.case_seconds / round_seconds))
    most = max(rounds, int(config.max_case_seconds / round_seconds))
    per_side = len(workers) // 2
    samples = CaseSamples(case, calls, [[] for _ in range(per_side)], [[] for _ in range(per_side)])
    while True:
        for _ in range(rounds - len(samples.base_us[0])):
            for index in rng.permutation(len(workers)):
                worker = workers[int(index)]
                time.sleep(config.gap_ms / 1000)
                median_us = float(np.median(worker.ask({"op": "time", "case": case, "calls": calls})["ns"])) / 1000
                side = samples.base_us if worker.side.label == "base" else samples.head_us
                side[worker.pair].append(median_us)
        change = paired_change(samples.base_us, samples.head_us, resamples=500, seed=config.seed)
        if rounds >= most or (change.ci_high_pct - change.ci_low_pct) / 2 <= config.target_half_width_pct:
            return samples
        rounds = min(most, rounds + max(5, rounds // 4))


def profile_case(workers: Sequence[Worker], case: str, calls: int) -> dict[str, Any]:
    """Operator times per call on one worker of each side, for a failing case."""
    out = {}
    for label in ("base", "head"):
        worker = next(w for w in workers if w.side.label == label)
        out[label] = worker.ask({"op": "profile", "case": case, "calls": calls})
    return out


def prepare_inputs(workdir: Path, data_dir: str | Path | None) -> tuple[dict[str, str], str]:
    """The identical inputs both sides are timed on: real test images, and training images with labels."""
    from optcv.data import load_cifar10, resolve_data_dir

    root = resolve_data_dir(data_dir)
    data = load_cifar10(root, progress=False)
    arrays = {"predict_images": data.test.images[:PREDICT_IMAGES].numpy(),
              "train_images": data.train.images[:512].numpy(), "train_labels": data.train.labels[:512].numpy()}
    paths = {}
    for name, array in arrays.items():
        paths[name] = str(workdir / f"{name}.npy")
        np.save(paths[name], array)
    return paths, str(root)


Log = Callable[[str], None]


def measure(base: Side, head: Side, config: GateConfig, thresholds: Thresholds, *, data_dir: str | Path | None,
            cache_dir: Path, workdir: Path, log: Log, progress: bool = False,
            artifacts: dict[str, dict[str, Any]] | None = None) -> GateResult:
    """Build both sides' artifacts (unless given), time every case A/B, judge each, profile the failing ones."""
    import time

    from optcv.env import environment_info

    started = time.perf_counter()
    base, head = same_length_trees(base, workdir), same_length_trees(head, workdir)
    inputs, root = prepare_inputs(workdir, data_dir)
    artifacts = dict(artifacts or {})
    missing = [side for side in (base, head) if side.label not in artifacts]
    for side in missing:
        log(f"building the {side.label} side's models ({side.revision or side.tree}, {side.python})")
    artifacts.update(build_all_artifacts(missing, workdir, config.models, root, cache_dir))
    specs = case_specs(config)
    setup = {label: {"op": "setup", "inputs": inputs, "artifacts": artifacts[label], "cases": specs}
             for label in artifacts}
    findings, settings = _time_cases((base, head), specs, config, thresholds, workdir, setup, log, progress, 0)
    flagged = [f.case for f in findings if f.failed]
    retested: list[CaseFinding] = []
    if flagged and config.retest_failures:
        log(f"re-testing {len(flagged)} flagged case(s) with fresh workers: {', '.join(flagged)}")
        again, _ = _time_cases((head, base), [s for s in specs if s["id"] in flagged], config, thresholds,
                               workdir, setup, log, progress, 1)
        confirmed = {f.case: f for f in again}
        retested = [f for f in findings if f.case in confirmed]
        findings = [confirmed.get(f.case, f) for f in findings]
    side_info = {label: {**side.describe(), "code_hash": artifacts[label]["code_hash"],
                         "versions": artifacts[label]["versions"], "settings": settings[label]}
                 for label, side in (("base", base), ("head", head))}
    protocol = {**asdict(config), "thresholds": asdict(thresholds), "statistic":
                "per worker pair, the median per-round head/base ratio; their mean; 95 % two-level percentile "
                "bootstrap (pairs, then rounds; 2000)"}
    return GateResult(side_info["base"], side_info["head"], findings, protocol, environment_info(),
                      time.perf_counter() - started, retested=retested)


def _time_cases(sides: tuple[Side, Side], specs: list[dict[str, Any]], config: GateConfig, thresholds: Thresholds,
                workdir: Path, setup: dict[str, dict[str, Any]], log: Log, progress: bool, attempt: int
                ) -> tuple[list[CaseFinding], dict[str, Any]]:
    """Every case timed A/B in one pool of fresh workers (attempt 0: the first pass; 1: the re-test, whose
    workers get other memory layouts and start head first), judged, and profiled where it failed."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([config.seed, attempt])
    findings: list[CaseFinding] = []
    with worker_pool(sides, config.workers_per_side, workdir, setup, seed=attempt) as workers:
        for spec in tqdm(specs, desc="gate" if attempt == 0 else "re-test", unit="case",
                         disable=not progress or None):
            samples = time_case(workers, spec["id"], config, rng)
            finding = judge(spec["id"], samples.base_us, samples.head_us,
                            thresholds.for_case(spec["id"]), samples.calls_per_turn, seed=config.seed)
            last_word = attempt == 1 or not config.retest_failures
            if finding.failed and last_word and config.profile_ms > 0:
                calls = max(5, int(config.profile_ms * 1000 / max(finding.base_median_us, 1.0)))
                finding = replace(finding, profile=profile_case(workers, spec["id"], min(calls, 5000)))
            findings.append(finding)
            log(f"{finding.case}: {finding.change_pct:+.1f} % ({finding.ci_low_pct:+.1f} … "
                f"{finding.ci_high_pct:+.1f}) → {finding.verdict.value}")
        settings = {w.side.label: w.settings for w in workers}  # type: ignore[attr-defined]
    return findings, settings


@contextmanager
def sides_for(against: str | None, base_python: str | None, head_tree: Path | None, repo: Path | None
              ) -> Iterator[tuple[Side, Side] | str]:
    """The base and head sides, or (when there is no second side) the reason why not."""
    import sys

    head_tree = (head_tree or Path(__file__).resolve().parent.parent).resolve()
    head = Side("head", sys.executable, head_tree)
    python = check_python(base_python) if base_python else sys.executable
    if against is None and base_python:
        yield Side("base", python, head_tree), head
        return
    repo = repo or repo_root(head_tree)
    if repo is None:
        yield f"{head_tree} is not in a git repository, so there is no base revision to time against"
        return
    revision = against or default_base_revision(repo)
    commit = resolve_revision(repo, revision)
    if commit is None:
        shallow = git(repo, "rev-parse", "--is-shallow-repository") == "true"
        if shallow:
            yield f"revision {revision} is not in this shallow clone (fetch more history: git fetch --unshallow)"
        elif against is None:
            yield f"revision {revision} does not exist: a first commit has no parent"
        else:
            raise GateSetupError(f"revision {against} does not exist in {repo}; name a commit, branch or tag")
        return
    with revision_tree(repo, commit) as tree:
        if not (tree / "optcv" / "__init__.py").is_file():
            raise GateSetupError(f"revision {revision} has no optcv package at its root; pick a later revision")
        yield Side("base", python, tree, revision=f"{revision} ({commit[:12]})"), head


def run_gate(config: GateConfig = GateConfig(), thresholds: Thresholds = Thresholds(), *, against: str | None = None,
             base_python: str | None = None, head_tree: Path | None = None, repo: Path | None = None,
             data_dir: str | Path | None = None, log: Log = lambda _m: None, progress: bool = False
             ) -> GateResult | str:
    """The A/B gate of the head (this source tree) against `against` (default: see
    `default_base_revision`) and/or another interpreter; or, without a second side, the reason."""
    from optcv.data import default_cache_dir

    with ExitStack() as stack:
        sides = stack.enter_context(sides_for(against, base_python, head_tree, repo))
        if isinstance(sides, str):
            return sides
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optcv-gate-")))
        return measure(*sides, config, thresholds, data_dir=data_dir, cache_dir=default_cache_dir(),
                       workdir=workdir, log=log, progress=progress)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------
# Without a second side: today's ratio gate, labelled as the fallback, with the baseline's machine checked.


@dataclass
class RatioFallback:
    reason: str  # why there was no second side
    findings: list[Any]  # bench.GateFinding
    machine_differences: list[str]
    baseline: str
    comparable: bool = True  # False: the baseline comes from another CPU; reported, never enforced

    @property
    def regressions(self) -> list[Any]:
        return [f for f in self.findings if not f.passed] if self.comparable else []


def run_ratio_fallback(reason: str, baseline_path: str | Path, *, models: Sequence[str] = MODELS,
                       data_dir: str | Path | None = None, n_single: int = 4000, log: Log = lambda _m: None
                       ) -> RatioFallback:
    """PyTorch ÷ ONNX Runtime speed-ups at one thread, interleaved in this run, against committed ratios."""
    import sys

    from optcv.bench import BenchConfig, load_json, ratio_gate, ratios_of, run_bench
    from optcv.data import default_cache_dir
    from optcv.env import fingerprint_differences, machine_fingerprint, same_machine
    from optcv.runtime import ModelSource, make_predictor

    baseline = load_json(baseline_path, "ratio baseline")
    differences = fingerprint_differences(baseline.get("environment", {}), machine_fingerprint())
    head = Side("head", sys.executable, Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="optcv-gate-") as tmp:
        inputs, root = prepare_inputs(Path(tmp), data_dir)
        built = build_artifacts(head, Path(tmp), models, root, default_cache_dir())
        images = np.load(inputs["predict_images"])
    measured: dict[str, dict[str, Any]] = {}
    config = BenchConfig(n_single=n_single, chunk=max(1, n_single // 20), batch_sizes=())
    for model, paths in built["models"].items():
        source = ModelSource(Path(paths["checkpoint"]), Path(paths["onnx"]))
        backends = {b: [make_predictor(b, source, 1)] for b in BACKENDS}
        log(f"ratio fallback: timing {model}")
        measured.update(ratios_of(run_bench(backends, images, config, model=model).to_dict()))
    return RatioFallback(reason, ratio_gate(measured, baseline), differences, str(baseline_path),
                         comparable=same_machine(differences))
