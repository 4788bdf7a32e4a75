"""ADT_EXP (Eq. 8-11): the explicit adversarial distribution, one tanh-Gaussian per
example, fitted afresh for every batch by a few steps of sign-like Adam."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adt.core._checks import check_choice, check_epsilon, check_int_at_least, check_positive
from adt.core.primitives import cross_entropy
from adt.core.runtime import eval_mode
from adt.method.distributions import TanhGaussian
from adt.method.inner import AdversarialBatch, InnerMaximizer

__all__ = ["ExplicitADT"]


class ExplicitADT(InnerMaximizer):
    """ADT_EXP: a tanh-Gaussian per example, fitted by ``steps`` of sign-like Adam (Eq. 9-11).

    For each batch, phi = (mu, v) starts at 0 and takes ``steps`` ascent steps on

        J(phi) = E_r[ CE(f(x + epsilon tanh(mu + softplus(v) r)), y) ] + lambda_ H(p_phi),

    the expectation estimated with ``num_samples`` draws that go through the
    classifier as one batch of ``num_samples * B`` images (one forward and one
    backward per step). The update is Adam with betas (0, 0), which reduces to
    ``lr * g / (|g| + 1e-8)``, applied to ``g`` according to ``update``:

    * ``"running_sum"`` (default, the authors' release): the release never zeroes its
      optimiser's gradients, so every step follows the running SUM of all gradients of
      the batch so far; the gradients have the release's scale (CE averaged over the
      batch, the entropy of :func:`~adt.method.distributions.release_negative_log_density`
      averaged over the batch and the pixels, the k draws summed), so the step is short
      wherever that sum is small next to 1e-8 (confidently classified examples);
    * ``"per_step"`` (the paper's text): each step follows the current step's gradient of
      the per-example objective, averaged over the k draws, with the exact entropy of
      Eq. (11): a sign step for every pixel of every example.

    The classifier then trains on one fresh draw (REPRODUCTION.md, "ADT_EXP as released").
    """

    UPDATES = ("running_sum", "per_step")

    def __init__(self, epsilon: float, steps: int = 7, num_samples: int = 5,
                 lambda_: float = 0.01, lr: float = 0.3, update: str = "running_sum") -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.steps = check_int_at_least(steps, 1, "steps", "7 (the paper's T)")
        self.num_samples = check_int_at_least(num_samples, 1, "num_samples", "5 (the paper's k)")
        if not lambda_ >= 0:
            raise ValueError(f"lambda_={lambda_!r} must be >= 0; use e.g. 0.01 (the paper's)")
        self.lambda_ = float(lambda_)
        self.lr = check_positive(lr, "lr", "0.3")
        self.update = check_choice(update, self.UPDATES, "ADT_EXP update")

    @property
    def passes_per_image(self) -> int:
        return self.steps * self.num_samples + 1  # T steps of k draws, then the training pass

    def distribution(self, mu: torch.Tensor, v: torch.Tensor) -> TanhGaussian:
        # validate_args=False: argument validation reads a value back (a host sync per step)
        return TanhGaussian(mu, F.softplus(v), self.epsilon, validate_args=False)

    def _draws(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mu: torch.Tensor,
               v: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, TanhGaussian, torch.Tensor]:
        """CE of the k draws ``noise`` (k, B, ...) as a (k, B) matrix, from one batch of k*B
        images; with the distribution and the perturbations."""
        k = noise.shape[0]
        dist = self.distribution(mu, v)
        delta = dist.rsample_from(noise)
        x_adv = (x.unsqueeze(0) + delta).clamp(0.0, 1.0).flatten(0, 1)
        return cross_entropy(model(x_adv), y.repeat(k)).view(k, -1), dist, delta

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mu: torch.Tensor,
                  v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-example J(phi), Eq. (9), averaged over the draws ``noise`` of shape (k, B, ...),
        with the exact entropy of Eq. (11) (the ``"per_step"`` update ascends its sum)."""
        ce, dist, delta = self._draws(model, x, y, mu, v, noise)
        return (ce + self.lambda_ * dist.entropy_estimate(delta).per_pixel).mean(0)

    def release_objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          mu: torch.Tensor, v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The scalar whose gradient the release accumulates in one step: over the k draws,
        the sum of (batch-mean CE + lambda_ * batch-and-pixel mean of the release's -log p)."""
        ce, dist, delta = self._draws(model, x, y, mu, v, noise)
        entropy = dist.release_entropy(delta).flatten(1).mean(1)
        value = ce.mean(1).sum() + self.lambda_ * entropy.sum()
        return value if self.batch_share == 1.0 else value * self.batch_share

    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            noise: torch.Tensor | None = None) -> TanhGaussian:
        """The learned adversarial distribution p_phi*(delta | x) against ``model`` as it is.

        ``noise`` (steps, k, B, ...) fixes the standard-normal draws (drawn per step if None).
        The parameters are float32, or float64 for float64 images.
        """
        x = x.detach()
        x = x if x.dtype == torch.float64 else x.float()
        mu = torch.zeros_like(x)
        v = torch.zeros_like(x)
        g_mu, g_v = torch.zeros_like(x), torch.zeros_like(x)
        shape = (self.num_samples, *x.shape)
        for t in range(self.steps):
            mu.requires_grad_(True)
            v.requires_grad_(True)
            r = torch.randn(shape, device=x.device, dtype=x.dtype) if noise is None else noise[t]
            if self.update == "running_sum":
                step_mu, step_v = torch.autograd.grad(
                    self.release_objective(model, x, y, mu, v, r), (mu, v))
                g_mu, g_v = g_mu + step_mu, g_v + step_v
            else:
                # sum over examples: each example's parameters see only their own objective
                g_mu, g_v = torch.autograd.grad(self.objective(model, x, y, mu, v, r).sum(),
                                                (mu, v))
            with torch.no_grad():
                mu = mu + self.lr * g_mu / (g_mu.abs() + 1e-8)
                v = v + self.lr * g_v / (g_v.abs() + 1e-8)
        return self.distribution(mu.detach(), v.detach())

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        with eval_mode(model):
            dist = self.fit(model, x, y)
        delta = dist.sample()
        entropy = dist.entropy_estimate(delta).per_pixel.mean()
        return AdversarialBatch((x + delta).clamp(0.0, 1.0), y, stats={"entropy": entropy})
