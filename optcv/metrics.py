"""Accuracy per class and agreement between two sets of logits: pure functions over arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of each class's images predicted correctly (NaN for a class with no images)."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    totals = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / totals


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


@dataclass(frozen=True)
class Agreement:
    """How far two backends' outputs on the same images are apart."""

    n_images: int
    n_disagree: int
    disagreeing: list[int]
    max_abs_diff: float


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> Agreement:
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits shapes differ: {logits_a.shape} vs {logits_b.shape}")
    differ = np.nonzero(logits_a.argmax(axis=1) != logits_b.argmax(axis=1))[0]
    max_abs = float(np.max(np.abs(logits_a.astype(np.float64) - logits_b))) if logits_a.size else 0.0
    return Agreement(len(logits_a), len(differ), differ.tolist(), max_abs)


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Gap between the largest and second-largest logit: how near each prediction is to a tie."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]
