import json

import pytest
import torch

from optcv.errors import OptcvError
from optcv.training.models import TutorialNetConfig, build_model
from optcv.training.train import OPTIMIZERS, History, TrainConfig, TrainingDiverged, make_optimizer, train


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_factory_builds_every_optimizer(name):
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(name.lower(), params)
    assert type(optimizer).__name__ == name
    assert optimizer.param_groups[0]["lr"] == OPTIMIZERS[name][1]["lr"]
    assert make_optimizer(name, params, lr=0.5).param_groups[0]["lr"] == 0.5


def test_course_defaults_and_unknown_name():
    sgd = make_optimizer("SGD", [torch.nn.Parameter(torch.zeros(1))])
    assert sgd.param_groups[0]["lr"] == 0.001 and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(OptcvError, match="unknown optimizer 'Lion': choose from SGD, Adagrad, Adam, AdamW, RMSprop"):
        make_optimizer("Lion", [])
    with pytest.raises(OptcvError, match="learning rate must be positive"):
        make_optimizer("Adam", [torch.nn.Parameter(torch.zeros(1))], lr=-1.0)


def run(tiny, config, **kwargs):
    model = build_model(TutorialNetConfig(), seed=0)
    return model, train(model, tiny.train, tiny.test, config, progress=False, **kwargs)


def test_training_learns_and_records_every_epoch(tiny):
    _, history = run(tiny, TrainConfig("Adam", lr=0.01, epochs=4, batch_size=8))
    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4]
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert len(history.epochs[0].per_class_accuracy) == 10
    assert all(e.images_per_s > 0 and e.seconds > 0 for e in history.epochs)


def test_same_seed_same_history_other_seed_other_history(tiny):
    config = TrainConfig("SGD", lr=0.01, epochs=2, batch_size=4, seed=3)
    model_a, a = run(tiny, config)
    model_b, b = run(tiny, config)
    _, c = run(tiny, TrainConfig("SGD", lr=0.01, epochs=2, batch_size=4, seed=4))
    assert a.train_losses == b.train_losses
    weights_a, weights_b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert a.train_losses != c.train_losses


def test_training_runs_with_onednn_whatever_a_predictor_left_and_restores_it(tiny):
    """The pytorch predictor turns oneDNN off for inference; the same seed must train the same weights
    whatever ran before in the process (and at oneDNN's training speed), and the flag is given back."""
    config = TrainConfig("Adam", lr=0.01, epochs=1, batch_size=16, seed=5)
    found = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = True
        model_default, default = run(tiny, config)
        torch.backends.mkldnn.enabled = False  # as the pytorch predictor leaves it
        model_after, after = run(tiny, config)
        assert torch.backends.mkldnn.enabled is False
    finally:
        torch.backends.mkldnn.enabled = found
    assert after.train_losses == default.train_losses
    assert all(torch.equal(v, model_after.state_dict()[k]) for k, v in model_default.state_dict().items())


def test_resume_from_state_continues_exactly(tiny, tmp_path):
    config = TrainConfig("Adam", epochs=3, batch_size=8)
    _, full = run(tiny, config)

    class Stop(Exception):
        pass

    def stop_after_first(history):
        if len(history.epochs) == 1:
            raise Stop

    state = tmp_path / "state.pt"
    with pytest.raises(Stop):
        run(tiny, config, state_path=state, on_epoch=stop_after_first)
    _, resumed = run(tiny, config, state_path=state)
    assert resumed.train_losses == full.train_losses
    with pytest.raises(OptcvError, match="different training configuration"):
        run(tiny, TrainConfig("Adam", epochs=4, batch_size=8), state_path=state)


@pytest.mark.parametrize("damage", ["truncated", "not a state"])
def test_a_damaged_resume_state_is_a_clear_error_and_is_left_for_the_user(tiny, tmp_path, damage):
    config = TrainConfig("Adam", epochs=2, batch_size=8)
    state = tmp_path / "state.pt"

    def stop(history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny, config, state_path=state, on_epoch=stop)
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a copy cut short
    else:
        torch.save({"weights": torch.zeros(1)}, state)
    damaged = state.read_bytes()
    with pytest.raises(OptcvError, match=f"{state.name}.*delete it to restart"):
        run(tiny, config, state_path=state)
    assert state.read_bytes() == damaged  # evidence kept: deleting it is the user's choice


def test_divergence_is_reported(tiny):
    """A NaN or inf loss stops the run at once, naming the epoch and the batch where it appeared."""
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1, batch \d+ .*lower the learning rate") as caught:
        run(tiny, TrainConfig("SGD", lr=1e6, epochs=1, batch_size=4))
    assert caught.value.exit_code == 1  # the work ran and failed: not a refused input (2)


def test_history_json_round_trip(tiny, tmp_path):
    _, history = run(tiny, TrainConfig("Adagrad", epochs=1, batch_size=16))
    history.save(tmp_path / "h.json")
    raw = json.loads((tmp_path / "h.json").read_text())
    assert raw["config"]["optimizer"] == "Adagrad" and raw["lr"] == 0.01
    assert History.load(tmp_path / "h.json").to_dict() == history.to_dict()


def test_config_validation():
    with pytest.raises(OptcvError, match="epochs must be at least 1"):
        TrainConfig(epochs=0)
    with pytest.raises(OptcvError, match="batch size must be at least 1"):
        TrainConfig(batch_size=0)
