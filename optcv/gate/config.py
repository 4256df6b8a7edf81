"""What the A/B gate times: its settings and its cases."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from optcv.declared.config import DeclaredModel, load_declarations
from optcv.errors import OPTIONAL_MODULES, MissingDependency, OptcvError
from optcv.gate.worker.protocol import CaseSpec, DeclaredRecipe, Recipe, ReferenceRecipe
from optcv.measure.reference import REFERENCE_MODELS, timing_recipe
from optcv.runtime import BACKENDS as REGISTRY
from optcv.runtime import backend_unavailable
from optcv.training.models import arch_name

MODELS = tuple(REFERENCE_MODELS)
BACKENDS = tuple(REGISTRY)
# The pull-request selection of the suite's cases (benchmarks/test_latency.py), 18 tests, about 3 minutes warm: every
# backend but torch-compile at batch 1 on one thread on every reference model, TutorialNet's batch 64 in ONNX Runtime
# and its training step. torch-compile prepares each shape for 12-35 s in every session (four a side), so it is gated
# in `--cases all` (nightly), which adds it, two threads, every backend batched and every training step.
DEFAULT_CASES = ("*/pytorch/b1/t1", "*/onnxruntime/b1/t1", "*/onnxruntime-int8/b1/t1", "*/openvino/b1/t1",
                 "tutorial/onnxruntime/b64/t1", "tutorial/train/b64/t1")
ALL_CASES = "all"
MEASURES = ("time", "memory", "instructions")
HASH_SEEDS = ("per-pair", "fixed")  # optcv.gate.workers.pair_layouts
SETUP_ORDERS = ("abba", "base-first", "head-first", "alternate", "random")  # optcv.gate.workers.pair_orders


@dataclass(frozen=True)
class GateConfig:
    models: tuple[str, ...] = MODELS
    backends: tuple[str, ...] = BACKENDS
    # Worker pairs are the interval's unit (optcv.gate.verdict): with 2, a t interval has 1 degree of freedom.
    workers_per_side: int = 4
    # A pair's two workers are set up at the same moment, one per core, so neither is set up first on a machine
    # the other has already warmed (benchmarks/proofs/side_bias.py); the others measure what an order does.
    setup_order: str = "abba"  # optcv.gate.workers.pair_orders: the sessions' start order
    # Both workers of a pair share a hash seed, a different one per pair, so where dicts place the sides' differing
    # paths is sampled like the memory layout, not fixed for the whole gate; "fixed" (0 for all) measures that.
    hash_seeds: str = "per-pair"
    # The head runs from a copy of the working tree shaped like the base's worktree, so the sides differ in their
    # code alone and an edit during the gate cannot reach the head (optcv.gate.sides.copy_of_working_tree).
    copy_head_tree: bool = True
    # Each worker pair runs its sides from copies of their own (optcv.gate.sides.pair_tree), so whatever a tree's
    # files and paths do to a process's speed varies between pairs, where the interval over pairs sees it.
    tree_per_pair: bool = True
    min_rounds: int = 20
    turn_ms: float = 20.0  # timed work per worker turn; short turns let both sides share the machine's moods
    case_seconds: float = 3.0  # timed work per case, both sides: sets the number of rounds
    # A noisy case (a training step on a shared VM) keeps adding rounds until its interval's half-width, or
    # the part of it that the rounds' noise makes, is at most target_half_width_pct; the rest is the worker
    # pairs' disagreement, which more rounds in the same processes do not settle. The rule looks at widths
    # only, never at the estimate, so it cannot steer the verdict. max_case_seconds is on the clock, from the
    # case's first call: 18 default cases × 7 s and the workers' start stay within 3 minutes on a busy day.
    target_half_width_pct: float = 1.0
    max_case_seconds: float = 7.0
    warmup_ms: float = 200.0
    gap_ms: float = 2.0  # idle time between turns, so the last worker's spinning threads settle first
    cases: tuple[str, ...] = DEFAULT_CASES  # glob patterns; ("all",): every case of the models and backends
    profile_ms: float = 2000.0  # per side, for a failing case's operator comparison (in PROFILE_REPEATS parts)
    # A case that fails is timed again with a fresh pool of workers before the gate says so: a process's
    # memory placement alone moved identical code by +17 % once in CI, and a real slowdown survives the re-test.
    retest_failures: bool = True
    seed: int = 0
    # What is compared: time always runs in the pull-request gate; memory adds a forked child per case, side and
    # repeat (optcv.gate.memory); instructions run the one-thread cases under valgrind (optcv.gate.instructions).
    measures: tuple[str, ...] = ("time",)
    memory_repeats: int = 3
    instruction_repeats: int = 2  # valgrind processes per side, each its own hash seed and layout
    # The file declaring a user's models, relative to the trees compared: set, the trees are the user's
    # repository (each side's models built from its own revision), `models` may name the declared ones, and
    # optcv itself is the same on both sides. None: the trees are optcv's own.
    declarations: str | None = None

    def __post_init__(self) -> None:
        checks = [("backend", self.backends, BACKENDS)]
        if self.declarations is None:  # declared names are checked against the declarations (case_specs)
            checks.insert(0, ("model", self.models, MODELS))
        for kind, given, known in checks:
            unknown = sorted(set(given) - set(known))
            if unknown or not given:
                name = unknown[0] if unknown else "(none)"
                raise OptcvError(f"unknown gate {kind} {name}: choose from {', '.join(known)}")
        unknown_measures = sorted(set(self.measures) - set(MEASURES))
        if unknown_measures or not self.measures:
            name = unknown_measures[0] if unknown_measures else "(none)"
            raise OptcvError(f"unknown gate measure {name}: choose from {', '.join(MEASURES)}")
        if self.workers_per_side < 1 or self.min_rounds < 5:
            raise OptcvError("the gate needs at least 1 worker per side and 5 rounds")
        if self.hash_seeds not in HASH_SEEDS:
            raise OptcvError(f"unknown hash seeds {self.hash_seeds}: choose from {', '.join(HASH_SEEDS)}")
        if self.setup_order not in SETUP_ORDERS:
            raise OptcvError(f"unknown set-up order {self.setup_order}: choose from {', '.join(SETUP_ORDERS)}")


def _declared_specs(config: GateConfig, declared: Mapping[str, DeclaredModel]) -> list[CaseSpec]:
    """Per declared model: what its declaration lists (backends × batch sizes × threads) among the gate's backends.
    (optcv's reference models' cases are the benchmark suite's tests: optcv.gate.suite.)"""
    return [CaseSpec(model, "predict", backend, batch, threads, declared=True)
            for model in config.models if model in declared
            for backend in declared[model].backends if backend in config.backends
            for batch in declared[model].batch_sizes for threads in declared[model].threads]


def require_backends(specs: Sequence[CaseSpec]) -> None:
    """Before anything is built: every backend the cases use can run in this interpreter, or a one-line error
    naming what to install."""
    for spec in specs:
        module = REGISTRY[spec.backend].optional_module
        if module is not None and backend_unavailable(spec.backend):
            needs, install = OPTIONAL_MODULES[module]
            raise MissingDependency(f"the gate's case {spec.id}", needs,
                                    f"{install}, or leave {spec.backend} out with --backends")


def case_specs(config: GateConfig, declared: Mapping[str, DeclaredModel]) -> list[CaseSpec]:
    """The gated cases of declared models: those of the models and backends chosen that match `config.cases`; all
    of them by default (a declaration chose them)."""
    unknown = [m for m in config.models if m not in declared]
    if unknown:
        raise OptcvError(f"unknown gate model {unknown[0]}: choose from {', '.join(declared)}")
    specs = _declared_specs(config, declared)
    if config.cases not in ((ALL_CASES,), DEFAULT_CASES):
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.id, p) for p in config.cases)]
    if not specs:
        raise OptcvError(f"no gate case matches {' '.join(config.cases)} for models {', '.join(config.models)} "
                         f"and backends {', '.join(config.backends)}; case names look like mynet/onnxruntime/b1/t1")
    return specs


def build_recipes(models: Sequence[str], int8: Collection[str] = ()) -> dict[str, ReferenceRecipe]:
    """What a side's worker needs to build each model, as plain data (the worker imports no optcv of ours);
    for the models in `int8`, the quantisation settings of their int8 twin too."""
    recipes = {}
    for name in models:
        spec = timing_recipe(name)  # the suite's timing build, as plain data
        recipes[name] = ReferenceRecipe(arch_name(spec.model), dataclasses.asdict(spec.model), spec.train.optimizer,
                                        spec.train.lr, spec.train.batch_size, spec.train.seed, spec.train.epochs,
                                        spec.train_images or 0,
                                        dataclasses.asdict(spec.quantize) if name in int8 else None)
    return recipes


def recipes_for(specs: Sequence[CaseSpec], declarations: str | None = None) -> dict[str, Recipe]:
    """The build recipes of the models the cases use; a declared model's recipe is where it is declared (each
    side reads it from its own tree) and the backends it needs built for."""
    reference = [s for s in specs if not s.declared]
    recipes: dict[str, Recipe] = {**build_recipes(list(dict.fromkeys(s.model for s in reference)),
                                                  {s.model for s in reference if s.backend == "onnxruntime-int8"})}
    for model in dict.fromkeys(s.model for s in specs if s.declared):
        backends = tuple(sorted({s.backend for s in specs if s.declared and s.model == model}))
        recipes[model] = DeclaredRecipe(model, declarations, backends)
    return recipes


def declared_models(config: GateConfig, tree: Path) -> dict[str, DeclaredModel]:
    """The models `config.declarations` declares in `tree` (none when the gate is on optcv's own trees)."""
    if config.declarations is None:
        return {}
    return load_declarations(tree / config.declarations, known_backends=BACKENDS)
