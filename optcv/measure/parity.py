"""Per-class accuracy of every backend on a split, and how far the backends agree."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optcv.backends.base import Predictor
from optcv.backends.onnxruntime_int8 import has_vnni
from optcv.data import Split
from optcv.errors import OptcvError
from optcv.metrics import Agreement, accuracy, agreement, per_class_accuracy, top2_margin


def predict_split(predictor: Predictor, split: Split, batch_size: int = 256) -> np.ndarray:
    """Logits of `predictor` for every image of `split`, in order."""
    return predict_all(predictor, split.images.numpy(), batch_size)


def predict_all(predictor: Predictor, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([predictor.predict(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


@dataclass
class BackendAccuracy:
    backend: str
    accuracy: float
    per_class: list[float]
    settings: dict[str, Any]


@dataclass
class Evaluation:
    classes: tuple[str, ...]
    n_images: int
    backends: list[BackendAccuracy]
    agreements: dict[str, Agreement] = field(default_factory=dict)  # backend → agreement with the first
    near_ties: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    class_counts: list[int] = field(default_factory=list)  # test images per class: the intervals' n

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "n_images": self.n_images,
            "class_counts": dict(zip(self.classes, self.class_counts, strict=True)),
            "backends": {b.backend: {"accuracy": b.accuracy,
                                     "per_class": dict(zip(self.classes, b.per_class, strict=True)),
                                     "settings": b.settings} for b in self.backends},
            "agreement": {name: {"reference": self.backends[0].backend, "n_disagree": a.n_disagree,
                                 "disagreeing_images": a.disagreeing, "max_abs_logit_diff": a.max_abs_diff}
                          for name, a in self.agreements.items()},
            "disagreement_details": self.near_ties,
        }


def evaluate_backends(predictors: Sequence[Predictor], split: Split, batch_size: int = 256) -> Evaluation:
    """Accuracy overall and per class for each predictor; agreement of each with the first one."""
    labels = split.labels.numpy()
    n_classes = len(split.classes)
    results, logits_by_backend = [], {}
    for predictor in predictors:
        logits = predict_split(predictor, split, batch_size)
        predictions = logits.argmax(axis=1)
        logits_by_backend[predictor.name] = logits
        results.append(BackendAccuracy(predictor.name, accuracy(predictions, labels),
                                       per_class_accuracy(predictions, labels, n_classes).tolist(),
                                       predictor.describe()))
    counts = np.bincount(labels, minlength=n_classes).tolist()
    evaluation = Evaluation(split.classes, len(split), results, class_counts=counts)
    reference = logits_by_backend[predictors[0].name]
    for predictor in predictors[1:]:
        logits = logits_by_backend[predictor.name]
        found = agreement(reference, logits)
        evaluation.agreements[predictor.name] = found
        # For each disagreement, how close to a tie the reference was: near-ties explain fp32 flips.
        margins = top2_margin(reference)
        evaluation.near_ties[predictor.name] = [
            {"image": i, "label": int(labels[i]), "reference_class": int(reference[i].argmax()),
             "other_class": int(logits[i].argmax()), "reference_top2_margin": float(margins[i]),
             "max_abs_logit_diff": float(np.max(np.abs(reference[i] - logits[i])))}
            for i in found.disagreeing[:50]
        ]
    return evaluation


# ---------------------------------------------------------------------------------------------------------
# Parity: how far each backend may stray from the reference (PyTorch).


@dataclass(frozen=True)
class ParityTolerance:
    """None: every image must get the reference's class (fp32 backends). Otherwise accuracy may differ by
    at most `overall_points` overall and `per_class_points` in any class (percentage points)."""

    overall_points: float | None = None
    per_class_points: float | None = None

    @property
    def exact(self) -> bool:
        return self.overall_points is None


EXACT = ParityTolerance()
# An fp32 backend's logits against PyTorch's: float32 kernels sum in other orders, never to other values beyond this.
FP32_LOGITS_RTOL, FP32_LOGITS_ATOL = 1e-3, 1e-5


def fp32_logits_match(expected: np.ndarray, got: np.ndarray) -> bool:
    return bool(np.allclose(got, expected, rtol=FP32_LOGITS_RTOL, atol=FP32_LOGITS_ATOL))


# int8 changes the numbers on purpose; its bar is accuracy, not identical classes.
PARITY_TOLERANCES: dict[str, ParityTolerance] = {"onnxruntime-int8": ParityTolerance(0.5, 2.0)}
@dataclass(frozen=True)
class ParityResult:
    backend: str
    reference: str
    tolerance: ParityTolerance
    n_images: int
    n_disagree: int
    overall_diff_points: float  # backend minus reference
    worst_class: str
    worst_class_diff_points: float

    @property
    def passed(self) -> bool:
        if self.tolerance.exact:
            return self.n_disagree == 0
        assert self.tolerance.overall_points is not None and self.tolerance.per_class_points is not None
        return (abs(self.overall_diff_points) <= self.tolerance.overall_points
                and abs(self.worst_class_diff_points) <= self.tolerance.per_class_points)


def parity(evaluation: Evaluation, backend: str,
           tolerances: dict[str, ParityTolerance] = PARITY_TOLERANCES) -> ParityResult:
    """The parity verdict of `backend` against the evaluation's first (reference) backend."""
    reference, other = evaluation.backends[0], next(b for b in evaluation.backends if b.backend == backend)
    diffs = 100 * (np.asarray(other.per_class) - np.asarray(reference.per_class))
    worst = int(np.nanargmax(np.abs(diffs)))
    return ParityResult(backend, reference.backend, tolerances.get(backend, EXACT), evaluation.n_images,
                        evaluation.agreements[backend].n_disagree, 100 * (other.accuracy - reference.accuracy),
                        evaluation.classes[worst], float(diffs[worst]))


KNOWN_FAILURES_SCHEMA = "optcv-known-parity-failures/1"


@dataclass(frozen=True)
class KnownParityFailure:
    """A parity failure measured and kept visible instead of hidden: it applies only on the CPU kind it was measured
    on (with VNNI or without: int8's kernels differ, optcv.backends.onnxruntime_int8), and it still fails when it
    gets worse than its recorded figures by more than `margin_points`."""

    model: str
    backend: str
    vnni: bool
    overall_points: float  # recorded: backend minus reference, overall and in the worst class
    worst_class_points: float
    measured_on: str  # the machine and date of the recorded figures
    why: str
    margin_points: float = 1.0

    def applies(self, model: str, backend: str, vnni: bool) -> bool:
        return (self.model, self.backend, self.vnni) == (model, backend, vnni)

    def bound(self, tolerance: ParityTolerance) -> tuple[float, float]:
        """How far (overall, worst class) the result may go before the known failure counts as a new one."""
        overall = max(tolerance.overall_points or 0.0, abs(self.overall_points)) + self.margin_points / 4
        return overall, abs(self.worst_class_points) + self.margin_points

    def holds(self, result: ParityResult) -> bool:
        """Whether `result` is no worse than recorded (within the margin)."""
        overall, worst = self.bound(result.tolerance)
        return abs(result.overall_diff_points) <= overall and abs(result.worst_class_diff_points) <= worst


def load_known_failures(path: str | Path) -> tuple[KnownParityFailure, ...]:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if raw.get("schema") != KNOWN_FAILURES_SCHEMA:
        raise OptcvError(f"{path} is not an {KNOWN_FAILURES_SCHEMA} file")
    return tuple(KnownParityFailure(**entry) for entry in raw["failures"])


def known_failure(known: Sequence[KnownParityFailure], model: str, backend: str) -> KnownParityFailure | None:
    """The entry of `known` that applies to `model` and `backend` on this machine's CPU kind, if any."""
    return next((k for k in known if k.applies(model, backend, has_vnni())), None)


# ---------------------------------------------------------------------------------------------------------
# Agreement without labels: a user's declared model with no labelled folder is held to the reference's top-1.

# int8's bar without labels: the reference's class on 98 % of inputs, the 2 points per class it may lose with them.
INT8_MIN_AGREEMENT = 0.98


@dataclass(frozen=True)
class AgreementResult:
    backend: str
    reference: str
    n_inputs: int
    n_disagree: int
    max_abs_diff: float
    min_agreement: float  # the share of inputs whose top-1 must be the reference's
    max_abs_tolerance: float | None  # the declared bar on |logit difference|; None: reported, not judged

    @property
    def agreement(self) -> float:
        return 1 - self.n_disagree / self.n_inputs

    @property
    def passed(self) -> bool:
        within = self.max_abs_tolerance is None or self.max_abs_diff <= self.max_abs_tolerance
        return self.agreement >= self.min_agreement and within


def agreement_on_inputs(predictors: Sequence[Predictor], inputs: np.ndarray,
                        tolerances: Mapping[str, float] | None = None, batch_size: int = 64) -> list[AgreementResult]:
    """Each predictor after the first against the first on `inputs`: fp32 backends must give the reference's
    top-1 on every input, int8 on INT8_MIN_AGREEMENT of them; the largest absolute logit difference judged where
    `tolerances` say."""
    tolerances = tolerances or {}
    reference = predict_all(predictors[0], inputs, batch_size)
    results = []
    for predictor in predictors[1:]:
        found = agreement(reference, predict_all(predictor, inputs, batch_size))
        exact = PARITY_TOLERANCES.get(predictor.name, EXACT).exact
        results.append(AgreementResult(predictor.name, predictors[0].name, found.n_images, found.n_disagree,
                                       found.max_abs_diff, 1.0 if exact else INT8_MIN_AGREEMENT,
                                       tolerances.get(predictor.name)))
    return results
