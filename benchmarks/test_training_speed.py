"""Training throughput of TutorialNet (images/s) at the course's batch size 4 and at 64 and 256."""

from __future__ import annotations

import pytest

from optcv.data import stratified_subset
from optcv.training.models import TutorialNetConfig, build_model
from optcv.training.train import TrainConfig, train

# Timed cases: the full tier, alone on the machine. An epoch a call is seconds: the gate times the same code in its
# training-step cases (test_latency.py::test_training_step).
pytestmark = [pytest.mark.full, pytest.mark.optcv_not_ab("an epoch a call: the gate's training-step cases time the "
                                                         "same code")]


@pytest.mark.parametrize("batch_size", [4, 64, 256])
def test_training_epoch_throughput(benchmark, request, cifar, batch_size):
    n = request.config.getoption("training_images")
    train_split = stratified_subset(cifar.train, min(n, len(cifar.train)), seed=0)
    eval_split = stratified_subset(cifar.test, 100, seed=0)  # keep evaluation out of the timing's way
    config = TrainConfig("SGD", epochs=1, batch_size=batch_size, seed=0)

    def one_epoch():
        model = build_model(TutorialNetConfig(), seed=0)
        return train(model, train_split, eval_split, config, progress=False)

    benchmark.group = "training TutorialNet (one epoch)"
    benchmark.name = f"train-b{batch_size}-{len(train_split) // 1000}k"  # a time per epoch of this many images
    history = benchmark.pedantic(one_epoch, rounds=3, iterations=1, warmup_rounds=0)
    record = history.epochs[0]
    benchmark.extra_info.update({"batch_size": batch_size, "images": len(train_split),
                                 "images_per_s": record.images_per_s, "optimizer": "SGD"})
    assert record.train_loss > 0


def test_tuning_trial_throughput(benchmark, cifar):
    """One epoch of an Optuna trial at `optcv tune`'s defaults (3,840 training and 1,280 validation images,
    batch 128), for the course's best TunableNet (one hidden layer of 302 units, RMSprop)."""
    from optcv.training.models import TunableNetConfig
    from optcv.training.tune import TuneConfig, tuning_splits

    config = TuneConfig()
    train_split, val_split = tuning_splits(cifar, config)
    model_config = TunableNetConfig(hidden_units=(302,), dropouts=(0.205,))
    train_config = TrainConfig("RMSprop", lr=6.12e-4, epochs=1, batch_size=config.batch_size, seed=0)

    def one_epoch():
        return train(build_model(model_config, seed=0), train_split, val_split, train_config, progress=False)

    benchmark.group = "tuning trial TunableNet (one epoch)"
    benchmark.name = f"trial-epoch-b{config.batch_size}"
    history = benchmark.pedantic(one_epoch, rounds=3, iterations=1, warmup_rounds=0)
    record = history.epochs[0]
    benchmark.extra_info.update({"batch_size": config.batch_size, "images": len(train_split),
                                 "images_per_s": record.images_per_s, "validation_images": len(val_split)})
    assert record.train_loss > 0
