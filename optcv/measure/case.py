"""One timed case of the benchmark suite, the unit the A/B gate judges: a reference model's prediction on a backend
at a batch size and thread count, or its training step, as a callable of one call's work on real images.

A case is written once, as a pytest-benchmark test (benchmarks/test_latency.py), and named by its id
(`tutorial/onnxruntime/b1/t1`, `tunable/train/b64/t1`): the suite's parameter, the gate's case name, the
thresholds file's key and the history's series are that one string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optcv.backends.base import Predictor
from optcv.data import Split
from optcv.errors import OptcvError
from optcv.runtime import ModelSource, make_predictor
from optcv.training.models import load_checkpoint
from optcv.training.train import TrainConfig, train

TRAIN_STEP_IMAGES = 64  # images per timed training call: one step at batch 64
TRAIN_BATCH = 64
PREDICT_IMAGES = 2048  # distinct test images a prediction case cycles through
_ID = re.compile(r"^(?P<model>[^/]+)/(?P<backend>[^/]+)/b(?P<batch>[1-9][0-9]*)/t(?P<threads>[1-9][0-9]*)$")


@dataclass(frozen=True)
class CaseId:
    model: str
    backend: str  # "train" for a training step (PyTorch's)
    batch: int
    threads: int

    @property
    def kind(self) -> str:
        return "train" if self.backend == "train" else "predict"

    @property
    def runtime(self) -> str:
        """The backend the case runs on: a training step is PyTorch's."""
        return "pytorch" if self.kind == "train" else self.backend

    def __str__(self) -> str:
        return f"{self.model}/{self.backend}/b{self.batch}/t{self.threads}"

    @classmethod
    def parse(cls, text: str) -> CaseId:
        found = _ID.match(text)
        if found is None:
            raise OptcvError(f"{text!r} is not a case name; case names look like tutorial/onnxruntime/b1/t1 or "
                             "tunable/train/b64/t1")
        return cls(found["model"], found["backend"], int(found["batch"]), int(found["threads"]))


def case_cpus(threads: int) -> set[int]:
    """The CPUs a case runs on: the last `threads` of those this process may use, the same in every process.

    Left to the scheduler, a process tends to stay on the vCPU it last ran on, and on a shared VM one vCPU can be
    steadily slower than the other (its host core's neighbours): pinned alike, two processes differ in their code.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return set(allowed[-threads:]) if len(allowed) > threads else set(allowed)


@contextmanager
def pinned_to(cpus: set[int]) -> Iterator[None]:
    """Every thread of this process (the runtimes' pools included) on `cpus` inside; each thread's own CPUs after."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before: dict[int, set[int]] = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass
    try:
        yield
    finally:
        for tid, own in before.items():
            try:
                os.sched_setaffinity(tid, own)
            except OSError:
                pass


class TimedCase:
    """A case's callable: each call predicts the next batch of the cycled images, or takes one training step."""

    def __init__(self, case: CaseId, source: ModelSource, images: np.ndarray, labels: np.ndarray | None = None):
        self.case = case
        self.predictor: Predictor | None = None
        if case.kind == "predict":
            self._setup_predict(source, images)
        else:
            if labels is None:
                raise OptcvError(f"the training case {case} needs labelled images")
            self._setup_train(source, images, labels)

    def _setup_predict(self, source: ModelSource, images: np.ndarray) -> None:
        batch = self.case.batch
        # A compiling backend prepares the case's batch size here, in the set-up, never inside a timing.
        options = {"batch_sizes": (batch,)} if self.case.backend == "torch-compile" else {}
        self.predictor = make_predictor(self.case.backend, source, self.case.threads, **options)
        self.batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
        self.position = 0
        self.settings: dict[str, Any] = self.predictor.describe()

    def _setup_train(self, source: ModelSource, images: np.ndarray, labels: np.ndarray) -> None:
        if source.checkpoint is None:
            raise OptcvError(f"the training case {self.case} needs the model's checkpoint")
        self.model = load_checkpoint(source.checkpoint).build()
        n = TRAIN_STEP_IMAGES
        self.split = Split(torch.from_numpy(images[:n].copy()), torch.from_numpy(labels[:n].astype(np.int64)))
        self.eval_split = Split(torch.from_numpy(images[n:n + 10].copy()),
                                torch.from_numpy(labels[n:n + 10].astype(np.int64)))
        self.train_config = TrainConfig("SGD", epochs=1, batch_size=self.case.batch, seed=0)
        self.settings = {"backend": "pytorch (training)", "threads": self.case.threads, "optimizer": "SGD",
                         "images_per_call": n, "batch_size": self.case.batch}

    def __call__(self) -> Any:
        if self.predictor is not None:
            x = self.batches[self.position]
            self.position = (self.position + 1) % len(self.batches)
            return self.predictor.predict(x)
        return train(self.model, self.split, self.eval_split, self.train_config, progress=False)

    @property
    def images_per_call(self) -> int:
        return TRAIN_STEP_IMAGES if self.case.kind == "train" else self.case.batch

    @contextmanager
    def running(self) -> Iterator[None]:
        """Inside, the whole process on the case's CPUs (case_cpus) and a training step on its thread count;
        both as they were after."""
        threads = torch.get_num_threads()
        if self.predictor is None:
            torch.set_num_threads(self.case.threads)
        try:
            with pinned_to(case_cpus(self.case.threads)):
                yield
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self.predictor is not None:
            self.predictor.close()
