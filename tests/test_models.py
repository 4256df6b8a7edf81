import pytest
import torch

from optcv.data import Normalization
from optcv.errors import OptcvError
from optcv.training.models import (
    Checkpoint,
    MobileNetV3SmallConfig,
    ResNet18Config,
    TunableNet,
    TunableNetConfig,
    TutorialNet,
    TutorialNetConfig,
    build_model,
    config_from_dict,
    count_macs,
    load_checkpoint,
    save_checkpoint,
)


def test_tutorial_net_shape_and_size():
    model = TutorialNet()
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)
    assert count_macs(model) == 651_720  # the PyTorch tutorial net: 0.652 M MACs per image


def test_resnet18_is_torchvisions_in_cifar_form():
    from torchvision.models import resnet18

    model = build_model(ResNet18Config(), seed=0)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    reference = resnet18(num_classes=10)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)  # the CIFAR stem; ImageNet's is 7x7 stride 2
    assert [k for k in ours if ours[k].shape != theirs[k].shape] == ["conv1.weight"]
    # With no stride-2 stem and no max-pool, the first stage runs at 32x32: ~0.56 GMAC per image
    # (ImageNet's stem would cut that 16-fold at this input size).
    assert 0.55e9 < count_macs(model) < 0.56e9


def test_mobilenet_v3_small_is_torchvisions():
    from torchvision.models import mobilenet_v3_small

    model = build_model(MobileNetV3SmallConfig(), seed=0)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    reference = mobilenet_v3_small(num_classes=10)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    narrow = build_model(MobileNetV3SmallConfig(width_mult=0.5), seed=0)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(OptcvError, match="width_mult"):
        MobileNetV3SmallConfig(width_mult=0)
    norms = [m for m in build_model(MobileNetV3SmallConfig(bn_momentum=0.1)).modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {(m.momentum, m.eps) for m in norms} == {(0.1, 0.001)}


@pytest.mark.parametrize("config", [ResNet18Config(), MobileNetV3SmallConfig(dropout=0.1)])
def test_large_models_round_trip_through_a_checkpoint(tmp_path, config):
    model = build_model(config, seed=0).eval()
    save_checkpoint(tmp_path / "m.pt", Checkpoint(config, model.state_dict()))
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == config
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model((x.float() / 255 - torch.tensor(Normalization().mean).view(1, 3, 1, 1))
                         / torch.tensor(Normalization().std).view(1, 3, 1, 1))
        assert torch.allclose(loaded.build_inference()(x), expected, atol=1e-4)


@pytest.mark.parametrize("units, dropouts", [((302,), (0.2,)), ((64, 32, 16), (0.5, 0.3, 0.2)), ((), ())])
@pytest.mark.parametrize("pool", [True, False])
def test_tunable_net_follows_its_config(units, dropouts, pool):
    config = TunableNetConfig(conv_channels=8, hidden_units=units, dropouts=dropouts, pool=pool)
    model = TunableNet(config)
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [*units, 10]
    assert linears[0].in_features == 8 * (16 * 16 if pool else 32 * 32)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == list(dropouts)


def test_tunable_config_validation():
    with pytest.raises(OptcvError, match="one dropout per hidden layer"):
        TunableNetConfig(hidden_units=(10, 20), dropouts=(0.2,))
    assert TunableNetConfig(hidden_units=[4], dropouts=[0.3]) == TunableNetConfig(hidden_units=(4,), dropouts=(0.3,))
    with pytest.raises(OptcvError, match="unknown tunable setting 'layers'"):
        config_from_dict("tunable", {"layers": 3})
    with pytest.raises(OptcvError, match="unknown architecture 'resnet'"):
        config_from_dict("resnet", {})


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(TutorialNetConfig(), seed=7).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model(TutorialNetConfig(), seed=7).state_dict()
    c = build_model(TutorialNetConfig(), seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_round_trip(tmp_path):
    config = TunableNetConfig(conv_channels=4, hidden_units=(12,), dropouts=(0.25,))
    model = build_model(config, seed=0)
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_checkpoint(tmp_path / "m.pt", Checkpoint(config, model.state_dict(), norm, info={"note": "x"}))
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == config and loaded.normalization == norm and loaded.info == {"note": "x"}
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = model.eval()((x.float() / 255 - 0.5) / 0.25)
    assert torch.allclose(loaded.build_inference()(x), expected, atol=1e-5)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(OptcvError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(OptcvError, match="not a readable optcv checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")
    raw = Checkpoint(TutorialNetConfig(), TutorialNet().state_dict()).to_dict()
    raw["arch"] = "vit"
    torch.save(raw, tmp_path / "vit.pt")
    with pytest.raises(OptcvError, match="unknown architecture 'vit'"):
        load_checkpoint(tmp_path / "vit.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(OptcvError, match="not an optcv checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    other_weights = build_model(TunableNetConfig(hidden_units=(9,)), 0).state_dict()
    raw = Checkpoint(TunableNetConfig(hidden_units=(8,)), other_weights).to_dict()
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(OptcvError, match="weights do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")
