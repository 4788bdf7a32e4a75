"""One input contract for training and evaluation: ``adt.train_step`` (through the inner
maximisers' entry) and ``adt.robustness_table`` refuse the same bad batches with the same
messages, from one check function; the amortised maximisers follow the classifier's device
and dtype; their ``in_channels`` and ``image_size`` are checked, and checked against the
batch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import adt
import adt.evaluation.engine
import adt.method.inner
from adt.core import _checks
from adt.core.models import SmallCNN

EPS = 0.3

MAXIMIZERS: dict[str, Callable[[], adt.InnerMaximizer]] = {
    "clean": adt.Clean,
    "pgd": lambda: adt.PGD(EPS, step_size=0.1, steps=2),
    "trades": lambda: adt.TRADES(EPS, step_size=0.1, steps=2),
    "exp": lambda: adt.ExplicitADT(EPS, steps=2, num_samples=2),
    "exp_am": lambda: adt.AmortizedExplicitADT(1, EPS, ngf=4, conditioning="normalised"),
    "imp_am": lambda: adt.AmortizedImplicitADT(1, 28, EPS, ngf=4, noise_dim=8),
}


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(width=4, hidden=16)


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def _step(model: nn.Module, maximizer: adt.InnerMaximizer, x: torch.Tensor,
          y: torch.Tensor) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return adt.train_step(model, maximizer, optimizer, x, y)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


BAD_BATCHES = [
    (lambda x, y: (x * 255, y), r"values in \[.*, 255\], outside \[0, 1\].*by 255"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), r"float tensor of images.*x.float\(\) / 255"),
    (lambda x, y: (x, y[:3]), r"one integer label per image \(4\) as int64.*\(3,\)"),
    (lambda x, y: (x, y.int()), r"one integer label per image \(4\) as int64, got .*int32"),
    (lambda x, y: (x, y.float()), "one integer label per image"),
    (lambda x, y: (x, y.view(2, 2)), "one integer label per image"),
    (lambda x, y: (x.double(), y), "x is torch.float64 but the classifier's weights are "
                                   r"torch.float32; pass x.to\(torch.float32\)"),
    (lambda x, y: (torch.full_like(x, float("nan")), y), "non-finite values"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_BATCHES,
                         ids=["0-255", "uint8", "short-y", "int32-y", "float-y", "2d-y",
                              "float64-x", "nan"])
@pytest.mark.parametrize("kind", sorted(MAXIMIZERS))
def test_train_step_refuses_a_bad_batch_before_any_step(kind: str, bad, message: str) -> None:
    model, maximizer = _classifier(), MAXIMIZERS[kind]()
    before = _weights(model)
    with pytest.raises(ValueError, match=message):
        _step(model, maximizer, *bad(*_batch()))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))


@pytest.mark.parametrize(("bad", "message"), [BAD_BATCHES[0], *BAD_BATCHES[2:6],
                                              BAD_BATCHES[7]])
def test_the_tables_refuse_the_same_batches_with_the_same_messages(bad, message: str) -> None:
    x, y = bad(*_batch())
    with pytest.raises(ValueError, match=message):
        adt.robustness_table(_classifier(), (x, y), [adt.AttackSpec(
            "PGD-1", adt.pgd, {"epsilon": EPS, "step_size": 0.1, "steps": 1})], sanity=False)


def test_one_check_function_serves_training_the_maximisers_and_the_tables() -> None:
    assert adt.method.inner.check_batch is _checks.check_batch
    assert adt.evaluation.engine.check_batch is _checks.check_batch


def test_a_train_step_checks_its_batch_once(monkeypatch) -> None:
    """One check (one host sync) per step at the entry, none inside the inner loop."""
    calls: list[int] = []

    def counted(*args: object, **kwargs: object) -> None:
        calls.append(1)
        _checks.check_batch(*args, **kwargs)

    monkeypatch.setattr(adt.method.inner, "check_batch", counted)
    _step(_classifier(), adt.ExplicitADT(EPS, steps=3, num_samples=2), *_batch())
    assert len(calls) == 1


def test_images_in_0_1_and_int64_labels_train() -> None:
    model = _classifier()
    before = _weights(model)
    stats = _step(model, MAXIMIZERS["pgd"](), *_batch())
    assert torch.isfinite(stats["loss"])
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))


# ----------------------------------------------------------------------------- device, dtype

@pytest.mark.parametrize("kind", ["exp_am", "imp_am"])
def test_the_amortised_maximisers_follow_a_float64_classifier(kind: str) -> None:
    model, maximizer = _classifier(), MAXIMIZERS[kind]()
    x, y = _batch()
    _step(model, maximizer, x, y)  # float32: the optimisers now hold moment estimates
    model.double()
    for _ in range(2):
        stats = _step(model, maximizer, x.double(), y)
        assert all(torch.isfinite(v) for v in stats.values())
    assert {p.dtype for p in maximizer.parameters()} == {torch.float64}
    for optimizer in (v for v in vars(maximizer).values()
                      if isinstance(v, torch.optim.Optimizer)):
        moments = [t for state in optimizer.state.values() for k, t in state.items()
                   if k != "step"]
        assert moments and {t.dtype for t in moments} == {torch.float64}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["exp_am", "imp_am"])
def test_the_amortised_maximisers_follow_a_cuda_classifier(kind: str) -> None:
    model, maximizer = _classifier().cuda(), MAXIMIZERS[kind]()  # the maximiser on the CPU
    x, y = _batch()
    stats = _step(model, maximizer, x.cuda(), y.cuda())
    assert all(torch.isfinite(v) for v in stats.values())
    assert {p.device.type for p in maximizer.parameters()} == {"cuda"}


def test_a_batch_on_another_device_than_the_classifier_is_refused() -> None:
    model = _classifier().to("meta")
    with pytest.raises(ValueError, match="x is on cpu but the classifier on meta; move"):
        _step(model, MAXIMIZERS["pgd"](), *_batch())


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_in_channels_and_image_size_are_whole_numbers_of_at_least_1(value) -> None:
    with pytest.raises(ValueError, match=f"in_channels={value!r} must be an integer >= 1"):
        adt.AmortizedExplicitADT(value, EPS, ngf=4)
    with pytest.raises(ValueError, match=f"in_channels={value!r} must be an integer >= 1"):
        adt.AmortizedImplicitADT(value, 28, EPS, ngf=4, noise_dim=8)
    with pytest.raises(ValueError, match=f"image_size={value!r} must be an integer >= 1"):
        adt.AmortizedImplicitADT(1, value, EPS, ngf=4, noise_dim=8)


@pytest.mark.parametrize(("maximizer", "message"), [
    (lambda: adt.AmortizedExplicitADT(3, EPS, ngf=4),
     r"shape \(4, 1, 28, 28\) but AmortizedExplicitADT\(in_channels=3\) expects images of "
     r"shape \(B, 3, \*, \*\)"),
    (lambda: adt.AmortizedImplicitADT(3, 28, EPS, ngf=4, noise_dim=8),
     r"AmortizedImplicitADT\(in_channels=3, image_size=28\) expects images of shape "
     r"\(B, 3, 28, 28\)"),
    (lambda: adt.AmortizedImplicitADT(1, 32, EPS, ngf=4, noise_dim=8),
     r"expects images of shape \(B, 1, 32, 32\); pass such images, or build it for images "
     r"of shape \(1, 28, 28\)"),
])
def test_a_batch_of_another_shape_than_the_maximiser_was_built_for_is_named(maximizer,
                                                                            message) -> None:
    with pytest.raises(ValueError, match=message):
        _step(_classifier(), maximizer(), *_batch())


def test_the_implicit_maximiser_needs_images_its_encoder_can_read() -> None:
    maximizer = adt.AmortizedImplicitADT(1, 8, EPS, ngf=4, noise_dim=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    delta, _ = maximizer.sample(model, x, y)  # the generator alone takes any size
    assert delta.shape == x.shape
    with pytest.raises(ValueError, match="at least 20x20 .* got 8x8; pad or resize"):
        _step(model, maximizer, x, y)
