"""Adding a training method is a maximiser class and one record: this file registers a
toy method (uniform noise in the eps-box) without touching any other file, then trains
and evaluates it under `smoke` through the public API, as the paper's methods are."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import adt
from adt.method.inner import AdversarialBatch, InnerMaximizer


@dataclass(frozen=True)
class NoiseSettings:
    """The toy's own setting: the share of eps its noise spans."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale={self.scale!r} must lie in (0, 1]; use e.g. 1.0")


class UniformNoise(InnerMaximizer):
    """Trains on x + U(-scale eps, scale eps), clipped to the image range."""

    def __init__(self, epsilon: float, scale: float) -> None:
        super().__init__()
        self.epsilon, self.scale = epsilon, scale

    passes_per_image = 1

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        noise = (torch.rand_like(x) * 2 - 1) * self.scale * self.epsilon
        return AdversarialBatch((x + noise).clamp(0, 1), y)


def _build(settings: NoiseSettings, spec, epsilon: float) -> InnerMaximizer:
    return UniformNoise(epsilon, settings.scale)


TOY = adt.Method("toy_noise", "Noise (toy)", "#000000", UniformNoise, _build, NoiseSettings)


@pytest.fixture
def toy() -> Iterator[adt.Method]:
    adt.register_method(TOY)
    try:
        yield TOY
    finally:
        adt.METHOD_REGISTRY.pop(TOY.name)


def test_a_registered_method_trains_and_evaluates_under_smoke(toy, tmp_path) -> None:
    assert adt.LABELS[toy.name] == "Noise (toy)"
    assert toy.name not in adt.METHODS  # the chapters compare the paper's methods only
    smoke = adt.get_profile("smoke")
    run = adt.train(smoke, toy.name, 0, device="cpu", runs_root=tmp_path, progress=False)
    assert run.metrics["finished"] and run.method == toy.name
    assert type(run.maximizer) is UniformNoise and run.maximizer.scale == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the masking checks of an untrained toy
        table = adt.evaluate_run(run, black_box=False, progress=False)
    assert table.n_examples == smoke.eval.n_examples
    assert 0.0 <= table.robust_accuracy <= table.accuracy["Clean"] <= 1.0
    again = adt.load_run(smoke, toy.name, 0, runs_root=tmp_path, device="cpu")
    assert again.metrics == run.metrics


def test_a_method_is_registered_once_with_a_maximiser_and_settings(toy) -> None:
    with pytest.raises(ValueError, match="registered already"):
        adt.register_method(TOY)
    with pytest.raises(ValueError, match="not an InnerMaximizer"):
        adt.register_method(adt.Method("bad", "Bad", "#000000", nn.Linear, _build))
    with pytest.raises(ValueError, match="not a dataclass"):
        adt.register_method(adt.Method("bad", "Bad", "#000000", UniformNoise, _build, dict))
    with pytest.raises(ValueError, match="allowed: .*toy_noise"):
        adt.train("smoke", "toy_nois", 0)


def test_each_paper_method_reads_its_own_settings_from_the_profile() -> None:
    """The profile's flat record holds each method's fields (so run identities stay as
    they were); a method's own settings class reads them, with the release's defaults."""
    from dataclasses import fields

    quick = adt.get_profile("quick")
    for name in adt.METHODS:
        method = adt.METHOD_REGISTRY[name]
        assert method.settings_from(adt.MethodSettings()) == method.settings()
        own = method.settings_from(quick.methods)
        for f in fields(own):
            assert getattr(own, f.name) == getattr(quick.methods, f.metadata["profile_field"])
    assert adt.METHOD_REGISTRY["adt_exp"].settings_from(quick.methods).num_samples == 5
