"""Attacks: the l_inf ball and [0, 1], agreement with torchattacks and closed forms,
per-example selection, side effects of the library attacks, and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from conftest import trained_small_cnn
from torch import nn

from adt.attack import functions as A
from adt.core import primitives as P
from adt.core.models import SmallCNN

TOL = 1e-6  # float round-off of x + epsilon - x


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, data = trained_small_cnn()
    x, y = data.test_tensors(200)
    return model, x, y


def _tiny(channels: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An untrained SmallCNN and images with many pixels at exactly 0 and 1 (so clipping to
    [0, 1] matters), labels of several classes."""
    size = 28 if channels == 1 else 32
    g = torch.Generator().manual_seed(channels)
    model = SmallCNN(in_channels=channels, image_size=size, width=4, hidden=16).eval()
    u = torch.rand(6, channels, size, size, generator=g)
    x = torch.where(u < 0.3, 0.0, torch.where(u > 0.7, 1.0, u))
    return model, x, torch.arange(6) % 10


EPS = 0.1
ITERATIVE = {"epsilon": EPS, "step_size": 0.04, "steps": 3}
ATTACKS = {
    "fgsm": (A.fgsm, {"epsilon": EPS}),
    "pgd": (A.pgd, ITERATIVE),
    "pgd_no_start": (A.pgd, {**ITERATIVE, "random_start": False}),
    "mim": (A.mim, ITERATIVE),
    "cw": (A.cw, ITERATIVE),
    "fea_attack": (A.fea_attack, {**ITERATIVE, "targets": 2}),
    "pgd_restarts": (A.with_restarts(A.pgd, 3), ITERATIVE),
    "transfer": (lambda m, x, y, **k: A.transfer(m, m, x, y, attack=A.mim, **k), ITERATIVE),
    "autoattack_cheap": (A.autoattack, {"epsilon": EPS, "version": "cheap", "steps": 3,
                                        "targets": 2}),
    "autoattack_standard": (A.autoattack, {"epsilon": EPS, "steps": 2, "targets": 2,
                                           "square_queries": 5}),
    "spsa": (A.spsa, {"epsilon": EPS, "lr": 0.05, "iterations": 2, "samples": 8}),
}
OWN_GRADIENT = {"fgsm", "pgd", "pgd_no_start", "mim", "cw", "fea_attack", "pgd_restarts",
                "transfer"}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_output_in_epsilon_ball_and_unit_box(name: str, channels: int) -> None:
    model, x, y = _tiny(channels)
    attack, settings = ATTACKS[name]
    x_adv = attack(model, x, y, **settings)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= EPS + TOL
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if name in OWN_GRADIENT:  # the attack did something
        assert (x_adv - x).abs().max() > EPS / 2


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mim", "cw", "fea_attack", "pgd_restarts"])
def test_attacks_run_under_bf16_autocast(name: str) -> None:
    """The model may run in bf16 (CUDA evaluation): losses use float32 logits, the
    images stay float32 and in the ball."""
    model, x, y = _tiny(3)
    attack, settings = ATTACKS[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(model, x, y, **settings)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= EPS + TOL and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2


def test_pgd_matches_torchattacks(trained: tuple) -> None:
    """Same settings and the same random start: accuracies within 1 percentage point."""
    model, x, y = trained
    eps, alpha, steps = 0.1, 0.025, 10
    torch.manual_seed(1)
    ours = (model(A.pgd(model, x, y, epsilon=eps, step_size=alpha, steps=steps)).argmax(1) == y)
    torch.manual_seed(1)
    theirs_adv = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    theirs = model(theirs_adv).argmax(1) == y
    clean = (model(x).argmax(1) == y).float().mean()
    assert 0.05 < ours.float().mean() < clean - 0.1  # a non-trivial operating point
    assert abs(ours.float().mean() - theirs.float().mean()) <= 0.01


def test_fgsm_is_the_closed_form(trained: tuple) -> None:
    model, x, y = trained
    x, y = x[:32], y[:32]
    probe = x.clone().requires_grad_(True)
    F.cross_entropy(model(probe), y, reduction="sum").backward()
    expected = (x + 0.2 * probe.grad.sign()).clamp(0, 1)
    assert torch.equal(A.fgsm(model, x, y, epsilon=0.2), expected)


def test_mim_accumulates_l1_normalised_momentum(trained: tuple) -> None:
    """Two steps by hand: g1 = d1/|d1|_1, g2 = decay * g1 + d2/|d2|_1, x2 = x1 + a sign(g2)."""
    model, x, y = trained
    x, y = x[:16], y[:16]
    eps, alpha, decay = 0.3, 0.05, 0.7

    def unit(d: torch.Tensor) -> torch.Tensor:
        return d / d.abs().sum(dim=(1, 2, 3), keepdim=True)

    d1 = P.input_gradient(model, x, y)
    x1 = P.project(x + alpha * unit(d1).sign(), x, eps)
    g2 = decay * unit(d1) + unit(P.input_gradient(model, x1, y))
    expected = P.project(x1 + alpha * g2.sign(), x, eps)
    got = A.mim(model, x, y, epsilon=eps, step_size=alpha, steps=2, decay=decay,
                random_start=False)
    assert torch.allclose(got, expected, atol=1e-6)
    plain = A.pgd(model, x, y, epsilon=eps, step_size=alpha, steps=2, random_start=False)
    assert not torch.equal(got, plain)  # the momentum changed the direction somewhere


def test_margin_and_cw_loss() -> None:
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 70.0]])
    y = torch.tensor([1, 0])
    assert torch.equal(P.margin(logits, y), torch.tensor([-3.0, 70.0]))
    assert P.cw_loss(50.0)(logits, y) == -3.0 + 50.0  # the second saturates at kappa
    probe = logits.clone().requires_grad_(True)
    P.cw_loss(50.0)(probe, y).backward()
    assert torch.equal(probe.grad[1], torch.zeros(3))  # no gradient beyond kappa


def test_cw_lowers_the_margin_of_the_true_class(trained: tuple) -> None:
    model, x, y = trained
    x, y = x[:32], y[:32]
    x_adv = A.cw(model, x, y, epsilon=0.1, step_size=0.025, steps=5)
    with torch.no_grad():
        assert P.margin(model(x_adv), y).mean() > P.margin(model(x), y).mean() + 1.0


def test_fea_attack_targets_other_classes_and_fools(trained: tuple) -> None:
    model, x, y = trained
    x, y = x[:32], y[:32]
    idx = A._other_class_targets(y, y, 4)
    assert idx.shape == (32, 4) and (y[idx] != y[:, None]).all()
    x_adv = A.fea_attack(model, x, y, epsilon=0.3, step_size=0.05, steps=10, targets=2)
    assert (model(x_adv).argmax(1) != y).float().mean() > 0.5


def test_other_class_targets_repeat_when_the_pool_is_small() -> None:
    y = torch.tensor([0, 0, 0, 1])
    idx = A._other_class_targets(y, y, 3)
    assert (idx[:3] == 3).all()  # the only image of another class, repeated
    assert (y[idx[3]] == 0).all()


class _MeanThreshold(nn.Module):
    """Predicts class 1 when the image mean exceeds 0.5; the CE of class 0 grows with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 10 * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([-s, s], 1)


def test_with_restarts_keeps_first_success_else_highest_loss() -> None:
    # runs (rows) x examples (columns): the value each run gives each example's image
    values = torch.tensor([[0.40, 0.45, 0.30, 0.70],
                           [0.60, 0.20, 0.35, 0.80],
                           [0.90, 0.10, 0.20, 0.95]])
    calls = iter(range(3))

    def scripted(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return values[next(calls)].view(-1, 1, 1, 1).expand_as(x).clone()

    x = torch.zeros(4, 1, 2, 2)
    y = torch.zeros(4, dtype=torch.long)
    best = A.with_restarts(scripted, 3, early_stop=False)(_MeanThreshold(), x, y)
    # example 0: first success in run 1 (0.60), not the later 0.90; 1 and 2: no success,
    # highest loss (largest mean); 3: success in run 0
    assert torch.allclose(best[:, 0, 0, 0], torch.tensor([0.60, 0.45, 0.35, 0.70]))


def test_with_restarts_stops_when_everything_is_fooled() -> None:
    calls = []

    def always(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.ones_like(x)

    A.with_restarts(always, 5)(_MeanThreshold(), torch.zeros(3, 1, 2, 2),
                               torch.zeros(3, dtype=torch.long))
    assert len(calls) == 1


def test_library_attacks_leave_modes_and_rng_alone(trained: tuple) -> None:
    model, x, y = trained
    model.train()
    model.classifier[1].eval()  # a mixed state must come back as it was
    state = torch.get_rng_state()
    try:
        A.autoattack(model, x[:8], y[:8], epsilon=0.1, version="cheap", steps=2, targets=2)
        A.spsa(model, x[:4], y[:4], epsilon=0.1, iterations=1, samples=4)
        assert model.training and not model.classifier[1].training
        assert model.features[0].training
    finally:
        model.eval()
    assert torch.equal(torch.get_rng_state(), state)  # APGD's reseeding did not leak


def test_spsa_raises_the_margin(trained: tuple) -> None:
    model, x, y = trained
    x, y = x[:16], y[:16]
    x_adv = A.spsa(model, x, y, epsilon=0.3, lr=0.05, iterations=4, samples=32)
    with torch.no_grad():
        assert P.margin(model(x_adv), y).mean() > P.margin(model(x), y).mean()


def test_transfer_crafts_on_the_source_in_eval_mode(trained: tuple) -> None:
    source, x, y = trained
    x, y = x[:16], y[:16]
    target = SmallCNN(width=4, hidden=16).eval()
    settings = {"epsilon": 0.2, "step_size": 0.05, "steps": 3}
    torch.manual_seed(3)
    expected = A.pgd(source, x, y, **settings)
    source.train()
    try:
        torch.manual_seed(3)
        got = A.transfer(source, target, x, y, attack=A.pgd, **settings)
        assert source.training  # restored
    finally:
        source.eval()
    assert torch.equal(got, expected)


X = torch.rand(2, 1, 28, 28)
Y = torch.tensor([0, 1])
GOOD = {"epsilon": 0.1, "step_size": 0.01, "steps": 2}
BAD_CASES = [
    (A.pgd, {**GOOD, "epsilon": 0.0}, "epsilon=0.0 is outside"),
    (A.pgd, {**GOOD, "epsilon": 8}, "epsilon=8 is outside"),
    (A.fgsm, {"epsilon": -0.1}, "epsilon=-0.1"),
    (A.pgd, {**GOOD, "step_size": -1.0}, "step_size=-1.0 must be > 0"),
    (A.mim, {**GOOD, "steps": 0}, "steps=0 must be an integer >= 1"),
    (A.cw, {**GOOD, "steps": 2.5}, "steps=2.5 must be an integer"),
    (A.cw, {**GOOD, "kappa": 0.0}, "kappa=0.0 must be > 0"),
    (A.mim, {**GOOD, "decay": -1.0}, "decay=-1.0 must be > 0"),
    (A.fea_attack, {**GOOD, "targets": 0}, "targets=0 must be an integer >= 1"),
    (A.autoattack, {"epsilon": 0.1, "version": "plus"}, "unknown AutoAttack version 'plus'"),
    (A.autoattack, {"epsilon": 0.1, "steps": 0}, "steps=0"),
    (A.autoattack, {"epsilon": 0.1, "num_classes": 3}, "num_classes"),
    (A.spsa, {"epsilon": 0.1, "samples": 0}, "samples=0"),
    (A.spsa, {"epsilon": 0.1, "delta": 0.0}, "delta=0.0"),
]


@pytest.mark.parametrize("attack,settings,message", BAD_CASES,
                         ids=[f"{a.__name__}-{m.split('=')[0].split()[-1]}" for a, _, m in BAD_CASES])
def test_bad_settings_raise_helpful_errors(attack, settings, message: str) -> None:
    model = SmallCNN(width=4, hidden=16).eval()
    with pytest.raises(ValueError, match=message) as err:
        attack(model, X, Y, **settings)
    assert "use e.g." in str(err.value) or "allowed" in str(err.value)


@pytest.mark.parametrize("x,y,message", [
    (X * 2, Y, r"outside \[0, 1\]"),
    ((X * 255).to(torch.uint8), Y, "float tensor of images"),
    (X, torch.tensor([0, 1, 2]), "one integer label per image"),
    (X, torch.tensor([0.0, 1.0]), "one integer label per image"),
])
def test_bad_batches_raise_helpful_errors(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    model = SmallCNN(width=4, hidden=16).eval()
    for attack, settings in ((A.pgd, GOOD), (A.fgsm, {"epsilon": 0.1}),
                             (A.autoattack, {"epsilon": 0.1})):
        with pytest.raises(ValueError, match=message):
            attack(model, x, y, **settings)


def test_bad_restarts_and_single_class_pool() -> None:
    with pytest.raises(ValueError, match="restarts=0 must be an integer >= 1"):
        A.with_restarts(A.pgd, 0)
    with pytest.raises(ValueError, match="not callable"):
        A.with_restarts("pgd", 2)
    model = SmallCNN(width=4, hidden=16).eval()
    with pytest.raises(ValueError, match="target image of another class"):
        A.fea_attack(model, X, torch.tensor([3, 3]), **GOOD)
    with pytest.raises(ValueError, match="not callable"):
        A.transfer(model, model, X, Y, attack=None)
