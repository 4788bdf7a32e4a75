"""Tests of adt.study.analysis: Figure 1 diversity, Figure 2 loss surface and Hessian, Table 4."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn

from adt.method.amortized import AmortizedImplicitADT
from adt.method.distributions import TanhGaussian
from adt.study.analysis import (
    distribution_robust_accuracy,
    hessian_power_iteration,
    hessian_top_eigenvalue,
    implicit_sampler,
    loss_surface,
    mean_pairwise_l2,
    pca_2d,
    pgd_restarts,
    tanh_gaussian_sampler,
)


def linear_model(shape: tuple[int, ...], classes: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes)).to(dtype).eval()


def two_class_model(w: torch.Tensor, bias: float = 0.0) -> nn.Module:
    """logits = [w.x + bias, -(w.x + bias)]: the CE gradient sign is -/+ sign(w) for y = 0/1."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w.flatten(), -w.flatten()]))
        layer.bias.copy_(torch.tensor([bias, -bias]))
    return nn.Sequential(nn.Flatten(), layer).eval()


def explicit_dominant_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest-magnitude eigenvalue of each example's explicit input Hessian."""
    out = []
    for xi, yi in zip(x, y, strict=True):
        def loss(z: torch.Tensor, yi: torch.Tensor = yi) -> torch.Tensor:
            return F.cross_entropy(model(z.unsqueeze(0)), yi.unsqueeze(0))
        h = torch.autograd.functional.hessian(loss, xi).reshape(xi.numel(), xi.numel())
        eig = torch.linalg.eigvalsh((h + h.T) / 2)
        out.append(eig[eig.abs().argmax()])
    return torch.stack(out)


# ----------------------------------------------------------------------------- Figure 1

def test_mean_pairwise_l2_matches_double_loop() -> None:
    torch.manual_seed(0)
    samples = torch.rand(6, 3, 2, 4, 4)
    expected = torch.zeros(3)
    for b in range(3):
        pairs = [(samples[i, b] - samples[j, b]).norm()
                 for i, j in itertools.permutations(range(6), 2)]
        expected[b] = torch.stack(pairs).mean()
    torch.testing.assert_close(mean_pairwise_l2(samples), expected, rtol=1e-5, atol=1e-6)


def test_mean_pairwise_l2_tiny_spread_and_bad_input() -> None:
    base = torch.rand(1, 2, 3, 8, 8)
    samples = base + 1e-4 * torch.randn(5, 2, 3, 8, 8)  # nearly coinciding, like PGD restarts
    brute = (samples[:, None] - samples[None]).flatten(3).norm(dim=3)  # (S, S, B)
    torch.testing.assert_close(mean_pairwise_l2(samples), brute.sum((0, 1)) / 20, rtol=1e-3,
                               atol=0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_pairwise_l2(samples[:1])


def test_pca_2d_matches_sklearn_up_to_sign() -> None:
    torch.manual_seed(1)
    scales = torch.linspace(3.0, 0.1, 10).view(1, 1, 2, 5)  # distinct component variances
    samples = (torch.randn(20, 3, 2, 5) * scales).double()
    result = pca_2d(samples)
    assert result.projections.shape == (20, 3, 2)
    assert result.explained_variance_ratio.shape == (3, 2)
    for b in range(3):
        ref = PCA(n_components=2).fit(samples[:, b].flatten(1).numpy())
        proj = ref.transform(samples[:, b].flatten(1).numpy())
        ours = result.projections[:, b].numpy()
        signs = np.sign((ours * proj).sum(0))
        np.testing.assert_allclose(ours, proj * signs, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(result.explained_variance_ratio[b].numpy(),
                                   ref.explained_variance_ratio_, rtol=1e-6)
        np.testing.assert_allclose(result.components[b].numpy(), ref.components_ * signs[:, None],
                                   rtol=1e-6, atol=1e-9)


def test_pgd_restarts_diverse_and_in_ball() -> None:
    torch.manual_seed(2)
    model = linear_model((1, 6, 6), 5)
    x, y, eps = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 3]), 0.1
    adv = pgd_restarts(model, x, y, epsilon=eps, step_size=eps / 4, steps=1, restarts=8)
    assert adv.shape == (8, 4, 1, 6, 6)
    assert ((adv - x).abs() <= eps + 1e-6).all()
    assert ((adv >= 0) & (adv <= 1)).all()
    # independent random starts: every pair of restarts differs for every example
    gaps = (adv[:, None] - adv[None]).flatten(3).abs().amax(3)  # (R, R, B)
    off_diagonal = ~torch.eye(8, dtype=torch.bool)
    assert (gaps[off_diagonal] > 1e-3).all()


def test_pgd_restarts_keep_each_label_with_its_image() -> None:
    torch.manual_seed(3)
    w = torch.randn(1, 5, 5)
    model = two_class_model(w)
    x = 0.3 + 0.4 * torch.rand(3, 1, 5, 5)
    y = torch.tensor([0, 1, 0])
    eps = 0.1
    adv = pgd_restarts(model, x, y, epsilon=eps, step_size=2 * eps, steps=2, restarts=5)
    # from any start the ascent reaches the corner x + eps * sign(w) * (2y - 1)
    corner = x + eps * w.sign() * (2 * y - 1).view(-1, 1, 1, 1).float()
    torch.testing.assert_close(adv, corner.expand(5, -1, -1, -1, -1))


# ----------------------------------------------------------------------------- Figure 2a-e

def test_loss_surface_geometry_and_centre() -> None:
    torch.manual_seed(4)
    model = linear_model((1, 4, 4), 10)
    x, y, eps, grid = 0.3 + 0.4 * torch.rand(3, 1, 4, 4), torch.tensor([1, 5, 7]), 0.01, 11
    out = loss_surface(model, x, y, epsilon=eps, grid=grid, batch_size=7)  # uneven chunks
    g, r, loss, c = out["g"], out["r"], out["loss"], grid // 2
    assert loss.shape == (3, grid, grid) and out["mean_loss"].shape == (grid, grid)
    assert out["a"][c] == 0 and out["a"][0] == -1 and out["a"][-1] == 1
    clean = F.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(loss[:, c, c], clean)
    torch.testing.assert_close(g.flatten(1).abs().amax(1), torch.full((3,), 10 * eps))
    torch.testing.assert_close(r.flatten(1).abs().amax(1), torch.full((3,), 10 * eps))
    torch.testing.assert_close((g * r).flatten(1).sum(1), torch.zeros(3), atol=1e-6, rtol=0)
    # indexing: loss[n, i, j] is the loss at x + a[i] g + b[j] r
    i, j = 2, 9
    point = x + out["a"][i] * g + out["b"][j] * r
    torch.testing.assert_close(loss[:, i, j], F.cross_entropy(model(point), y, reduction="none"))
    torch.testing.assert_close(out["mean_loss"], loss.mean(0))


def test_loss_surface_increases_along_gradient_sign() -> None:
    torch.manual_seed(5)
    model = linear_model((1, 4, 4), 10)
    x, y = 0.3 + 0.4 * torch.rand(4, 1, 4, 4), torch.tensor([0, 3, 6, 9])
    loss = loss_surface(model, x, y, epsilon=0.01, grid=21)["loss"]
    c = 10
    assert (loss[:, c + 1, c] > loss[:, c, c]).all()
    assert (loss[:, c, c] > loss[:, c - 1, c]).all()


def test_loss_surface_clips_to_image_domain() -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            seen.append(z.detach())
            return self.fc(z.flatten(1))

    x = torch.tensor([[[[0.0, 1.0], [0.02, 0.98]]]])
    loss_surface(Spy().eval(), x, torch.tensor([1]), epsilon=0.1, grid=3)
    assert all(((z >= 0) & (z <= 1)).all() for z in seen)


# ----------------------------------------------------------------------------- Figure 2f

@pytest.mark.parametrize("act", [nn.Tanh, nn.Softplus])
def test_hessian_top_eigenvalue_smooth_mlp(act: type[nn.Module]) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), act(), nn.Linear(8, 4)).double().eval()
    x = torch.rand(5, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    ours = hessian_top_eigenvalue(model, x, y, iterations=300,
                                  generator=torch.Generator().manual_seed(0))
    assert ours.shape == (5,)
    torch.testing.assert_close(ours, explicit_dominant_eigenvalue(model, x, y), rtol=1e-3,
                               atol=1e-9)


def test_hessian_top_eigenvalue_relu_conv_net() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    ours = hessian_top_eigenvalue(model, x, y, iterations=300)
    expected = explicit_dominant_eigenvalue(model, x, y)
    assert (expected > 0).all()  # J^T (diag p - p p^T) J: nonzero and PSD despite ReLU
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-9)


def test_hessian_power_iteration_reports_convergence() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double().eval()
    x = torch.rand(5, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    short = hessian_power_iteration(model, x, y, iterations=2,
                                    generator=torch.Generator().manual_seed(0))
    long = hessian_power_iteration(model, x, y, iterations=300,
                                   generator=torch.Generator().manual_seed(0))
    assert long.history.shape == (300, 5) and short.history.shape == (2, 5)
    torch.testing.assert_close(long.eigenvalue, long.history[-1])
    torch.testing.assert_close(long.eigenvalue, explicit_dominant_eigenvalue(model, x, y),
                               rtol=1e-3, atol=1e-9)
    # converged: the last iterate is an eigenvector; after 2 steps it is not yet
    assert (long.residual < 1e-3).all() and (long.relative_change < 1e-6).all()
    assert short.residual.max() > long.residual.max()
    torch.testing.assert_close(hessian_top_eigenvalue(model, x, y, iterations=2,
                                                      generator=torch.Generator().manual_seed(0)),
                               short.eigenvalue)


# ----------------------------------------------------------------------------- Table 4

def threshold_model() -> nn.Module:
    """Class 0 iff mean(x) > 0.5."""
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.25] * 4, [-0.25] * 4]))
        layer.bias.copy_(torch.tensor([-0.5, 0.5]))
    return nn.Sequential(nn.Flatten(), layer).eval()


def test_zero_perturbation_gives_clean_correctness() -> None:
    torch.manual_seed(8)
    model = linear_model((1, 3, 3), 4)
    x, y = torch.rand(16, 1, 3, 3), torch.randint(0, 4, (16,))
    clean = model(x).argmax(1) == y
    assert clean.any() and not clean.all()
    robust = distribution_robust_accuracy(model, lambda n: torch.zeros(n, *x.shape), x, y,
                                          num_samples=7, chunk_size=3)
    assert robust.dtype == torch.bool
    assert torch.equal(robust, clean)


def test_one_bad_sample_makes_example_non_robust() -> None:
    model = threshold_model()
    x = torch.full((3, 1, 2, 2), 0.6)
    y = torch.zeros(3, dtype=torch.long)
    calls: list[int] = []

    def sampler(n: int) -> torch.Tensor:
        start = sum(calls)
        calls.append(n)
        delta = torch.zeros(n, *x.shape)
        if start <= 37 < start + n:  # the 38th of 50 samples flips example 1 only
            delta[37 - start, 1] = -0.3
        return delta

    robust = distribution_robust_accuracy(model, sampler, x, y, num_samples=50, chunk_size=8)
    assert robust.tolist() == [True, False, True]
    assert calls == [8, 8, 8, 8, 8, 8, 2]


def test_sampler_shape_is_checked() -> None:
    model = threshold_model()
    x, y = torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="expected"):
        distribution_robust_accuracy(model, lambda n: torch.zeros(n, *x.shape[1:]), x, y,
                                     num_samples=2)


def test_samplers_shapes_and_ball() -> None:
    torch.manual_seed(9)
    x = torch.rand(3, 1, 8, 8)
    dist = TanhGaussian(torch.zeros_like(x), torch.ones_like(x), epsilon=0.1)
    draws = tanh_gaussian_sampler(dist)(4)
    assert draws.shape == (4, 3, 1, 8, 8) and (draws.abs() <= 0.1).all()
    adversary = AmortizedImplicitADT(1, 8, epsilon=0.1, ngf=4, noise_dim=8).eval()
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    draws = implicit_sampler(adversary, classifier, x, torch.tensor([0, 1, 2]))(5)
    assert draws.shape == (5, 3, 1, 8, 8) and (draws.abs() <= 0.1).all()
    assert (mean_pairwise_l2(draws) > 0).all()  # independent noise per draw
