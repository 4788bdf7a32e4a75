"""TRADES (Zhang et al., 2019), the sixth method: its inner KL ascent and its own outer loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import trained_small_cnn

from adt.core.data import DATASETS
from adt.method.inner import TRADES, kl_to_clean
from adt.method.methods import MethodSettings, build_maximizer
from adt.training.loop import train_step

EPS = 0.3


@pytest.fixture(scope="module")
def trained():
    model, data = trained_small_cnn()
    x, y = data.test_tensors(64)
    return model, x, y


def kl_sum(model, x, x_adv) -> float:
    with torch.no_grad():
        return float(kl_to_clean(model(x_adv), F.softmax(model(x), 1)))


def test_inner_ascent_raises_the_kl_well_above_its_start(trained):
    model, x, y = trained
    torch.manual_seed(0)
    adv = TRADES(EPS, step_size=EPS / 4, steps=10)(model, x, y)
    assert (adv.x - x).abs().amax() <= EPS + 1e-6 and 0 <= adv.x.min() and adv.x.max() <= 1
    start = x + 0.001 * torch.randn_like(x)
    assert kl_sum(model, x, start) < 1e-2 * len(x)  # the start is (nearly) the clean point
    assert kl_sum(model, x, adv.x) > 0.3 * len(x)  # ...and the ascent moves far from it
    assert torch.equal(adv.y, y)


def test_outer_loss_is_clean_ce_plus_beta_times_the_mean_kl(trained):
    model, x, y = trained
    torch.manual_seed(1)
    maximizer = TRADES(EPS, step_size=EPS / 4, steps=3, beta=6.0)
    adv = maximizer(model, x, y)
    loss, logits = maximizer.outer_loss(model, x, y, adv)
    with torch.no_grad():
        clean = model(x)
        p = F.softmax(clean, 1)
        kl = (p * (p.log() - F.log_softmax(model(adv.x), 1))).sum(1).mean()
        expected = F.cross_entropy(clean, y) + 6.0 * kl
    assert torch.allclose(loss, expected, atol=1e-5), (loss, expected)
    assert torch.allclose(logits, clean)  # the training accuracy is the clean one


def test_a_train_step_lowers_the_trades_loss_on_its_batch(trained):
    model, x, y = trained
    import copy
    net = copy.deepcopy(model).train()
    maximizer = build_maximizer("trades", MethodSettings(), DATASETS["mnist5k"], EPS)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    torch.manual_seed(2)
    adv = maximizer(net, x, y)
    before = float(maximizer.outer_loss(net, x, y, adv)[0].detach())
    torch.manual_seed(2)
    train_step(net, maximizer, optimizer, x, y)
    after = float(maximizer.outer_loss(net, x, y, adv)[0].detach())
    assert after < before, (before, after)


def test_release_settings_and_bad_arguments():
    maximizer = build_maximizer("trades", MethodSettings(), DATASETS["mnist5k"], EPS)
    assert (maximizer.steps, maximizer.beta) == (10, 6.0)
    assert maximizer.step_size == pytest.approx(EPS / 4)
    with pytest.raises(ValueError, match="beta"):
        TRADES(EPS, step_size=0.1, beta=-1.0)
    with pytest.raises(ValueError, match="trades_steps"):
        MethodSettings(trades_steps=0)
