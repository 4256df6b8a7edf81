"""A timed case of the suite (optcv.measure.case): its name, its CPUs, and the state it leaves behind."""

from __future__ import annotations

import os

import pytest
import torch

from optcv.errors import OptcvError
from optcv.measure.case import CaseId, case_cpus, pinned_to


def test_a_case_name_round_trips_and_a_wrong_one_says_what_names_look_like():
    for name in ("tutorial/onnxruntime/b1/t1", "mobilenet_v3_small/train/b64/t1", "resnet18/openvino/b64/t2"):
        assert str(CaseId.parse(name)) == name
    assert CaseId.parse("tunable/train/b64/t1").kind == "train"
    assert CaseId.parse("tunable/pytorch/b1/t2") == CaseId("tunable", "pytorch", 1, 2)
    for wrong in ("tutorial/onnxruntime/b0/t1", "tutorial/onnxruntime/1/1", "tutorial/b1/t1", ""):
        with pytest.raises(OptcvError, match="case names look like tutorial/onnxruntime/b1/t1"):
            CaseId.parse(wrong)


def test_a_case_runs_on_the_last_cpus_and_every_thread_gets_its_own_back():
    before = os.sched_getaffinity(0)
    assert len(before) > 1, "this check needs a machine with two CPUs or more"
    one = case_cpus(1)
    assert one == {max(before)} and case_cpus(len(before)) == before
    with pinned_to(one):
        assert os.sched_getaffinity(0) == one
    assert os.sched_getaffinity(0) == before


def test_a_training_case_needs_labels_and_its_thread_count_is_put_back(tmp_path):
    import numpy as np

    from optcv.measure.case import TimedCase
    from optcv.runtime import ModelSource
    from optcv.training.models import Checkpoint, TutorialNetConfig, build_model, save_checkpoint

    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, Checkpoint(TutorialNetConfig(), build_model(TutorialNetConfig(), seed=0).state_dict()))
    images = np.random.default_rng(0).integers(0, 255, (80, 3, 32, 32)).astype(np.uint8)
    with pytest.raises(OptcvError, match="needs labelled images"):
        TimedCase(CaseId.parse("tutorial/train/b64/t1"), ModelSource(checkpoint, None), images)
    case = TimedCase(CaseId.parse("tutorial/train/b64/t1"), ModelSource(checkpoint, None), images,
                     np.arange(80) % 10)
    threads = torch.get_num_threads()
    with case.running():
        assert torch.get_num_threads() == 1
        assert case().epochs[0].train_loss > 0
    assert torch.get_num_threads() == threads
