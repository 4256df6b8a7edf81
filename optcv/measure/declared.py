"""A declared model held to its reference on every backend it lists: per class on its labelled folder, else
same top-1 (and, where declared, |logit difference|) on its sample or synthetic inputs. One function for
`optcv evaluate NAME` and the pytest plugin's parity cases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from optcv.backends.base import all_closed
from optcv.data import Split, stratified_subset
from optcv.declared.config import DeclaredModel
from optcv.declared.inputs import labelled_inputs, sample_inputs
from optcv.measure.parity import (
    AgreementResult,
    Evaluation,
    ParityResult,
    agreement_on_inputs,
    evaluate_backends,
    parity,
)
from optcv.runtime import ModelSource, make_predictor


@dataclass
class DeclaredParity:
    model: str
    inputs: str  # "labelled", "sample" or "synthetic"
    n_inputs: int
    evaluation: Evaluation | None  # with labels: per-class accuracy of every backend
    verdicts: list[ParityResult]  # with labels
    agreement: list[AgreementResult]  # without labels

    @property
    def failed(self) -> list[str]:
        """The backends outside their tolerance."""
        return [v.backend for v in self.verdicts if not v.passed] + [r.backend for r in self.agreement if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "inputs": self.inputs, "n_inputs": self.n_inputs}
        if self.evaluation is not None:
            out.update(self.evaluation.to_dict())
            out["parity"] = [{**asdict(v), "passed": v.passed} for v in self.verdicts]
        else:
            out["agreement"] = [{**asdict(r), "passed": r.passed} for r in self.agreement]
        return out


def check_declared(model: DeclaredModel, source: ModelSource, backends: Sequence[str], threads: int | None = None,
                   count: int | None = None) -> DeclaredParity:
    """Every backend after the first held to the first; `count` caps the inputs (default: the labelled folder
    whole, else the declaration's agreement_inputs)."""
    with all_closed([make_predictor(b, source, threads) for b in backends]) as predictors:
        if model.labels is not None:
            inputs, labels, classes = labelled_inputs(model.input, model.labels)
            split = stratified_subset(Split(torch.from_numpy(inputs), torch.from_numpy(labels), classes), count)
            evaluation = evaluate_backends(predictors, split)
            verdicts = [parity(evaluation, b.backend) for b in evaluation.backends[1:]]
            return DeclaredParity(model.name, "labelled", len(split), evaluation, verdicts, [])
        inputs = sample_inputs(model.input, count or model.agreement_inputs)
        results = agreement_on_inputs(predictors, inputs, model.tolerances)
    kind = "sample" if model.input.samples else "synthetic"
    return DeclaredParity(model.name, kind, len(inputs), None, [], results)
