"""The inner maximisers of Algorithm 1, one class each, one interface.

A maximiser turns a clean batch ``(x, y)`` into the batch the classifier trains on
(line 4 of Algorithm 1) and, for the amortised variants, a loss term that carries
the gradient of the maximiser's own networks:

    adv = maximizer(model, x, y)                     # AdversarialBatch
    loss = CE(model(adv.x), adv.y) + adv.extra_loss  # one backward for everything
    loss.backward(); optimizer.step(); maximizer.step()

The trainer never looks inside. Maximisers solve their inner problem with the
classifier in eval mode (restored afterwards), keep any state they need (generators,
their optimisers) in their own ``state_dict``, and expose ``epsilon`` as a plain
attribute so the trainer may ramp it.

- :class:`Clean`: no perturbation (standard training).
- :class:`PGD`: AT, Eq. (1)-(2).
- :class:`TRADES`: the TRADES baseline (Zhang et al., 2019), with its own outer loss.
- :class:`ExplicitADT`: ADT_EXP, Eq. (8)-(11), per-example tanh-Gaussians.
- :class:`AmortizedExplicitADT`: ADT_EXP-AM, a generator outputs (mu, v) (Sec. 3.2).
- :class:`AmortizedImplicitADT`: ADT_IMP-AM, an implicit generator with an entropy bound (Sec. 3.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adt._checks import check_choice, check_epsilon, check_int_at_least, check_positive
from adt.distributions import TanhGaussian
from adt.models import Encoder, Generator, NoiseMap
from adt.primitives import (
    ce_sum,
    cross_entropy,
    input_gradient,
    l1_normalised,
    sign_ascent,
    uniform_start,
)
from adt.runtime import eval_mode

__all__ = ["AdversarialBatch", "InnerMaximizer", "Clean", "PGD", "TRADES", "ExplicitADT",
           "AmortizedExplicitADT", "AmortizedImplicitADT", "grad_reverse",
           "gradient_conditioning", "CONDITIONINGS"]


@dataclass
class AdversarialBatch:
    """What a maximiser hands the trainer.

    ``x``/``y``: the classifier's training inputs and labels. ``extra_loss``: a scalar
    added to the classifier's mean cross-entropy before the single backward pass (None
    when the maximiser has no networks of its own). ``stats``: detached device scalars
    (e.g. the entropy estimate), averaged per epoch by the trainer without host syncs.
    """

    x: torch.Tensor
    y: torch.Tensor
    extra_loss: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward (Ganin & Lempitsky, 2015).

    Placed on the perturbation, it lets the generator ascend the very loss the
    classifier descends in one backward pass.
    """
    return _GradReverse.apply(x)


def _same(value: torch.Tensor) -> torch.Tensor:
    return value


class InnerMaximizer(nn.Module):
    """Interface of every maximiser; see the module docstring.

    Two hooks make N data-parallel processes take the step one process takes on the
    global batch (:func:`adt.distributed.wrapped_maximizer` sets them for an epoch):
    ``batch_share``, this process's share of the global batch (1/N), multiplies the
    release's batch-mean gradient scales; ``global_mean`` turns a batch mean over this
    process's rows into the global batch's mean. In one process they change nothing.
    """

    epsilon: float
    batch_share: float = 1.0
    global_mean: Callable[[torch.Tensor], torch.Tensor] = staticmethod(_same)

    @property
    def passes_per_image(self) -> int:
        """Forward+backward passes of the classifier per training image in one training
        step, the training pass included (the cost unit of the paper's Sec. 4)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        raise NotImplementedError

    def outer_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   adv: AdversarialBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's training loss on this batch (line 5 of Algorithm 1) and the
        logits its training accuracy is read from: the mean cross-entropy on ``adv.x``, the
        loss of every method but TRADES. ``x``/``y`` are the clean batch."""
        logits = model(adv.x)
        return F.cross_entropy(logits.float(), adv.y), logits

    def step(self) -> None:
        """Update the maximiser's own networks after the joint backward pass (if any)."""


class Clean(InnerMaximizer):
    """Standard training: the inputs pass unchanged."""

    def __init__(self, epsilon: float = 0.0) -> None:
        super().__init__()
        self.epsilon = epsilon

    passes_per_image = 1  # the training pass only

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        return AdversarialBatch(x, y)


class PGD(InnerMaximizer):
    """AT (Madry et al.): the worst case in the l_inf ball by ``steps`` of projected sign ascent."""

    def __init__(self, epsilon: float, step_size: float, steps: int = 7,
                 random_start: bool = True) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.step_size = check_positive(step_size, "step_size", "epsilon / 4")
        self.steps = check_int_at_least(steps, 1, "steps", "7")
        self.random_start = random_start

    @property
    def passes_per_image(self) -> int:
        return self.steps + 1  # one per ascent step, then the training pass

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        # Eq. (2) through the attacks' own loop, without their per-call input checks (a host
        # sync each); the settings were checked once, in __init__.
        x = x.detach()
        start = uniform_start(x, self.epsilon) if self.random_start else x
        with eval_mode(model):
            x_adv = sign_ascent(lambda v: ce_sum(model(v), y), x, start, epsilon=self.epsilon,
                                step_size=self.step_size, steps=self.steps)
        return AdversarialBatch(x_adv, y)


def kl_to_clean(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """sum_i KL(p_clean_i || softmax(logits_adv_i)): TRADES's robust term, summed over the batch."""
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), p_clean, reduction="sum")


class TRADES(InnerMaximizer):
    """TRADES (Zhang et al., 2019), the paper's second baseline.

    Inner: ``steps`` of projected sign ascent on KL(f(x) || f(x')) from
    x' = x + 0.001 N(0, I). Outer: CE(f(x), y) + beta * KL(f(x) || f(x')) / B, so the
    maximiser supplies its own :meth:`outer_loss`; the training accuracy is the clean one.
    """

    def __init__(self, epsilon: float, step_size: float, steps: int = 10,
                 beta: float = 6.0) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.step_size = check_positive(step_size, "step_size", "epsilon / 4")
        self.steps = check_int_at_least(steps, 1, "steps", "10")
        self.beta = check_positive(beta, "beta", "6.0")

    @property
    def passes_per_image(self) -> int:
        # the clean target, one per ascent step, then the clean and adversarial training passes
        return self.steps + 3

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        x = x.detach()
        start = x + 0.001 * torch.randn_like(x)
        with eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), 1)
            x_adv = sign_ascent(lambda v: kl_to_clean(model(v), p_clean), x, start,
                                epsilon=self.epsilon, step_size=self.step_size, steps=self.steps)
        return AdversarialBatch(x_adv, y)

    def outer_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   adv: AdversarialBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        robust = kl_to_clean(model(adv.x), F.softmax(logits.float(), 1)) / len(x)
        return F.cross_entropy(logits.float(), y) + self.beta * robust, logits


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
      batch, the entropy of :func:`~adt.distributions.release_negative_log_density`
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


CONDITIONINGS = ("raw", "normalised")


def gradient_conditioning(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          epsilon: float, conditioning: str = "raw",
                          batch_share: float = 1.0) -> torch.Tensor:
    """[x, g1, g2], the input of both amortised generators (3C channels).

    g1 = grad_x CE(f(x), y) and g2 the same gradient at the FGSM point
    clip(x + epsilon sign(g1), 0, 1), computed with the classifier in eval mode.

    * ``"raw"`` (default, the release): CE averaged over the batch (the global batch: times
      ``batch_share`` when ``x`` is one process's share of it), the gradients fed as they
      are (their entries are tiny next to x);
    * ``"normalised"``: each gradient divided by its per-example mean absolute value, so
      the generator sees their shape whatever their scale.
    """
    def batch_mean_ce(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), t)
        return ce if batch_share == 1.0 else ce * batch_share

    loss = batch_mean_ce if conditioning == "raw" else ce_sum
    with eval_mode(model):
        g1 = input_gradient(model, x, y, loss)
        g2 = input_gradient(model, (x + epsilon * g1.sign()).clamp(0.0, 1.0), y, loss)
    if conditioning == "normalised":
        g1, g2 = l1_normalised(g1, mean=True), l1_normalised(g2, mean=True)
    return torch.cat([x, g1, g2], 1)


class AmortizedExplicitADT(InnerMaximizer):
    """ADT_EXP-AM: a conditional generator maps [x, g1, g2] to (mu, v) of a tanh-Gaussian.

    The conditioning is :func:`gradient_conditioning`. One draw per input; the generator
    ascends CE + lambda_ H through a gradient reversal, in the classifier's own backward
    pass (extra loss: -lambda_ H, H the batch-and-pixel mean of the release's -log p).
    """

    passes_per_image = 3  # g1 and g2 of the conditioning, then the training pass

    def __init__(self, in_channels: int, epsilon: float, ngf: int = 256, lambda_: float = 0.01,
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 conditioning: str = "raw") -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.lambda_ = float(lambda_)
        self.conditioning = check_choice(conditioning, CONDITIONINGS, "generator conditioning")
        check_int_at_least(ngf, 1, "ngf", "256 (paper) or 16 (CPU)")
        self.generator = Generator(3 * in_channels, 2 * in_channels, ngf)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)

    def distribution(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TanhGaussian:
        """p_phi(delta | x) for a batch: the generator's (mu, v) from x and two input gradients."""
        cond = gradient_conditioning(model, x, y, self.epsilon, self.conditioning,
                                     self.batch_share)
        mu, v = self.generator(cond).float().chunk(2, dim=1)
        return TanhGaussian(mu, F.softplus(v), self.epsilon, validate_args=False)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        dist = self.distribution(model, x, y)
        delta = dist.rsample()
        entropy = dist.release_entropy(delta).mean()
        x_adv = (x + grad_reverse(delta)).clamp(0.0, 1.0)
        return AdversarialBatch(x_adv, y, extra_loss=-self.lambda_ * entropy,
                                stats={"entropy": entropy.detach()})

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-log N(z; mean, variance) per dimension (not summed), with 1e-8 added to the variance
    inside the logarithm and the division, as the release computes it."""
    variance = variance + 1e-8
    return 0.5 * (z - mean).square() / variance + 0.5 * torch.log(variance) \
        + 0.5 * math.log(2 * math.pi)


class AmortizedImplicitADT(InnerMaximizer):
    """ADT_IMP-AM: delta = epsilon tanh(g(x, z)), z ~ U(-1, 1)^noise_dim (Sec. 3.3).

    The generator is ADT_EXP-AM's, conditioned on the same [x, g1, g2]
    (:func:`gradient_conditioning`) plus one more channel: z through
    :class:`~adt.models.NoiseMap`. The entropy is kept up through a variational bound: an
    encoder q(z | delta / epsilon) recovers the noise, and everything pays

        lambda_ * relu(NLL - threshold),   NLL = mean over batch and z-dims of -log q(z | delta),

    in the classifier's own backward pass; the gradient reversal on delta flips only the
    CE part for the generator. So, as in the release, the encoder learns ONLY through
    this penalty (no gradient while NLL < threshold), and the generator's entropy pressure
    is active only above the threshold (REPRODUCTION.md, "ADT_IMP-AM as released").
    """

    passes_per_image = 3  # g1 and g2 of the conditioning, then the training pass

    def __init__(self, in_channels: int, image_size: int, epsilon: float, ngf: int = 256,
                 noise_dim: int = 64, lambda_: float = 1.0, threshold: float = 0.9,
                 lr: float = 2e-4, encoder_lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999),
                 encoder_betas: tuple[float, float] = (0.9, 0.999),
                 conditioning: str = "raw") -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        check_int_at_least(ngf, 1, "ngf", "256 (paper) or 16 (CPU)")
        self.noise_dim = check_int_at_least(noise_dim, 1, "noise_dim", "64")
        self.lambda_, self.threshold = float(lambda_), float(threshold)
        self.conditioning = check_choice(conditioning, CONDITIONINGS, "generator conditioning")
        self.noise_map = NoiseMap(noise_dim, image_size)
        self.generator = Generator(3 * in_channels + 1, in_channels, ngf)
        self.encoder = Encoder(in_channels, noise_dim)
        self.optimizer = torch.optim.Adam([*self.noise_map.parameters(),
                                           *self.generator.parameters()], lr=lr, betas=betas)
        self.encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=encoder_lr,
                                                  betas=encoder_betas)

    def conditioning_input(self, model: nn.Module, x: torch.Tensor,
                           y: torch.Tensor) -> torch.Tensor:
        """The generator's conditioning input [x, g1, g2] for a batch."""
        return gradient_conditioning(model, x, y, self.epsilon, self.conditioning,
                                     self.batch_share)

    def sample_from(self, cond: torch.Tensor, z: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta, z)``: one perturbation per conditioning input, from noise z (drawn if
        not given). Several draws per image: repeat ``cond`` along the batch."""
        if z is None:
            z = torch.rand(len(cond), self.noise_dim, device=cond.device) * 2 - 1
        out = self.generator(torch.cat([cond, self.noise_map(z).to(cond.dtype)], 1)).float()
        return self.epsilon * torch.tanh(out), z

    def sample(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta, z)``: one perturbation per image of the batch against ``model``."""
        return self.sample_from(self.conditioning_input(model, x, y), z)

    def entropy_nll(self, delta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean over batch and dimensions of -log q(z | delta): low means a high entropy bound."""
        mean, variance = self.encoder(delta / self.epsilon)
        return gaussian_nll(mean.float(), variance.float(), z).mean()

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        delta, z = self.sample(model, x, y)
        nll = self.global_mean(self.entropy_nll(delta, z))  # the hinge acts on the global batch
        x_adv = (x + grad_reverse(delta)).clamp(0.0, 1.0)
        return AdversarialBatch(x_adv, y, extra_loss=self.lambda_ * F.relu(nll - self.threshold),
                                stats={"entropy_nll": nll.detach()})

    def step(self) -> None:
        for opt in (self.optimizer, self.encoder_optimizer):
            opt.step()
            opt.zero_grad(set_to_none=True)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "encoder_optimizer": self.encoder_optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.encoder_optimizer.load_state_dict(state["encoder_optimizer"])

