"""Every backend must predict what PyTorch predicts: class by class on the full test split, and
logits within rtol 1e-3 / atol 1e-5 at several batch sizes. These run under --benchmark-disable too."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import BACKENDS, MODEL_NAMES, REFERENCE_BACKEND
from optcv.errors import ParityFailure
from optcv.evaluate import evaluate_backends, side_by_side_rows
from optcv.report import markdown_table

OTHER_BACKENDS = [b for b in BACKENDS if b != REFERENCE_BACKEND]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_same_class_for_every_test_image(plain_predictor, cifar, model, backend):
    reference, other = plain_predictor(model, REFERENCE_BACKEND), plain_predictor(model, backend)
    evaluation = evaluate_backends([reference, other], cifar.test)
    assert evaluation.n_images == 10_000
    found = evaluation.agreements[backend]
    if found.n_disagree:
        details = "\n".join(f"  image {d['image']}: {d['reference_class']} vs {d['other_class']}, top-2 margin "
                            f"{d['reference_top2_margin']:.3g}, max logit diff {d['max_abs_logit_diff']:.3g}"
                            for d in evaluation.near_ties[backend])
        raise ParityFailure(f"{backend} predicts another class than {REFERENCE_BACKEND} for "
                            f"{found.n_disagree} of 10,000 images ({model}):\n{details}\n"
                            f"{markdown_table(side_by_side_rows(evaluation))}")
    per_class = {b.backend: b.per_class for b in evaluation.backends}
    assert per_class[backend] == per_class[REFERENCE_BACKEND]


@pytest.mark.parametrize("batch_size", [1, 7, 256])
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_logits_match_pytorch(plain_predictor, test_images, model, backend, batch_size):
    reference, other = plain_predictor(model, REFERENCE_BACKEND), plain_predictor(model, backend)
    for start in range(0, 3 * batch_size, batch_size):  # three different batches
        batch = test_images[start:start + batch_size]
        expected, got = reference.predict(batch), other.predict(batch)
        if not np.allclose(got, expected, rtol=1e-3, atol=1e-5):
            worst = float(np.max(np.abs(got - expected)))
            raise ParityFailure(f"{backend} logits differ from {REFERENCE_BACKEND} by up to {worst:.3g} "
                                f"({model}, batch {batch_size}, images {start}..{start + batch_size - 1})")
