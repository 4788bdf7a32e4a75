"""Classifiers and the generators of the amortised ADT variants.

All classifiers take images in [0, 1] (any normalisation would live inside the
model) and return logits. Their penultimate features are read through one hook,
:func:`penultimate_features`, which captures the input of the model's last
``nn.Linear``; no model needs a special method for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from adt.core._checks import check_int_at_least

__all__ = ["SmallCNN", "PreActResNet18", "WideResNet", "Generator", "NoiseMap", "Encoder", "MODELS",
           "build_model", "penultimate_features"]


class SmallCNN(nn.Module):
    """4 conv + 3 fc layers for 28x28 (or 32x32) images, the MNIST model of TRADES.

    ``width`` is the number of filters of the first two convolutions (the last two
    have twice as many); ``hidden`` the width of the two hidden fc layers.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 hidden: int = 200, image_size: int = 28) -> None:
        super().__init__()
        w = width
        # Each max-pool comes before its ReLU: relu(maxpool(h)) == maxpool(relu(h)) exactly,
        # values and gradients, on a quarter of the activations; with in-place ReLUs, less
        # memory traffic on a CPU (docs/reproduce.md, "Where the time goes"). The parameters keep their
        # indices, so checkpoints of either order load.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3), nn.ReLU(inplace=True), nn.Conv2d(w, w, 3),
            nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3), nn.ReLU(inplace=True), nn.Conv2d(2 * w, 2 * w, 3),
            nn.MaxPool2d(2), nn.ReLU(inplace=True), nn.Flatten())
        side = ((image_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Linear(2 * w * side * side, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        for m in self.modules():  # He init: the default init leaves this ReLU stack near chance for epochs
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016), any input size via global pooling."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_PreActBlock(in_planes, planes, stride),
                                        _PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class _WideBlock(nn.Module):
    """Pre-activation block of the release's WRN; parameter names match its checkpoints."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        # where shapes change the shortcut starts from the activated input
        return out + (x if self.equal_in_out else self.convShortcut(act))


class _WideStage(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(_WideBlock(in_planes if i == 0 else out_planes, out_planes,
                                                stride if i == 0 else 1) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor in the layout of the ADT release (REPRODUCTION.md, "Checkpoint layout of the release").

    ``sub_block1`` is an unused copy of ``block1`` that the release's checkpoints
    carry; it is kept so their ``state_dict`` loads strictly.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth={depth} is not 6n+4 (e.g. 16, 22, 28, 34); "
                             "pick a depth of that form")
        if widen_factor < 1:
            raise ValueError(f"WideResNet widen_factor={widen_factor} must be >= 1 (paper: 10)")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = _WideStage(n, widths[0], widths[1], 1)
        self.sub_block1 = _WideStage(n, widths[0], widths[1], 1)
        self.block2 = _WideStage(n, widths[1], widths[2], 2)
        self.block3 = _WideStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


# ----------------------------------------------------------------------------- generators

def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


class _ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or conv1x1-BN when the widths
    differ), then ReLU after the sum: the release's block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                  _conv3x3(cout, cout), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


def _gan_init(module: nn.Module) -> None:
    """N(0, 0.02) for conv and linear weights, N(1, 0.02) for BatchNorm scales."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """The release's ResNet generator at full resolution (REPRODUCTION.md, "ADT_EXP-AM as
    released"): conv3x3(in -> ngf)-BN-ReLU, residual blocks ngf -> 2ngf -> 2ngf -> ngf,
    conv3x3(ngf -> out); every conv without bias, zero padding, N(0, 0.02) initialisation.

    ADT_EXP-AM uses it with ``in_channels = 3C`` ([x, g1, g2]) and ``out_channels = 2C``
    (mu, v): 10,330,880 parameters at ngf = 256 for C = 3. ADT_IMP-AM adds one noise
    channel and outputs C channels.
    """

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 256) -> None:
        super().__init__()
        check_int_at_least(in_channels, 1, "Generator in_channels", "3")
        check_int_at_least(out_channels, 1, "Generator out_channels", "3")
        check_int_at_least(ngf, 1, "Generator ngf", "256 (paper) or 8 (CPU)")
        self.net = nn.Sequential(
            _conv3x3(in_channels, ngf), nn.BatchNorm2d(ngf), nn.ReLU(inplace=True),
            _ResidualBlock(ngf, 2 * ngf), _ResidualBlock(2 * ngf, 2 * ngf),
            _ResidualBlock(2 * ngf, ngf), _conv3x3(ngf, out_channels))
        _gan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NoiseMap(nn.Module):
    """ADT_IMP-AM's noise channel: z -> Linear(noise_dim, 256)-ReLU-Linear(256, H*W)-ReLU,
    reshaped to one H x W map (the release's MLP, ReLU after both layers)."""

    def __init__(self, noise_dim: int, image_size: int) -> None:
        super().__init__()
        check_int_at_least(noise_dim, 1, "NoiseMap noise_dim", "64")
        self.image_size = check_int_at_least(image_size, 1, "NoiseMap image_size", "32")
        self.net = nn.Sequential(nn.Linear(noise_dim, 256), nn.ReLU(inplace=True),
                                 nn.Linear(256, image_size * image_size), nn.ReLU(inplace=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), 1, self.image_size, self.image_size)


class Encoder(nn.Module):
    """q(z | delta / epsilon) of ADT_IMP-AM: a diagonal Gaussian over the generator's noise z
    (REPRODUCTION.md, "ADT_IMP-AM as released").

    Unpadded convs 5x5 s1 (-> 32), 4x4 s2 (-> 64), 4x4 s1 (-> 128), 4x4 s2 (-> 256), without
    bias, each with BatchNorm and LeakyReLU(0.01); average pooling; Linear(256 -> 2 z-dims)
    giving the mean and, through softplus, the variance. Conv weights N(0, sqrt(2 / (k^2
    out))). 724,384 parameters for 3 channels and z of 64 dims. The release pools with
    AvgPool(4), which is defined for 32x32 inputs only (the last map is 4x4 there); we pool
    the whole last map, which is the same at 32x32 and, at 28x28 (a 3x3 map), averages it.
    The four unpadded convolutions need images of at least :attr:`min_image_size` pixels
    a side.
    """

    min_image_size = 20

    def __init__(self, in_channels: int, noise_dim: int = 64) -> None:
        super().__init__()
        check_int_at_least(in_channels, 1, "Encoder in_channels", "3")
        check_int_at_least(noise_dim, 1, "Encoder noise_dim", "64")
        layers: list[nn.Module] = []
        for cin, cout, k, stride in ((in_channels, 32, 5, 1), (32, 64, 4, 2), (64, 128, 4, 1),
                                     (128, 256, 4, 2)):
            conv = nn.Conv2d(cin, cout, k, stride, 0, bias=False)
            nn.init.normal_(conv.weight, 0.0, (2.0 / (k * k * cout)) ** 0.5)
            layers += [conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.01, inplace=True)]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(256, 2 * noise_dim))

    @classmethod
    def check_size(cls, height: int, width: int) -> None:
        """ValueError unless images of ``height`` x ``width`` pass the four unpadded
        convolutions (:attr:`min_image_size` a side)."""
        side = cls.min_image_size
        if min(height, width) < side:
            raise ValueError(f"ADT_IMP-AM's entropy encoder needs images of at least {side}x"
                             f"{side} (four unpadded convolutions), got {height}x{width}; pad "
                             f"or resize the images to {side}x{side} or more")

    def forward(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of q(z | delta); ``delta`` is the perturbation over epsilon."""
        self.check_size(*delta.shape[-2:])
        mean, raw = self.net(delta).chunk(2, dim=1)
        return mean, F.softplus(raw)


# ----------------------------------------------------------------------------- registry, hooks

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "preact_resnet18": PreActResNet18,
    "wrn": WideResNet,
}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                **kwargs: int) -> nn.Module:
    """A classifier by registry name for images of ``in_channels`` x ``image_size``^2."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}. "
                         "Set the profile's `model` to one of these.")
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes, image_size=image_size, **kwargs)
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier's last ``nn.Linear`` (its input is the penultimate feature)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer, so it has no "
                         "penultimate features to hook; end the model with an nn.Linear")
    return linears[-1]


def penultimate_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, logits)``: the input of the model's last linear layer, and the output.

    This is the one hook through which attacks (FeaAttack) and analyses read the
    feature space; it works for any model whose logits come from an ``nn.Linear``.
    """
    captured: list[torch.Tensor] = []
    handle = final_linear(model).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits

