"""Analyses behind the paper's Figure 1, Figure 2 and attack-power table (Table 4).

- Diversity (Figure 1, Sec. 2.2.1): :func:`pgd_restarts` draws PGD adversarial
  examples from many random starts; :func:`mean_pairwise_l2` measures how spread
  out a set of adversarial examples is (paper: 1.95 for ADT_EXP vs 1.56 for PGD,
  mean over 100 test images); :func:`pca_2d` projects each data point's set onto
  its own first two principal components for the scatter plots.
- Loss surface (Figure 2a-e): :func:`loss_surface` evaluates CE(x + a g + b r) on
  a grid, g the gradient-sign direction, r a random sign direction orthogonal to g.
- Curvature (Figure 2f): :func:`hessian_top_eigenvalue`, the dominant eigenvalue
  of the input Hessian of the loss by power iteration with Hessian-vector products;
  :func:`hessian_power_iteration` also returns the iterates and convergence
  diagnostics.
- Attack power (Table 4): :func:`distribution_robust_accuracy`, an image is robust
  against an adversarial distribution only if every one of its samples is
  classified correctly.

Conventions: sample sets have shape ``(S, B, C, H, W)`` (sample-major, like
``TanhGaussian.sample((S,))``). Every function is batched tensor code: many
samples, restarts or grid points go through the model as one big batch (or a few
chunks), never as a Python loop over single images, and nothing reads a value
back to the host inside a loop. The model is used in whatever mode it is in
(callers put it in eval mode: in train mode BatchNorm would couple the examples)
and inputs are moved to the model's device. Images live in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from adt.core._checks import check_epsilon, check_int_at_least, check_positive
from adt.core.primitives import (
    ce_sum,
    check_batch,
    cross_entropy,
    input_gradient,
    sign_ascent,
    uniform_start,
)
from adt.core.runtime import device_of, per_example
from adt.method.distributions import TanhGaussian

__all__ = ["Sampler", "PCA2D", "generator_sample_correct", "pgd_restarts", "mean_pairwise_l2", "pca_2d",
           "surface_directions", "loss_surface", "hessian_top_eigenvalue",
           "PowerIteration", "hessian_power_iteration",
           "distribution_robust_accuracy", "tanh_gaussian_sampler", "implicit_sampler",
           "adversarial_images"]

Sampler = Callable[[int], torch.Tensor]
"""``sampler(n)`` -> ``(n, B, C, H, W)`` perturbations delta (not images) of one batch."""


# ----------------------------------------------------------------------------- helpers

def _on_model_device(model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    device = device_of(model, x.device)
    return x.detach().to(device), y.to(device)


def _linf(t: torch.Tensor) -> torch.Tensor:
    """Per-example l_inf norm of a ``(B, ...)`` tensor."""
    return t.flatten(1).abs().amax(1)


def _flatten_samples(samples: torch.Tensor, at_least: int) -> torch.Tensor:
    """``(S, B, ...)`` -> ``(B, S, D)`` after checking there are enough samples."""
    if samples.dim() < 3:
        raise ValueError(f"samples of shape {tuple(samples.shape)} must be (S, B, ...) with "
                         "at least one feature dimension, e.g. (S, B, C, H, W)")
    if samples.shape[0] < at_least:
        raise ValueError(f"need at least {at_least} samples per example, got S="
                         f"{samples.shape[0]}; draw more (the paper uses 100 per image)")
    return samples.flatten(2).transpose(0, 1)


# ----------------------------------------------------------------------------- Figure 1

def pgd_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 step_size: float, steps: int, restarts: int) -> torch.Tensor:
    """PGD adversarial images from ``restarts`` independent uniform random starts (Figure 1).

    All restarts run as one batch of ``restarts * B`` images through PGD's loop
    (:func:`adt.core.primitives.sign_ascent`, Eq. 2). Returns adversarial images (not perturbations)
    of shape ``(restarts, B, C, H, W)``, each in the l_inf ball around its x and in [0, 1].
    Memory grows with ``restarts * B``; chunk the batch of images if needed.
    """
    check_int_at_least(restarts, 1, "restarts", "100 (one per sample of the ADT distribution)")
    check_epsilon(epsilon)
    check_positive(step_size, "step_size", "epsilon / 4 (2/255 at 8/255)")
    check_int_at_least(steps, 1, "steps", "20")
    x, y = _on_model_device(model, x, y)
    x_rep = x.repeat(restarts, *([1] * (x.dim() - 1)))  # restart-major: row r*B + b
    y_rep = y.repeat(restarts)
    check_batch(x_rep, y_rep)
    x_adv = sign_ascent(lambda v: ce_sum(model(v), y_rep), x_rep, uniform_start(x_rep, epsilon),
                        epsilon=epsilon, step_size=step_size, steps=steps)
    return x_adv.view(restarts, *x.shape)


def mean_pairwise_l2(samples: torch.Tensor) -> torch.Tensor:
    """Mean l2 distance over the S(S-1) ordered pairs of distinct samples, per example (Sec. 2.2.1).

    ``samples``: ``(S, B, ...)``; returns ``(B,)``. The paper reports the mean over
    100 test images of this value (ADT_EXP 1.95, PGD 1.56 on CIFAR-10). Distances
    are computed exactly (no ``|a|^2 + |b|^2 - 2ab`` expansion, which loses precision
    for the nearly coinciding PGD restarts).
    """
    flat = _flatten_samples(samples, at_least=2)
    s = flat.shape[1]
    dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    # the diagonal is exactly zero in this mode, so the full sum is the off-diagonal sum
    return dist.sum((1, 2)) / (s * (s - 1))


class PCA2D(NamedTuple):
    """Per-example 2-D PCA of a sample set (Figure 1).

    ``projections``: ``(S, B, 2)``, the centred samples' coordinates on the first two
    principal axes of their own example. ``explained_variance_ratio``: ``(B, 2)``.
    ``components``: ``(B, 2, D)``, the unit principal axes in flattened input space.
    """

    projections: torch.Tensor
    explained_variance_ratio: torch.Tensor
    components: torch.Tensor


def pca_2d(samples: torch.Tensor) -> PCA2D:
    """Project each example's S samples onto that example's first two principal components.

    ``samples``: ``(S, B, ...)``. One batched SVD of the ``B`` centred ``(S, D)``
    matrices. Signs are made deterministic: the largest-magnitude entry of each
    principal axis is positive (sklearn >= 1.5 uses the same rule).
    To put two sets (PGD restarts and ADT samples, as in Figure 1) in one frame,
    concatenate them along S, project, and split the result.
    """
    flat = _flatten_samples(samples, at_least=2)
    if flat.shape[2] < 2:
        raise ValueError("pca_2d needs at least 2 features per sample")
    centred = flat - flat.mean(1, keepdim=True)
    u, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    u, sv, vh = u[..., :2], sv[..., :2], vh[..., :2, :]
    # deterministic signs: the largest-|.| entry of each principal axis is positive
    pivot = vh.abs().argmax(2, keepdim=True)
    signs = torch.sign(torch.gather(vh, 2, pivot))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)  # (B, 2, 1)
    projections = u * sv.unsqueeze(1) * signs.transpose(1, 2)
    total = centred.square().sum((1, 2)).clamp_min(torch.finfo(centred.dtype).tiny)
    ratio = sv.square() / total.unsqueeze(1)
    return PCA2D(projections.transpose(0, 1), ratio, vh * signs)


# ----------------------------------------------------------------------------- Figure 2a-e

def surface_directions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       epsilon: float, scale: float = 10.0,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two axes ``(g, r)`` of the Figure 2 loss surfaces, each ``(B, C, H, W)``.

    g = sign(grad_x CE(f(x), y)). r = a Rademacher (random sign) vector with its
    component along g removed (Gram-Schmidt, per example), then re-scaled. Both are
    scaled to l_inf norm ``scale * epsilon`` (the paper: 10 eps). After the
    projection r is no longer exactly a sign vector, but it stays close to one.
    An example whose input gradient is exactly zero gets g = 0.
    """
    check_epsilon(epsilon)
    x, y = _on_model_device(model, x, y)
    g = input_gradient(model, x, y, lambda logits, t: cross_entropy(logits, t, "sum")).sign()
    r = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    g_flat, r_flat = g.flatten(1), r.flatten(1)
    coeff = (r_flat * g_flat).sum(1) / g_flat.square().sum(1).clamp_min(1.0)
    r = r - per_example(coeff, r) * g
    radius = scale * epsilon
    g = g * per_example(radius / _linf(g).clamp_min(1e-12), g)
    r = r * per_example(radius / _linf(r).clamp_min(1e-12), r)
    return g, r


def _surface_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor,
                    r: torch.Tensor, coeffs: torch.Tensor, batch_size: int,
                    clip: bool) -> torch.Tensor:
    """CE at x + a g + b r for each row (a, b) of ``coeffs`` (P, 2): returns ``(P, B)``."""
    shape = (-1, *([1] * x.dim()))
    per_chunk = max(1, batch_size // len(x))
    losses = []
    with torch.no_grad():
        for chunk in coeffs.split(per_chunk):
            a, b = chunk[:, 0].view(shape), chunk[:, 1].view(shape)
            points = x.unsqueeze(0) + a * g.unsqueeze(0) + b * r.unsqueeze(0)
            if clip:
                points = points.clamp(0.0, 1.0)
            logits = model(points.flatten(0, 1))
            losses.append(cross_entropy(logits, y.repeat(len(chunk))).view(len(chunk), len(x)))
    return torch.cat(losses)


def loss_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 grid: int, scale: float = 10.0, batch_size: int = 1024, clip: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
    """Loss surface CE(f(x + a g + b r), y) for a, b on a ``grid`` x ``grid`` grid (Figure 2a-e).

    g, r: see :func:`surface_directions` (l_inf norm ``scale * epsilon`` each).
    a and b run over ``grid`` evenly spaced values in [-1, 1]; for odd ``grid`` the
    centre is exactly 0, where the loss is the clean loss. With ``clip`` (default)
    each point is clipped to [0, 1], the model's input domain, so near the border the
    evaluated points leave the plane slightly. The grid points go through the model
    in chunks of about ``batch_size`` images.

    Returns a dict with ``"a"``, ``"b"``: ``(grid,)`` coordinates; ``"loss"``:
    ``(B, grid, grid)`` with ``loss[n, i, j]`` at ``(a[i], b[j])``; ``"mean_loss"``:
    ``(grid, grid)``, its mean over examples; ``"g"``, ``"r"``: the directions.
    """
    check_int_at_least(grid, 2, "grid", "41 (odd, so the clean point is on the grid)")
    check_int_at_least(batch_size, 1, "batch_size", "1024")
    x, y = _on_model_device(model, x, y)
    g, r = surface_directions(model, x, y, epsilon=epsilon, scale=scale, generator=generator)
    steps = torch.arange(grid, device=x.device, dtype=x.dtype)
    coords = (2 * steps - (grid - 1)) / (grid - 1)  # exact 0 at the centre of an odd grid
    coeffs = torch.cartesian_prod(coords, coords)  # row i*grid + j is (a[i], b[j])
    losses = _surface_losses(model, x, y, g, r, coeffs, batch_size, clip)
    loss = losses.T.reshape(len(x), grid, grid)
    return {"a": coords, "b": coords.clone(), "loss": loss, "mean_loss": loss.mean(0),
            "g": g, "r": r}


# ----------------------------------------------------------------------------- Figure 2f

def _unit(v: torch.Tensor) -> torch.Tensor:
    """v divided by its per-example l2 norm (a zero vector stays zero)."""
    norms = v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / per_example(norms, v)


class PowerIteration(NamedTuple):
    """Power iteration on the input Hessian, per example (Figure 2f).

    ``eigenvalue``: ``(B,)``, the Rayleigh quotient v^T H v of the last iterate.
    ``history``: ``(iterations, B)``, the Rayleigh quotient at every iteration.
    ``relative_change``: ``(B,)``, |last - previous| / |last| (0 for one iteration).
    ``residual``: ``(B,)``, |H v - lambda v| / |lambda| at the last iterate: 0 when v is an
    exact eigenvector; power iteration has converged to *an* eigenvector when it is small.
    """

    eigenvalue: torch.Tensor
    history: torch.Tensor
    relative_change: torch.Tensor
    residual: torch.Tensor


def hessian_power_iteration(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                            iterations: int = 20,
                            generator: torch.Generator | None = None) -> PowerIteration:
    """Dominant eigenvalue of the input Hessian of CE(f(x), y), per example, with the
    diagnostics of its convergence (Figure 2f); see :class:`PowerIteration`.

    "Dominant" means the eigenvalue of largest magnitude (what power iteration finds),
    returned with its sign. Power iteration v <- Hv / |Hv| from a random Gaussian
    start, with Hessian-vector products by double backward; the estimate is the
    Rayleigh quotient v^T H v of the last iterate. One HVP of the loss summed over the
    batch gives every example its own HVP, because the examples do not interact (model
    in eval mode). ReLU networks have piecewise-linear logits, but the softmax keeps
    the Hessian nonzero (it is then J^T (diag(p) - p p^T) J, positive semidefinite).
    Cost: one forward, one backward with graph, ``iterations`` HVPs.
    """
    check_int_at_least(iterations, 1, "iterations", "20")
    x, y = _on_model_device(model, x, y)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(cross_entropy(model(x), y, "sum"), x, create_graph=True)
    v = _unit(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    history = []
    hv = v
    for _ in range(iterations):
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True)
        history.append((hv * v).flatten(1).sum(1))
        if len(history) < iterations:
            v = _unit(hv)
    estimate = history[-1]
    tiny = torch.finfo(x.dtype).tiny
    residual = ((hv - per_example(estimate, v) * v).flatten(1).norm(dim=1)
                / estimate.abs().clamp_min(tiny))
    previous = history[-2] if len(history) > 1 else estimate
    change = (estimate - previous).abs() / estimate.abs().clamp_min(tiny)
    return PowerIteration(estimate.detach(), torch.stack(history).detach(), change.detach(),
                          residual.detach())


def hessian_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           iterations: int = 20,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Dominant eigenvalue of the input Hessian of CE(f(x), y), per example (Figure 2f):
    the ``eigenvalue`` of :func:`hessian_power_iteration`. Returns ``(B,)``."""
    return hessian_power_iteration(model, x, y, iterations=iterations,
                                   generator=generator).eigenvalue


# ----------------------------------------------------------------------------- Table 4

def distribution_robust_accuracy(model: nn.Module, sampler: Sampler, x: torch.Tensor,
                                 y: torch.Tensor, *, num_samples: int,
                                 chunk_size: int = 10) -> torch.Tensor:
    """Which images survive every sample of an adversarial distribution (Table 4, "attack power").

    ``sampler(n)`` returns ``(n, B, C, H, W)`` perturbations delta (not images); the
    model sees clip(x + delta, 0, 1). It is called with chunks of at most
    ``chunk_size`` samples (summing to ``num_samples``); each chunk goes through the
    model as one batch of ``n * B`` images. Returns ``(B,)`` bools: True where all
    ``num_samples`` samples are classified correctly (paper: 100 samples).
    ``robust.float().mean()`` is the robust accuracy.
    """
    check_int_at_least(num_samples, 1, "num_samples", "100 (the paper's)")
    check_int_at_least(chunk_size, 1, "chunk_size", "10")
    x, y = _on_model_device(model, x, y)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            n = min(chunk_size, num_samples - start)
            delta = sampler(n).to(x.device)
            if delta.shape != (n, *x.shape):
                raise ValueError(f"sampler({n}) returned shape {tuple(delta.shape)}; expected "
                                 f"{(n, *x.shape)} = (n, *x.shape) perturbations")
            images = adversarial_images(x, delta)
            pred = model(images.flatten(0, 1)).argmax(1).view(n, len(x))
            robust &= (pred == y).all(0)
    return robust


def generator_sample_correct(maximizer: nn.Module, model: nn.Module, x: torch.Tensor,
                             y: torch.Tensor) -> torch.Tensor:
    """Which images ``model`` still classifies correctly under one draw of an amortised
    maximiser's perturbation, the generator conditioned on ``model`` itself (the "working
    generator" gate: an attack that lowers a frozen Standard model's accuracy at least as
    much as FGSM does). ``maximizer`` is an ``AmortizedExplicitADT`` or
    ``AmortizedImplicitADT``; both modules run in eval mode (their modes are restored), so
    the draw changes no BatchNorm statistic. Returns ``(B,)`` bools."""
    x, y = _on_model_device(model, x, y)
    modes = [(m, m.training) for m in (maximizer, model)]
    maximizer.eval()
    model.eval()
    try:
        x_adv = maximizer(model, x, y).x.detach()
        with torch.no_grad():
            return model(x_adv).argmax(1) == y
    finally:
        for module, mode in modes:
            module.train(mode)


# ----------------------------------------------------------------------------- samplers

def adversarial_images(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """clip(x + delta, 0, 1) for perturbations ``delta`` of shape ``(S, B, ...)``."""
    return (x.unsqueeze(0) + delta).clamp(0.0, 1.0)


def tanh_gaussian_sampler(dist: TanhGaussian) -> Sampler:
    """A :data:`Sampler` of an explicit distribution, e.g. from ``ExplicitADT.fit`` or
    ``AmortizedExplicitADT.distribution``: ``n -> dist.sample((n,))``."""
    return lambda n: dist.sample((n,))


def implicit_sampler(adversary: Any, model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> Sampler:
    """A :data:`Sampler` of ADT_IMP-AM's implicit distribution for the batch ``(x, y)``
    against ``model``.

    ``adversary`` is an ``AmortizedImplicitADT`` (anything with ``conditioning_input(model, x,
    y)`` and ``sample_from(cond) -> (delta, z)``). The conditioning (two input gradients)
    is computed once; the n draws run as one generator batch of n*B images with
    independent noise. Put the adversary in eval mode first so that BatchNorm does not
    couple the draws.
    """
    cond = adversary.conditioning_input(model, x, y).detach()

    def sample(n: int) -> torch.Tensor:
        with torch.no_grad():
            delta, _ = adversary.sample_from(cond.repeat(n, *([1] * (cond.dim() - 1))))
        return delta.view(n, *x.shape)
    return sample
