"""The inner maximisers (adt/method/): ADT_EXP, ADT_EXP-AM, ADT_IMP-AM, and the shared interface."""

from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import Recorder, trained_small_cnn
from torch import nn

from adt.config.profiles import get_profile
from adt.core.data import DATASETS
from adt.core.models import SmallCNN, build_model
from adt.method.amortized import AmortizedExplicitADT, AmortizedImplicitADT, grad_reverse
from adt.method.distributions import TanhGaussian
from adt.method.explicit import ExplicitADT
from adt.method.methods import METHODS, build_maximizer
from adt.training.loop import train_step

EPS = 0.3  # MNIST's budget


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small classifier trained on 2,048 mnist5k images (eval mode) and 256 test images."""
    model, data = trained_small_cnn(n_train=2048, epochs=2, lr=0.02)
    x, y = data.test_tensors(256)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.7
    return model, x, y


def mean_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, deltas: torch.Tensor) -> float:
    """Cross-entropy averaged over draws ``deltas`` of shape (n, B, ...)."""
    with torch.no_grad():
        return torch.stack([F.cross_entropy(model((x + d).clamp(0, 1)), y) for d in deltas]
                           ).mean().item()


# ----------------------------------------------------------------------------- ADT_EXP


def test_explicit_adt_is_stronger_than_a_random_point_of_the_ball(trained):
    model, x_all, y_all = trained
    x, y = x_all[:32], y_all[:32]
    torch.manual_seed(0)
    uniform = mean_ce(model, x, y, torch.empty(16, *x.shape).uniform_(-EPS, EPS))
    dist = ExplicitADT(EPS, steps=7, num_samples=5, lambda_=0.0).fit(model, x, y)
    learned = mean_ce(model, x, y, dist.sample((16,)))
    # the starting point of the solver (mu = 0, v = 0) for reference
    start = ExplicitADT(EPS).distribution(torch.zeros_like(x), torch.zeros_like(x))
    initial = mean_ce(model, x, y, start.sample((16,)))
    assert learned > uniform + 1.0, (learned, uniform)
    assert learned > initial + 1.0, (learned, initial)


def test_raising_lambda_raises_the_entropy(trained):
    model, x_all, y_all = trained
    x, y = x_all[:32], y_all[:32]
    entropies = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(1)
        dist = ExplicitADT(EPS, steps=7, num_samples=5, lambda_=lam).fit(model, x, y)
        entropies[lam] = dist.entropy_estimate(dist.sample((16,))).per_pixel.mean().item()
    assert entropies[1.0] > entropies[0.0] + 0.1, entropies


def test_batched_samples_give_the_average_of_per_sample_gradients(trained):
    model, x_all, y_all = trained
    x, y = x_all[:6], y_all[:6]
    g = torch.Generator().manual_seed(2)
    mu0 = 0.5 * torch.randn(x.shape, generator=g)
    v0 = 0.5 * torch.randn(x.shape, generator=g)
    noise = torch.randn((4, *x.shape), generator=g)
    adt = ExplicitADT(EPS, lambda_=0.5)

    def grads(noise_part):
        mu, v = mu0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        obj = adt.objective(model, x, y, mu, v, noise_part)
        return (obj.detach(), *torch.autograd.grad(obj.sum(), (mu, v)))

    obj_b, g_mu_b, g_v_b = grads(noise)
    per_sample = [grads(noise[i:i + 1]) for i in range(len(noise))]
    obj_l, g_mu_l, g_v_l = (torch.stack(t).mean(0) for t in zip(*per_sample, strict=True))
    assert obj_b.shape == (6,)
    torch.testing.assert_close(obj_b, obj_l, rtol=1e-5, atol=1e-6)
    for batched, looped in ((g_mu_b, g_mu_l), (g_v_b, g_v_l)):
        assert batched.abs().max() > 0
        torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5 * looped.abs().max())


def test_objective_is_per_example(trained):
    """Each example's parameters see only their own objective (no cross-talk in the batch)."""
    model, x_all, y_all = trained
    x, y = x_all[:4], y_all[:4]
    noise = torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(3))
    adt = ExplicitADT(EPS, lambda_=0.1)
    mu = torch.zeros_like(x, requires_grad=True)
    v = torch.zeros_like(x, requires_grad=True)
    obj = adt.objective(model, x, y, mu, v, noise)
    g_mu, g_v = torch.autograd.grad(obj[1], (mu, v))
    for g in (g_mu, g_v):
        assert g[1].abs().max() > 0
        assert (g[[0, 2, 3]] == 0).all()
    single = adt.objective(model, x[1:2], y[1:2], mu[1:2], v[1:2], noise[:, 1:2])
    torch.testing.assert_close(single[0], obj[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("start_mode", ["train", "eval"])
def test_inner_loop_runs_in_eval_mode_and_restores_the_mode(start_mode):
    model = Recorder(SmallCNN(width=4, hidden=8)).train(start_mode == "train")
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    adt = ExplicitADT(EPS, steps=3, num_samples=2)
    adt(model, x, y)
    assert len(model.calls) == 3
    assert not any(model.modes)
    assert model.training == (start_mode == "train")
    assert all(m.training == (start_mode == "train") for m in model.modules())


def test_mode_is_restored_when_the_inner_loop_fails():
    model = Recorder(SmallCNN(width=4, hidden=8), fail_at=2).train()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match="injected"):
        ExplicitADT(EPS, steps=3, num_samples=2)(model, x, y)
    assert model.training and model.inner.training


def test_k_samples_go_through_the_model_as_one_batch():
    model = Recorder(SmallCNN(width=4, hidden=8)).eval()
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    adt = ExplicitADT(EPS, steps=3, num_samples=4)
    adt.fit(model, x, y)
    assert model.sizes == [4 * 5] * 3
    model.calls.clear()
    adv = adt(model, x, y)  # the training draw costs no further forward pass
    assert model.sizes == [4 * 5] * 3
    assert adv.x.shape == x.shape and torch.equal(adv.y, y)


def test_explicit_adt_samples_are_in_the_ball(trained):
    model, x_all, y_all = trained
    x, y = x_all[:16], y_all[:16]
    torch.manual_seed(4)
    adt = ExplicitADT(EPS, steps=7, num_samples=5)
    dist = adt.fit(model, x, y)
    assert isinstance(dist, TanhGaussian) and dist.batch_shape == (16,)
    assert dist.event_shape == x.shape[1:]
    delta = dist.sample((8,))
    assert delta.abs().max() <= EPS
    adv = adt(model, x, y)
    assert (adv.x - x).abs().max() <= EPS + 1e-6
    assert adv.x.min() >= 0 and adv.x.max() <= 1
    assert (adv.x != x).float().mean() > 0.3  # a perturbation was actually applied
    assert adv.extra_loss is None
    assert torch.isfinite(adv.stats["entropy"]) and adv.stats["entropy"].dim() == 0


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"epsilon": 0.0}, "epsilon=0.0"),
    ({"epsilon": 1.5}, "epsilon=1.5"),
    ({"steps": 0}, "steps=0"),
    ({"num_samples": 0}, "num_samples=0"),
    ({"lambda_": -1.0}, "lambda_=-1.0"),
    ({"lr": 0.0}, "lr=0.0"),
])
def test_explicit_adt_rejects_bad_arguments(kwargs, shown):
    args = {"epsilon": EPS, **kwargs}
    with pytest.raises(ValueError, match=re.escape(shown)):
        ExplicitADT(**args)


# ----------------------------------------------------------------------------- amortised


def test_grad_reverse_is_the_exact_negative():
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64)

    def f(t):
        return torch.sin(t) * t.exp()

    def h(t):
        return (t.square() * w).sum() + t.prod()

    out = grad_reverse(f(x))
    assert torch.equal(out, f(x))
    (g_rev,) = torch.autograd.grad(h(out), x)
    (g_plain,) = torch.autograd.grad(h(f(x)), x)
    assert g_plain.abs().min() > 0
    assert torch.equal(g_rev, -g_plain)
    (g_twice,) = torch.autograd.grad(h(grad_reverse(grad_reverse(f(x)))), x)
    assert torch.equal(g_twice, g_plain)


def fixed_rsample(monkeypatch: pytest.MonkeyPatch, noise: torch.Tensor) -> None:
    """Make every TanhGaussian draw use ``noise`` (common random numbers)."""
    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.rsample_from(noise.to(self.loc.dtype).expand(shape))
    monkeypatch.setattr(TanhGaussian, "rsample", rsample)


def exp_am_objective(maximizer: AmortizedExplicitADT, model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's objective CE(f(x + delta)) + lambda H for the (patched) fixed noise,
    H the release's batch-and-pixel mean of -log p, and the adversarial inputs."""
    dist = maximizer.distribution(model, x, y)
    delta = dist.rsample()
    x_adv = (x + delta).clamp(0, 1)
    entropy = dist.release_entropy(delta).mean()
    return F.cross_entropy(model(x_adv), y) + maximizer.lambda_ * entropy, x_adv


def imp_am_objective(maximizer: AmortizedImplicitADT, encoder_from: AmortizedImplicitADT,
                     model: nn.Module, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """CE(f(x + delta)) - lambda relu(NLL - threshold), the NLL under ``encoder_from``'s q."""
    delta, _ = maximizer.sample(model, x, y, z)
    x_adv = (x + delta).clamp(0, 1)
    nll = encoder_from.entropy_nll(delta, z)
    penalty = maximizer.lambda_ * F.relu(nll - maximizer.threshold)
    return F.cross_entropy(model(x_adv), y) - penalty, x_adv


def sgd_reference_step(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                       lr: float) -> nn.Module:
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    F.cross_entropy(ref(x_adv), y).backward()
    opt.step()
    return ref


def assert_same_parameters(a: nn.Module, b: nn.Module, rtol: float = 1e-5,
                           atol: float = 1e-7) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol, msg=name)


def test_exp_am_train_step_moves_classifier_and_generator_the_right_way(trained, monkeypatch):
    base, x_all, y_all = trained
    x, y = x_all[:16], y_all[:16]
    torch.manual_seed(5)
    model = copy.deepcopy(base).train()
    maximizer = AmortizedExplicitADT(1, EPS, ngf=4).train()
    old_model, old_max = copy.deepcopy(model), copy.deepcopy(maximizer)
    fixed_rsample(monkeypatch, torch.randn(x.shape, generator=torch.Generator().manual_seed(6)))

    j_old, x_adv = exp_am_objective(old_max, old_model, x, y)
    ce_old = F.cross_entropy(model(x_adv), y).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_step(model, maximizer, optimizer, x, y)
    j_new, _ = exp_am_objective(maximizer, old_model, x, y)
    ce_new = F.cross_entropy(model(x_adv), y).item()

    assert stats["loss"].item() / len(y) == pytest.approx(ce_old, rel=1e-5)  # same batch
    assert ce_new < ce_old, (ce_new, ce_old)  # the classifier descends ...
    assert j_new.item() > j_old.item(), (j_new.item(), j_old.item())  # ... the generator ascends
    # the classifier's step is exactly SGD on the CE of that batch (the entropy term leaves
    # it alone), and the generator did move
    assert_same_parameters(model, sgd_reference_step(old_model, x_adv, y, lr=0.01))
    moved = [not torch.equal(p, q) for p, q in zip(maximizer.generator.parameters(),
                                                   old_max.generator.parameters(), strict=True)]
    assert all(moved)


def test_exp_am_generator_gradient_is_the_negative_of_its_objective(trained, monkeypatch):
    base, x_all, y_all = trained
    x, y = x_all[:8], y_all[:8]
    torch.manual_seed(7)
    model = copy.deepcopy(base).train()
    maximizer = AmortizedExplicitADT(1, EPS, ngf=4, lambda_=0.5).train()
    reference = copy.deepcopy(maximizer)
    fixed_rsample(monkeypatch, torch.randn(x.shape, generator=torch.Generator().manual_seed(8)))

    adv = maximizer(model, x, y)
    (F.cross_entropy(model(adv.x), y) + adv.extra_loss).backward()
    j, x_adv = exp_am_objective(reference, model, x, y)
    torch.testing.assert_close(adv.x, x_adv)
    expected = torch.autograd.grad(j, list(reference.generator.parameters()))
    for p, g in zip(maximizer.generator.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, -g, rtol=1e-4, atol=1e-6 * g.abs().max())


def test_imp_am_train_step_moves_classifier_generator_and_encoder_the_right_way(trained,
                                                                                 monkeypatch):
    base, x_all, y_all = trained
    x, y = x_all[:16], y_all[:16]
    torch.manual_seed(9)
    model = copy.deepcopy(base).train()
    # threshold below any NLL: the penalty is on, so the encoder learns (the release trains
    # it only through the penalty; tests/test_fidelity.py checks the threshold's gate)
    maximizer = AmortizedImplicitADT(1, 28, EPS, ngf=4, noise_dim=8, threshold=-100.0).train()
    old_model, old_max = copy.deepcopy(model), copy.deepcopy(maximizer)
    z = torch.rand(len(x), 8, generator=torch.Generator().manual_seed(10)) * 2 - 1
    original_sample = maximizer.sample
    monkeypatch.setattr(maximizer, "sample", lambda m_, x_, y_, z_=None: original_sample(m_, x_, y_, z))

    j_old, x_adv = imp_am_objective(old_max, old_max, old_model, x, y, z)
    delta_old = (old_max.sample(old_model, x, y, z)[0]).detach()
    nll_old = old_max.entropy_nll(delta_old, z).item()
    ce_old = F.cross_entropy(model(x_adv), y).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_step(model, maximizer, optimizer, x, y)
    j_new, _ = imp_am_objective(maximizer, old_max, old_model, x, y, z)
    ce_new = F.cross_entropy(model(x_adv), y).item()
    nll_new = maximizer.entropy_nll(delta_old, z).item()

    assert stats["loss"].item() / len(y) == pytest.approx(ce_old, rel=1e-5)
    assert ce_new < ce_old, (ce_new, ce_old)
    assert j_new.item() > j_old.item(), (j_new.item(), j_old.item())
    assert nll_new < nll_old, (nll_new, nll_old)  # the encoder fits q(z | delta) better
    assert_same_parameters(model, sgd_reference_step(old_model, x_adv, y, lr=0.01))
    for net in ("noise_map", "generator", "encoder"):
        new, old = getattr(maximizer, net), getattr(old_max, net)
        assert all(not torch.equal(p, q) for p, q in zip(new.parameters(), old.parameters(),
                                                          strict=True)), net


def test_imp_am_gradients(trained, monkeypatch):
    """Generator: exactly minus the gradient of CE - penalty. Encoder: along +grad NLL (the
    penalty's gradient, with the penalty on)."""
    base, x_all, y_all = trained
    x, y = x_all[:8], y_all[:8]
    torch.manual_seed(11)
    model = copy.deepcopy(base).train()
    maximizer = AmortizedImplicitADT(1, 28, EPS, ngf=4, noise_dim=8, threshold=-100.0).train()
    reference = copy.deepcopy(maximizer)
    z = torch.rand(len(x), 8, generator=torch.Generator().manual_seed(12)) * 2 - 1
    original_sample = maximizer.sample
    monkeypatch.setattr(maximizer, "sample", lambda m_, x_, y_, z_=None: original_sample(m_, x_, y_, z))

    adv = maximizer(model, x, y)
    (F.cross_entropy(model(adv.x), y) + adv.extra_loss).backward()
    j, x_adv = imp_am_objective(reference, reference, model, x, y, z)
    torch.testing.assert_close(adv.x, x_adv)
    nets = [*reference.noise_map.parameters(), *reference.generator.parameters()]
    expected = torch.autograd.grad(j, nets)
    got = [*maximizer.noise_map.parameters(), *maximizer.generator.parameters()]
    for p, g in zip(got, expected, strict=True):
        torch.testing.assert_close(p.grad, -g, rtol=1e-4, atol=1e-6 * g.abs().max())
    delta = reference.sample(model, x, y, z)[0].detach()
    g_nll = torch.autograd.grad(reference.entropy_nll(delta, z),
                                list(reference.encoder.parameters()))
    g_enc = torch.cat([p.grad.flatten() for p in maximizer.encoder.parameters()])
    g_nll = torch.cat([g.flatten() for g in g_nll])
    assert F.cosine_similarity(g_enc, g_nll, dim=0) > 0.999


def small_classifier(channels: int, size: int) -> nn.Module:
    return build_model("small_cnn", channels, 10, size, width=4, hidden=16)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 32), (3, 28)])
@pytest.mark.parametrize("kind", ["exp_am", "imp_am"])
def test_generators_take_any_channel_count_and_size(kind, channels, size):
    torch.manual_seed(13)
    model = small_classifier(channels, size)
    x, y = torch.rand(4, channels, size, size), torch.arange(4)
    if kind == "exp_am":
        maximizer = AmortizedExplicitADT(channels, EPS, ngf=4)
        dist = maximizer.distribution(model, x, y)
        assert dist.loc.shape == dist.scale.shape == x.shape
        delta = dist.rsample((3,))
    else:
        maximizer = AmortizedImplicitADT(channels, size, EPS, ngf=4, noise_dim=8)
        delta, z = maximizer.sample(model, x, y)
        assert z.shape == (4, 8) and z.abs().max() <= 1
        nll = maximizer.entropy_nll(delta, z)
        assert nll.dim() == 0 and torch.isfinite(nll)
    assert delta.shape[-4:] == x.shape and delta.abs().max() <= EPS
    assert delta.abs().max() > 0
    adv = maximizer(model, x, y)
    assert adv.x.shape == x.shape
    assert (adv.x - x).abs().max() <= EPS + 1e-6
    assert adv.x.min() >= 0 and adv.x.max() <= 1
    assert adv.extra_loss is not None and adv.extra_loss.dim() == 0
    assert torch.isfinite(adv.extra_loss)


def _am(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "exp_am":
        return AmortizedExplicitADT(1, EPS, ngf=4)
    return AmortizedImplicitADT(1, 28, EPS, ngf=4, noise_dim=8)


@pytest.mark.parametrize("kind", ["exp_am", "imp_am"])
def test_state_dict_round_trip_includes_optimiser_state(kind):
    model = small_classifier(1, 28)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    original = _am(kind, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):  # the optimisers now hold moment estimates
        train_step(model, original, optimizer, x, y)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    assert "_extra_state" in state

    restored = _am(kind, 1)
    restored.load_state_dict(state)
    without_optimiser = _am(kind, 1)
    without_optimiser.load_state_dict({k: v for k, v in state.items() if k != "_extra_state"},
                                      strict=False)
    for copy_ in (restored, without_optimiser):
        assert_same_parameters(copy_, original, rtol=0, atol=0)

    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(p.shape, generator=g) for p in original.parameters()]
    for module in (original, restored, without_optimiser):
        for p, grad in zip(module.parameters(), grads, strict=True):
            p.grad = grad.clone()
        module.step()
    assert_same_parameters(restored, original, rtol=0, atol=0)
    # without the optimiser state the same step lands elsewhere (the check above has teeth)
    assert any(not torch.equal(p, q) for p, q in zip(without_optimiser.parameters(),
                                                      original.parameters(), strict=True))


# ----------------------------------------------------------------------------- all methods


@pytest.mark.parametrize("dataset", ["mnist5k", "cifar10"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_a_train_step(method, dataset):
    profile = get_profile("smoke")
    spec = DATASETS[dataset]
    channels, size, _ = spec.image_shape
    torch.manual_seed(14)
    model = Recorder(build_model(profile.model, channels, spec.num_classes, size,
                                 **profile.model_kwargs)).train()
    maximizer = build_maximizer(method, profile.methods, spec, profile.train_epsilon)
    assert maximizer.epsilon == profile.train_epsilon
    optimizer = torch.optim.SGD(model.parameters(), lr=profile.recipe.lr)
    before = copy.deepcopy(model)
    x, y = torch.rand(6, channels, size, size), torch.arange(6) % spec.num_classes
    stats = train_step(model, maximizer, optimizer, x, y)
    assert {"loss", "train_accuracy"} <= set(stats)
    for name, value in stats.items():
        assert value.dim() == 0 and math.isfinite(value.item()), (name, value)
    assert 0 <= stats["train_accuracy"].item() <= len(y)
    for p in model.parameters():
        assert torch.isfinite(p).all()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters(),
                                                      strict=True))
    for p in maximizer.parameters():
        assert torch.isfinite(p).all()
    # the inner problem is solved in eval mode, the training forward passes (one; two for
    # TRADES, clean and adversarial) are in train mode
    first_train = model.modes.index(True)
    assert all(model.modes[first_train:]) and not any(model.modes[:first_train])
    assert len(model.modes) - first_train == (2 if method == "trades" else 1)
    assert model.sizes[-1] == len(y)
    assert model.training
