"""adt.core.models: classifier shapes, the penultimate-feature hook, the release's WRN layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomised

from adt.core.models import (
    Encoder,
    Generator,
    NoiseMap,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    build_model,
    penultimate_features,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_small_cnn_shapes(channels: int, size: int) -> None:
    model = SmallCNN(in_channels=channels, num_classes=7, width=8, hidden=16, image_size=size)
    assert model(torch.rand(3, channels, size, size)).shape == (3, 7)
    built = build_model("small_cnn", channels, 10, size, width=4, hidden=8)
    assert built(torch.rand(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_preact_resnet18_shapes(channels: int, size: int) -> None:
    model = PreActResNet18(in_channels=channels, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.rand(2, channels, size, size)).shape == (2, 10)
    feats, logits = penultimate_features(model, torch.rand(2, channels, size, size))
    assert feats.shape == (2, 512) and logits.shape == (2, 10)


@pytest.mark.parametrize("depth,widen", [(10, 1), (10, 2), (16, 1)])
def test_wide_resnet_shapes(depth: int, widen: int) -> None:
    model = WideResNet(depth=depth, widen_factor=widen, num_classes=5)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    built = build_model("wrn", 3, 100, 32, depth=depth, widen_factor=widen)
    assert built(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    feats, _ = penultimate_features(model, torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 64 * widen)


def test_wide_resnet_one_channel() -> None:
    model = WideResNet(depth=10, widen_factor=1, in_channels=1)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_penultimate_features_small_cnn_manual() -> None:
    torch.manual_seed(0)
    model = SmallCNN(width=8, hidden=16).eval()
    x = torch.rand(5, 1, 28, 28)
    feats, logits = penultimate_features(model, x)
    with torch.no_grad():
        h = model.features(x)
        h = F.relu(model.classifier[0](h))
        h = F.relu(model.classifier[2](h))  # the input of the last Linear
        want_logits = model.classifier[4](h)
    assert feats.shape == (5, 16)
    torch.testing.assert_close(feats, h, rtol=0, atol=0)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    # the hook is removed afterwards: no hooks left behind on the model
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_bad_arguments() -> None:
    for depth in (11, 27, 4):
        with pytest.raises(ValueError, match=f"depth={depth}"):
            WideResNet(depth=depth)
    with pytest.raises(ValueError, match="widen_factor"):
        WideResNet(depth=10, widen_factor=0)
    with pytest.raises(ValueError, match="resnet50") as info:
        build_model("resnet50", 3, 10, 32)
    for name in ("small_cnn", "preact_resnet18", "wrn"):
        assert name in str(info.value)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Generator(0, 2, 4), "Generator in_channels=0 must be an integer >= 1"),
    (lambda: Generator(3, 2, 0), "Generator ngf=0 must be an integer >= 1"),
    (lambda: NoiseMap(8, 0), "NoiseMap image_size=0 must be an integer >= 1"),
    (lambda: Encoder(0, 8), "Encoder in_channels=0 must be an integer >= 1"),
    (lambda: Encoder(1, 8)(torch.rand(2, 1, 19, 28)), "at least 20x20 .* got 19x28"),
])
def test_the_generators_refuse_sizes_they_cannot_take(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_the_encoder_reads_its_smallest_images() -> None:
    side = Encoder.min_image_size
    mean, variance = Encoder(1, 8).eval()(torch.rand(2, 1, side, side))
    assert mean.shape == variance.shape == (2, 8)


# ----------------------------------------------------------------------------- release layout


def _expected_wrn_keys(depth: int, widen: int) -> set[str]:
    """The state_dict keys of the release's WideResNet (REPRODUCTION.md, "Checkpoint layout of the release"), written out."""
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{s}" for s in BN)}
    for name, stage in (("block1", 0), ("sub_block1", 0), ("block2", 1), ("block3", 2)):
        for i in range(n):
            cin = widths[stage] if i == 0 else widths[stage + 1]
            p = f"{name}.layer.{i}."
            keys |= {p + "conv1.weight", p + "conv2.weight", *(p + "bn1." + s for s in BN),
                     *(p + "bn2." + s for s in BN)}
            if cin != widths[stage + 1]:
                keys.add(p + "convShortcut.weight")
    return keys


@pytest.mark.parametrize("depth,widen", [(10, 1), (16, 2)])
def test_wide_resnet_state_dict_follows_release_layout(depth: int, widen: int) -> None:
    sd = WideResNet(depth=depth, widen_factor=widen, num_classes=10).state_dict()
    assert set(sd) == _expected_wrn_keys(depth, widen)
    # convShortcut exactly where in != out: block1 only when widened; always in blocks 2 and 3
    assert ("block1.layer.0.convShortcut.weight" in sd) == (widen != 1)
    assert "block2.layer.0.convShortcut.weight" in sd and "block3.layer.0.convShortcut.weight" in sd
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["block2.layer.0.conv1.weight"].shape == (32 * widen, 16 * widen, 3, 3)
    assert sd["block3.layer.0.convShortcut.weight"].shape == (64 * widen, 32 * widen, 1, 1)
    assert sd["bn1.weight"].shape == (64 * widen,) and sd["fc.weight"].shape == (10, 64 * widen)
    for k in sd:
        if k.startswith("block1."):
            assert sd["sub_" + k].shape == sd[k].shape


def _reference_wrn_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """The release's block (REPRODUCTION.md), written from the state_dict alone: bn-relu before each conv,
    the shortcut from the activated input where shapes change, average pool 8, fc."""
    def bn(prefix: str, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, sd[prefix + "running_mean"], sd[prefix + "running_var"],
                            sd[prefix + "weight"], sd[prefix + "bias"], False, 0.0, 1e-5)

    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for name, stride in (("block1", 1), ("block2", 2), ("block3", 2)):
        for i in range(n):
            p, s = f"{name}.layer.{i}.", (stride if i == 0 else 1)
            act = F.relu(bn(p + "bn1.", out))
            h = F.conv2d(act, sd[p + "conv1.weight"], stride=s, padding=1)
            h = F.conv2d(F.relu(bn(p + "bn2.", h)), sd[p + "conv2.weight"], padding=1)
            short = p + "convShortcut.weight"
            out = h + (F.conv2d(act, sd[short], stride=s) if short in sd else out)
    out = F.avg_pool2d(F.relu(bn("bn1.", out)), 8).flatten(1)
    return F.linear(out, sd["fc.weight"], sd["fc.bias"])


def test_wide_resnet_computes_the_release_block() -> None:
    torch.manual_seed(0)
    model = randomised(WideResNet(depth=16, widen_factor=2, num_classes=10))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_wrn_forward(model.state_dict(), x, 2),
                                   rtol=1e-5, atol=1e-5)
