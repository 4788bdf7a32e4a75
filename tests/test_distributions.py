"""The tanh-Gaussian of ADT_EXP (paper Eq. 8-11): density, sampling, entropy estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Independent,
    Normal,
    TanhTransform,
    TransformedDistribution,
)

from adt.method.distributions import EntropyEstimate, TanhGaussian, log1m_tanh_sq

EPS = 0.3
SHAPE = (2, 3, 3)  # event shape (C, H, W) of the small test images


def reference(loc: torch.Tensor, scale: torch.Tensor, epsilon: float) -> Independent:
    """The same distribution built from torch's own transforms (event dims: C, H, W)."""
    base = Normal(loc, scale, validate_args=False)
    chain = [TanhTransform(), AffineTransform(0.0, epsilon)]
    return Independent(TransformedDistribution(base, chain, validate_args=False), 3,
                       validate_args=False)


def params(batch: int, dtype: torch.dtype = torch.float64, loc_range: float = 1.5,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = (torch.rand(batch, *SHAPE, generator=g, dtype=dtype) * 2 - 1) * loc_range
    scale = 0.1 + torch.rand(batch, *SHAPE, generator=g, dtype=dtype) * 1.4
    return loc, scale


def log_sech_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2) = -2 log cosh(u), computed independently of the code under test."""
    a = u.abs()
    return math.log(4.0) - 2.0 * a - 2.0 * torch.log1p(torch.exp(-2.0 * a))


# ----------------------------------------------------------------------------- log_prob


def test_log_prob_matches_torch_transformed_distribution_on_own_samples():
    loc, scale = params(64)
    ours = TanhGaussian(loc, scale, EPS)
    value = ours.rsample((5,))
    ref = reference(loc, scale, EPS).log_prob(value)
    finite = torch.isfinite(ref)
    assert finite.float().mean() > 0.99  # the comparison covers nearly every draw
    # the value object itself (pre-tanh u reused) and a copy (mapped back with atanh)
    torch.testing.assert_close(ours.log_prob(value)[finite], ref[finite], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours.log_prob(value.clone())[finite], ref[finite],
                               rtol=1e-7, atol=1e-7)


def test_log_prob_matches_torch_on_arbitrary_points_of_the_ball():
    loc, scale = params(32, seed=1)
    ours = TanhGaussian(loc, scale, EPS)
    g = torch.Generator().manual_seed(2)
    value = (torch.rand(3, 32, *SHAPE, generator=g, dtype=torch.float64) * 2 - 1) * EPS * 0.999
    ref = reference(loc, scale, EPS).log_prob(value)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ours.log_prob(value), ref, rtol=1e-9, atol=1e-9)


def test_log_prob_matches_torch_in_float32():
    loc, scale = params(16, dtype=torch.float32, seed=3)
    ours = TanhGaussian(loc, scale, EPS)
    value = ours.rsample()
    ref = reference(loc.double(), scale.double(), EPS).log_prob(value.double())
    finite = torch.isfinite(ref)
    assert finite.all()
    assert ours.log_prob(value).dtype == torch.float32
    torch.testing.assert_close(ours.log_prob(value).double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loc_value", [20.0, -20.0, 300.0])
def test_log_prob_of_own_samples_is_finite_for_saturated_tanh(dtype, loc_value):
    loc = torch.full((4, *SHAPE), loc_value, dtype=dtype)
    scale = torch.full_like(loc, 0.5)
    dist = TanhGaussian(loc, scale, EPS)
    noise = torch.randn((3, 4, *SHAPE), generator=torch.Generator().manual_seed(0), dtype=dtype)
    value = dist.rsample_from(noise)
    # the naive form (torch's transforms via atanh) breaks down here ...
    assert not torch.isfinite(reference(loc, scale, EPS).log_prob(value)).all()
    # ... ours reuses the pre-tanh u and gives the exact density (Eq. 11)
    log_p = dist.log_prob(value)
    assert torch.isfinite(log_p).all()
    u = (loc + scale * noise).double()
    r = noise.double()
    expected = (-0.5 * r.square() - 0.5 * math.log(2 * math.pi) - scale.double().log()
                - log_sech_sq(u) - math.log(EPS)).flatten(-3).sum(-1)
    torch.testing.assert_close(log_p.double(), expected,
                               rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-3)


def test_log_prob_of_a_value_on_the_boundary_is_finite():
    """A value that is not this object's last draw goes through atanh, which must be clamped."""
    loc, scale = torch.zeros(2, *SHAPE), torch.ones(2, *SHAPE)
    dist = TanhGaussian(loc, scale, EPS)
    value = torch.full((2, *SHAPE), EPS)
    value[1] = -EPS
    assert torch.isfinite(dist.log_prob(value)).all()


# ----------------------------------------------------------------------------- sampling


def test_samples_strictly_inside_the_ball():
    loc, scale = params(256, dtype=torch.float32, loc_range=1.0, seed=4)
    scale = scale.clamp(max=1.0)
    dist = TanhGaussian(loc, scale, EPS)
    delta = dist.rsample((8,))
    assert delta.abs().max() < EPS
    assert delta.abs().max() > 0.9 * EPS  # the whole ball is used, not a shrunken one
    assert (delta > 0).any() and (delta < 0).any()


@pytest.mark.parametrize("loc_value", [20.0, -1e4])
def test_samples_in_the_closed_ball_for_extreme_parameters(loc_value):
    loc = torch.full((8, *SHAPE), loc_value)
    dist = TanhGaussian(loc, torch.full_like(loc, 3.0), EPS)
    delta = dist.sample((4,))
    assert torch.isfinite(delta).all()
    assert delta.abs().max() <= EPS


def test_shapes():
    loc, scale = params(5, dtype=torch.float32)
    dist = TanhGaussian(loc, scale, EPS)
    assert dist.batch_shape == torch.Size([5])
    assert dist.event_shape == torch.Size(SHAPE)
    assert dist.rsample().shape == (5, *SHAPE)
    assert dist.rsample((7,)).shape == (7, 5, *SHAPE)
    assert dist.rsample((2, 3)).shape == (2, 3, 5, *SHAPE)
    assert dist.sample((4,)).shape == (4, 5, *SHAPE)
    assert dist.log_prob(dist.rsample((7,))).shape == (7, 5)
    assert dist.log_prob(dist.rsample()).shape == (5,)
    est = dist.entropy_estimate(dist.rsample((3,)))
    assert est.total.shape == est.per_pixel.shape == (3, 5)


def test_scale_broadcasts_against_loc():
    loc = torch.zeros(3, *SHAPE)
    dist = TanhGaussian(loc, torch.tensor(0.5), EPS)
    assert dist.scale.shape == loc.shape
    assert dist.rsample((2,)).shape == (2, 3, *SHAPE)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="epsilon=0"):
        TanhGaussian(torch.zeros(2, 3), torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        TanhGaussian(torch.zeros(3), torch.ones(3), EPS)


def test_sample_mean_matches_quadrature():
    """E[delta] = eps * E[tanh(loc + scale r)]: the samples come from the stated distribution."""
    loc = torch.tensor([[-1.0, 0.0, 0.7, 2.0]], dtype=torch.float64)
    scale = torch.tensor([[0.3, 1.0, 2.0, 0.5]], dtype=torch.float64)
    dist = TanhGaussian(loc, scale, EPS)
    torch.manual_seed(0)
    mean = dist.sample((200_000,)).mean(0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)
    expected = EPS * (np.tanh(loc.numpy()[..., None] + scale.numpy()[..., None] * nodes)
                      * weights).sum(-1) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(mean, torch.from_numpy(expected), rtol=0, atol=3e-3)


# ----------------------------------------------------------------------------- entropy


def gauss_expectation(fn, loc: float, scale: float, n: int = 120) -> float:
    """E_{r ~ N(0, 1)}[fn(loc + scale r)] by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return float((fn(loc + scale * nodes) * weights).sum() / math.sqrt(2 * math.pi))


@pytest.mark.parametrize(("loc_value", "s"), [(0.0, 0.1), (0.0, 0.5), (1.5, 1.0)])
def test_monte_carlo_entropy_matches_closed_form(loc_value, s):
    """H(p) = d [ log(2 pi e s^2) / 2 + log eps + E log(1 - tanh(u)^2) ] (from Eq. 11).

    A wrong Jacobian (missing log eps, flipped sign of the tanh term, missing log sigma)
    moves the estimate by at least 2 d s^2 = 0.36 nats (s = 0.1) and by several nats in
    the other cases; the tolerance is five Monte Carlo standard errors.
    """
    d = math.prod(SHAPE)
    loc = torch.full((4096, *SHAPE), loc_value, dtype=torch.float64)
    dist = TanhGaussian(loc, torch.full_like(loc, s), EPS)
    torch.manual_seed(1)
    value = dist.rsample((8,))
    neg_log_p = -dist.log_prob(value).flatten()
    tol = 5 * neg_log_p.std().item() / math.sqrt(neg_log_p.numel())
    assert tol < (0.1 if loc_value == 0.0 else 0.3)  # sharp enough for the errors above

    def log_jac(u):
        a = np.abs(u)
        return np.log(4.0) - 2 * a - 2 * np.log1p(np.exp(-2 * a))

    jac = gauss_expectation(log_jac, loc_value, s)
    if loc_value == 0.0:  # small-s expansion of E log sech^2(s r): -s^2 + s^4 / 2 - ...
        assert jac == pytest.approx(-s**2 + s**4 / 2, abs=3 * s**6)
    closed = d * (0.5 * math.log(2 * math.pi * math.e * s**2) + math.log(EPS) + jac)
    assert neg_log_p.mean().item() == pytest.approx(closed, abs=tol)
    # the estimate through a copy of the values (atanh path) agrees as well
    assert -dist.log_prob(value.clone()).mean().item() == pytest.approx(closed, abs=tol)


def test_entropy_estimate_total_and_per_pixel():
    loc, scale = params(6, seed=5)
    dist = TanhGaussian(loc, scale, EPS)
    noise = torch.randn((3, 6, *SHAPE), generator=torch.Generator().manual_seed(6),
                        dtype=torch.float64)
    value = dist.rsample_from(noise)
    est = dist.entropy_estimate(value)
    assert isinstance(est, EntropyEstimate)
    torch.testing.assert_close(est.total, -dist.log_prob(value), rtol=0, atol=0)
    u = loc + scale * noise
    naive = torch.log(1 - torch.tanh(u) ** 2)  # fine for these moderate u in float64
    expected = (scale.log() + naive).flatten(-3).mean(-1)
    torch.testing.assert_close(est.per_pixel, expected, rtol=1e-10, atol=1e-10)
    # per_pixel is the mean (not the sum) over pixels of the parameter-dependent part
    assert est.per_pixel.abs().max() < 5


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_loc_and_scale():
    loc, scale = params(4, dtype=torch.float32, seed=7)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    dist = TanhGaussian(loc, scale, EPS)
    delta = dist.rsample((2,))
    g_loc, g_scale = torch.autograd.grad(delta.sum(), (loc, scale))
    for g in (g_loc, g_scale):
        assert torch.isfinite(g).all() and (g != 0).float().mean() > 0.9
    delta = dist.rsample((2,))
    g_loc, g_scale = torch.autograd.grad(dist.log_prob(delta).sum(), (loc, scale))
    for g in (g_loc, g_scale):
        assert torch.isfinite(g).all() and (g != 0).float().mean() > 0.9
    est = dist.entropy_estimate(dist.rsample())
    g_loc, g_scale = torch.autograd.grad(est.per_pixel.sum(), (loc, scale))
    for g in (g_loc, g_scale):
        assert torch.isfinite(g).all() and (g != 0).float().mean() > 0.9


def test_reparameterised_gradients_are_correct():
    """gradcheck of delta(loc, scale) and log p(delta(loc, scale)) for fixed noise."""
    loc, scale = params(2, seed=8)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    noise = torch.randn((3, 2, *SHAPE), generator=torch.Generator().manual_seed(9),
                        dtype=torch.float64)

    def draw(lc, sc):
        return TanhGaussian(lc, sc, EPS).rsample_from(noise)

    def log_p(lc, sc):
        dist = TanhGaussian(lc, sc, EPS)
        return dist.log_prob(dist.rsample_from(noise))

    def per_pixel(lc, sc):
        dist = TanhGaussian(lc, sc, EPS)
        return dist.entropy_estimate(dist.rsample_from(noise)).per_pixel

    for fn in (draw, log_p, per_pixel):
        assert torch.autograd.gradcheck(fn, (loc, scale))
    # d log p / d loc for fixed noise = 2 tanh(u) (only the Jacobian term depends on loc)
    (g,) = torch.autograd.grad(log_p(loc, scale).sum(), loc)
    torch.testing.assert_close(g, (2 * torch.tanh(loc + scale * noise)).sum(0))


# ----------------------------------------------------------------------------- log1m_tanh_sq


def test_log1m_tanh_sq_matches_naive_form_where_finite():
    u = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    naive = torch.log(1 - torch.tanh(u) ** 2)
    assert torch.isfinite(naive).all()
    torch.testing.assert_close(log1m_tanh_sq(u), naive, rtol=1e-10, atol=1e-12)


def test_log1m_tanh_sq_is_exact_in_float64_and_symmetric():
    """The module promises an exact form: -2 log cosh(u) is the float64 reference out to |u| = 300
    (the naive 1 - tanh^2 loses digits by cancellation long before it underflows)."""
    u = torch.linspace(-300, 300, 6001, dtype=torch.float64)
    expected = -2 * torch.log(torch.cosh(u))
    torch.testing.assert_close(log1m_tanh_sq(u), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log1m_tanh_sq(-u), log1m_tanh_sq(u), rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1m_tanh_sq_is_finite_and_exact_for_huge_arguments(dtype):
    u = torch.tensor([-1e4, -1e3, -50.0, -20.0, 20.0, 50.0, 1e3, 1e4], dtype=dtype)
    out = log1m_tanh_sq(u)
    assert torch.isfinite(out).all()
    assert torch.isinf(torch.log(1 - torch.tanh(u) ** 2)).all()  # where the naive form fails
    # asymptotically log(1 - tanh^2) = log 4 - 2|u|
    expected = math.log(4.0) - 2 * u.double().abs()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(log1m_tanh_sq(-u), out)
