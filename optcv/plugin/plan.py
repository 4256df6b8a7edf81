"""What the plugin runs: the declared models, their parity and latency cases, and the gate, as plain data."""

from __future__ import annotations

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
    gate_against: str | None
    gate_cases: tuple[str, ...] | None


def make_plan(given: str | None, rootpath: Path, names: Sequence[str] | None, cases: bool, gate_against: str | None,
              gate_cases: Sequence[str] | None) -> Plan:
    path = Path(given) if given else find_declarations(rootpath)
    if path is None:
        raise DeclarationError(f"no optcv.toml or pyproject.toml with a [tool.optcv] table in {rootpath} or a parent; "
                               "declare your models there (see optcv's docs/tutorials/your-model.md)")
    declared = load_declarations(path, known_backends=tuple(BACKENDS))
    unknown = [n for n in names or () if n not in declared]
    if unknown:
        raise DeclarationError(f"--optcv-models: no model {unknown[0]!r} is declared in {path}; declared: "
                               f"{', '.join(declared)}")
    models = {n: declared[n] for n in (names or declared)}
    parity = tuple((n, b) for n, m in models.items() for b in m.backends if b != m.reference_backend) if cases else ()
    latency = tuple(LatencyCase(n, b, batch, threads) for n, m in models.items() for b in m.backends
                    for batch in m.batch_sizes for threads in m.threads) if cases else ()
    return Plan(Path(path).resolve(), models, parity, latency, gate_against, tuple(gate_cases) if gate_cases else None)
