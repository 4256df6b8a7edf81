"""What the plugin runs: the declared models, their parity and latency cases, and the gate, as plain data."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optcv.declared.config import DeclarationError, DeclaredModel, find_declarations, load_declarations
from optcv.runtime import BACKENDS


@dataclass(frozen=True)
class LatencyCase:
    model: str
    backend: str
    batch: int
    threads: int

    @property
    def id(self) -> str:  # the gate's case names
        return f"{self.model}/{self.backend}/b{self.batch}/t{self.threads}"


@dataclass(frozen=True)
class Plan:
    declarations: Path
    models: dict[str, DeclaredModel]
    parity: tuple[tuple[str, str], ...]  # (model, backend held to the model's reference)
    latency: tuple[LatencyCase, ...]


def make_plan(given: str | None, rootpath: Path, names: Sequence[str] | None,
              patterns: Sequence[str] | None = None, gate_side: bool = False) -> Plan:
    """The cases of the declared models `names` (all by default) whose ids match `patterns`. As one side of a gate
    (`gate_side`), a revision that does not declare a model (or has no declaring file) has no cases of it, so the
    gate says the head's are new rather than failing."""
    path = Path(given) if given else find_declarations(rootpath)
    if gate_side and (path is None or not path.is_file()):
        return Plan(rootpath / (given or "pyproject.toml"), {}, (), ())
    if path is None:
        raise DeclarationError(f"no optcv.toml or pyproject.toml with a [tool.optcv] table in {rootpath} or a parent; "
                               "declare your models there (see optcv's docs/tutorials/your-model.md)")
    declared = load_declarations(path, known_backends=tuple(BACKENDS))
    unknown = [n for n in names or () if n not in declared]
    if unknown and not gate_side:
        raise DeclarationError(f"--optcv-models: no model {unknown[0]!r} is declared in {path}; declared: "
                               f"{', '.join(declared)}")
    models = {n: declared[n] for n in (names or declared) if n in declared}
    parity = tuple((n, b) for n, m in models.items() for b in m.backends if b != m.reference_backend)
    latency = tuple(LatencyCase(n, b, batch, threads) for n, m in models.items() for b in m.backends
                    for batch in m.batch_sizes for threads in m.threads)
    if patterns:
        latency = tuple(c for c in latency if any(fnmatch.fnmatchcase(c.id, p) for p in patterns))
        if not latency and not gate_side:
            raise DeclarationError(f"--optcv-cases: no latency case matches {' '.join(patterns)}; case names look "
                                   f"like {models[next(iter(models))].name}/onnxruntime/b1/t1")
    return Plan(Path(path).resolve(), models, parity, latency)
