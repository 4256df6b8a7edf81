"""Parity verdicts, one line each."""

from __future__ import annotations

from typing import Any

from optcv.data import CLASSES, SHORT_NAMES
from optcv.measure.declared import DeclaredParity
from optcv.measure.parity import AgreementResult, Evaluation, KnownParityFailure, ParityResult
from optcv.report.tables import markdown_table


def parity_line(result: Any) -> str:
    """One line for a parity verdict (optcv.measure.parity.ParityResult)."""
    tol = result.tolerance
    bar = ("the reference's class for every image" if tol.exact else
           f"accuracy within {tol.overall_points:g} points overall and {tol.per_class_points:g} per class")
    status = "PASS" if result.passed else "PARITY FAILURE"
    return (f"{status}: {result.backend} vs {result.reference} on {result.n_images:,} images: {result.n_disagree:,} "
            f"classes differ; accuracy {result.overall_diff_points:+.2f} points overall, worst class "
            f"{result.worst_class} {result.worst_class_diff_points:+.1f}; required: {bar}")


def known_failure_line(result: ParityResult, known: KnownParityFailure) -> str:
    """A parity failure that was measured before: within its recorded figures it is a KNOWN FAILURE, beyond them a
    failure like any other."""
    overall, worst = known.bound(result.tolerance)
    state = "KNOWN FAILURE" if known.holds(result) else "WORSE THAN ITS KNOWN FAILURE"
    return (f"{state}: {parity_line(result)}; recorded {known.overall_points:+.2f} overall, "
            f"{known.worst_class_points:+.1f} worst class on {known.measured_on}; it fails beyond ±{overall:.2f} "
            f"overall or ±{worst:.1f} in a class ({known.why})")


def course_table(evaluation: Evaluation, backend: str) -> str:
    """The course's per-class table: `Accuracy for class plane: 44.5%` …"""
    result = next(b for b in evaluation.backends if b.backend == backend)
    names = SHORT_NAMES if evaluation.classes == CLASSES else evaluation.classes
    width = max(len(n) for n in names)
    lines = [f"Accuracy for class {name:<{width}}: {100 * value:.1f}%"
             for name, value in zip(names, result.per_class, strict=True)]
    lines.append(f"Overall accuracy{'':<{width + 3}}: {100 * result.accuracy:.2f}% of {evaluation.n_images:,} images")
    return "\n".join(lines)


def side_by_side_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One row per class, one column per backend (percent), then the overall row."""
    rows = []
    for i, name in enumerate(evaluation.classes):
        rows.append({"class": name, **{b.backend: 100 * b.per_class[i] for b in evaluation.backends}})
    rows.append({"class": "overall", **{b.backend: 100 * b.accuracy for b in evaluation.backends}})
    return rows


def evaluation_text(evaluation: Evaluation, verdicts: list[ParityResult]) -> str:
    """`optcv evaluate`'s output: the course's table per backend, the side-by-side table, the agreement of each
    backend with the reference and its nearest ties, and the parity verdicts."""
    lines = []
    for result in evaluation.backends:
        settings = ", ".join(f"{k} {v}" for k, v in result.settings.items() if k != "backend")
        lines += [f"--- {result.backend} ({settings}) ---", course_table(evaluation, result.backend), ""]
    lines.append(markdown_table(side_by_side_rows(evaluation), digits=2))
    reference = evaluation.backends[0].backend
    for name, found in evaluation.agreements.items():
        lines.append(f"\n{name} vs {reference}: {found.n_disagree} of {found.n_images:,} predicted classes differ; "
                     f"max |logit difference| {found.max_abs_diff:.3g}")
        lines += [f"  image {d['image']}: {d['reference_class']} vs {d['other_class']}, "
                  f"top-2 margin {d['reference_top2_margin']:.2g}" for d in evaluation.near_ties[name][:10]]
    return "\n".join([*lines, "", *(parity_line(v) for v in verdicts)])


def agreement_line(result: AgreementResult) -> str:
    """One line for an agreement verdict on unlabelled inputs."""
    bar = "every input" if result.min_agreement == 1 else f"{100 * result.min_agreement:g} % of inputs"
    logits = ("" if result.max_abs_tolerance is None else
              f" and max |logit difference| at most {result.max_abs_tolerance:g}")
    status = "PASS" if result.passed else "PARITY FAILURE"
    return (f"{status}: {result.backend} vs {result.reference} on {result.n_inputs:,} inputs: top-1 agrees on "
            f"{100 * result.agreement:.1f} % ({result.n_disagree} differ); max |logit difference| "
            f"{result.max_abs_diff:.3g}; required: the reference's class on {bar}{logits}")


def declared_parity_text(checked: DeclaredParity) -> str:
    """`optcv evaluate NAME`'s output: per class with labels, else each backend's agreement line."""
    if checked.evaluation is not None:
        return evaluation_text(checked.evaluation, checked.verdicts)
    reference = checked.agreement[0].reference if checked.agreement else "the reference"
    lines = [f"{checked.model}: no labels declared, so each backend is held to {reference}'s top-1 on "
             f"{checked.n_inputs:,} {checked.inputs} inputs"]
    return "\n".join([*lines, *(agreement_line(r) for r in checked.agreement)])
