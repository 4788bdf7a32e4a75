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
- :class:`ExplicitADT`: ADT_EXP, Eq. (8)-(11), per-example tanh-Gaussians.
- :class:`AmortizedExplicitADT`: ADT_EXP-AM, a generator outputs (mu, v) (Sec. 3.2).
- :class:`AmortizedImplicitADT`: ADT_IMP-AM, an implicit generator with an entropy bound (Sec. 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adt._checks import check_epsilon, check_int_at_least, check_positive
from adt.distributions import TanhGaussian
from adt.models import Encoder, Generator
from adt.primitives import ce_sum, input_gradient, l1_normalised, sign_ascent, uniform_start
from adt.runtime import eval_mode

__all__ = ["AdversarialBatch", "InnerMaximizer", "Clean", "PGD", "ExplicitADT",
           "AmortizedExplicitADT", "AmortizedImplicitADT", "grad_reverse",
           "gradient_conditioning"]


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


class InnerMaximizer(nn.Module):
    """Interface of every maximiser; see the module docstring."""

    epsilon: float

    @property
    def passes_per_image(self) -> int:
        """Forward+backward passes of the classifier per training image in one training
        step, the training pass included (the cost unit of the paper's Sec. 4)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        raise NotImplementedError

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


class ExplicitADT(InnerMaximizer):
    """ADT_EXP: a tanh-Gaussian per example, fitted by ``steps`` of sign-like Adam (Eq. 9-11).

    For each batch, phi = (mu, v) starts at 0 and takes ``steps`` ascent steps on

        J(phi) = E_r[ CE(f(x + epsilon tanh(mu + softplus(v) r)), y) ] + lambda_ H(p_phi),

    the expectation estimated with ``num_samples`` draws that go through the
    classifier as one batch of ``num_samples * B`` images (one forward and one
    backward per step). The update is Adam with betas (0, 0), which reduces to
    ``lr * g / (|g| + 1e-8)``. The classifier then trains on one fresh draw.
    """

    def __init__(self, epsilon: float, steps: int = 7, num_samples: int = 5,
                 lambda_: float = 0.01, lr: float = 0.3) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.steps = check_int_at_least(steps, 1, "steps", "7 (the paper's T)")
        self.num_samples = check_int_at_least(num_samples, 1, "num_samples", "5 (the paper's k)")
        if not lambda_ >= 0:
            raise ValueError(f"lambda_={lambda_!r} must be >= 0; use e.g. 0.01 (the paper's)")
        self.lambda_ = float(lambda_)
        self.lr = check_positive(lr, "lr", "0.3")

    @property
    def passes_per_image(self) -> int:
        return self.steps * self.num_samples + 1  # T steps of k draws, then the training pass

    def distribution(self, mu: torch.Tensor, v: torch.Tensor) -> TanhGaussian:
        # validate_args=False: argument validation reads a value back (a host sync per step)
        return TanhGaussian(mu, F.softplus(v), self.epsilon, validate_args=False)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mu: torch.Tensor,
                  v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-example J(phi), Eq. (9), averaged over the draws ``noise`` of shape (k, B, ...).

        The k draws are stacked into one batch of k*B images for the classifier.
        """
        k = noise.shape[0]
        dist = self.distribution(mu, v)
        delta = dist.rsample_from(noise)
        x_adv = (x.unsqueeze(0) + delta).clamp(0.0, 1.0).flatten(0, 1)
        logits = model(x_adv).float()
        ce = F.cross_entropy(logits, y.repeat(k), reduction="none").view(k, -1)
        entropy = dist.entropy_estimate(delta).per_pixel
        return (ce + self.lambda_ * entropy).mean(0)

    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TanhGaussian:
        """The learned adversarial distribution p_phi*(delta | x) against ``model`` as it is."""
        x = x.detach().float()
        mu = torch.zeros_like(x)
        v = torch.zeros_like(x)
        shape = (self.num_samples, *x.shape)
        for _ in range(self.steps):
            mu.requires_grad_(True)
            v.requires_grad_(True)
            noise = torch.randn(shape, device=x.device)
            # sum over examples: each example's parameters see only their own objective
            g_mu, g_v = torch.autograd.grad(self.objective(model, x, y, mu, v, noise).sum(), (mu, v))
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


def gradient_conditioning(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          epsilon: float) -> torch.Tensor:
    """[x, g1, g2], the input of both amortised generators (3C channels).

    g1 = grad_x CE(f(x), y) and g2 the same gradient at the FGSM point
    clip(x + epsilon sign(g1), 0, 1), computed with the classifier in eval mode and each
    divided by its per-example mean absolute value (input gradients are tiny and vary in
    scale across training; the generator sees their shape).
    """
    with eval_mode(model):
        g1 = input_gradient(model, x, y)
        g2 = input_gradient(model, (x + epsilon * g1.sign()).clamp(0.0, 1.0), y)
    return torch.cat([x, l1_normalised(g1, mean=True), l1_normalised(g2, mean=True)], 1)


class AmortizedExplicitADT(InnerMaximizer):
    """ADT_EXP-AM: a conditional generator maps [x, g1, g2] to (mu, v) of a tanh-Gaussian.

    The conditioning is :func:`gradient_conditioning`. One draw per input; the generator
    ascends CE + lambda_ H through a gradient reversal, in the classifier's own backward
    pass (extra loss: -lambda_ H).
    """

    passes_per_image = 3  # g1 and g2 of the conditioning, then the training pass

    def __init__(self, in_channels: int, epsilon: float, ngf: int = 256, lambda_: float = 0.01,
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999)) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.lambda_ = float(lambda_)
        check_int_at_least(ngf, 1, "ngf", "256 (paper) or 16 (CPU)")
        self.generator = Generator(3 * in_channels, 2 * in_channels, ngf)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)

    def distribution(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TanhGaussian:
        """p_phi(delta | x) for a batch: the generator's (mu, v) from x and two input gradients."""
        out = self.generator(gradient_conditioning(model, x, y, self.epsilon)).float()
        mu, v = out.chunk(2, dim=1)
        return TanhGaussian(mu, F.softplus(v), self.epsilon, validate_args=False)

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        dist = self.distribution(model, x, y)
        delta = dist.rsample()
        entropy = dist.entropy_estimate(delta).per_pixel.mean()
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


def gaussian_nll(mean: torch.Tensor, log_std: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-log N(z; mean, exp(log_std)^2) per dimension (not summed)."""
    return 0.5 * ((z - mean) * torch.exp(-log_std)).square() + log_std + 0.5 * math.log(2 * math.pi)


class AmortizedImplicitADT(InnerMaximizer):
    """ADT_IMP-AM: delta = epsilon tanh(g(x, z)), z ~ U(-1, 1)^noise_dim (Sec. 3.3).

    The generator is ADT_EXP-AM's, conditioned on the same [x, g1, g2]
    (:func:`gradient_conditioning`) plus one more channel: z through an MLP
    (noise_dim -> 256 -> H*W), reshaped to a noise map.
    The entropy is kept up through a variational bound: an encoder q(z | delta)
    recovers the noise, and the generator pays ``lambda_ * relu(NLL - threshold)``
    where NLL is the per-dimension mean of -log q(z | delta); the encoder minimises that
    NLL with its own Adam (both from one encoder pass, see ``forward``).
    """

    passes_per_image = 3  # g1 and g2 of the conditioning, then the training pass

    def __init__(self, in_channels: int, image_size: int, epsilon: float, ngf: int = 256,
                 noise_dim: int = 64, lambda_: float = 1.0, threshold: float = 0.9,
                 lr: float = 2e-4, encoder_lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999)) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        check_int_at_least(ngf, 1, "ngf", "256 (paper) or 16 (CPU)")
        self.noise_dim = check_int_at_least(noise_dim, 1, "noise_dim", "64")
        self.image_size = image_size
        self.lambda_, self.threshold = float(lambda_), float(threshold)
        self.noise_map = nn.Sequential(nn.Linear(noise_dim, 256), nn.ReLU(inplace=True),
                                       nn.Linear(256, image_size * image_size))
        self.generator = Generator(3 * in_channels + 1, in_channels, ngf)
        self.encoder = Encoder(in_channels, noise_dim)
        self.optimizer = torch.optim.Adam([*self.noise_map.parameters(),
                                           *self.generator.parameters()], lr=lr, betas=betas)
        self.encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=encoder_lr,
                                                  betas=betas)

    def conditioning(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The generator's conditioning input [x, g1, g2] for a batch."""
        return gradient_conditioning(model, x, y, self.epsilon)

    def sample_from(self, cond: torch.Tensor, z: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta, z)``: one perturbation per conditioning input, from noise z (drawn if
        not given). Several draws per image: repeat ``cond`` along the batch."""
        if z is None:
            z = torch.rand(len(cond), self.noise_dim, device=cond.device) * 2 - 1
        noise_map = self.noise_map(z).view(len(cond), 1, self.image_size, self.image_size)
        out = self.generator(torch.cat([cond, noise_map.to(cond.dtype)], 1)).float()
        return self.epsilon * torch.tanh(out), z

    def sample(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta, z)``: one perturbation per image of the batch against ``model``."""
        return self.sample_from(self.conditioning(model, x, y), z)

    def entropy_nll(self, delta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean over batch and dimensions of -log q(z | delta): low means a high entropy bound."""
        mean, log_std = self.encoder(delta / self.epsilon)
        return gaussian_nll(mean.float(), log_std.float(), z).mean()

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        delta, z = self.sample(model, x, y)
        # One encoder pass serves both players. Its loss, the NLL, trains the encoder; the
        # generator must instead get the gradient of the penalty lambda relu(NLL - threshold),
        # which is the NLL's gradient times lambda 1[NLL > threshold]: a hook rescales the
        # gradient that flows back into delta through the encoder.
        to_encoder = delta.view_as(delta)
        nll = self.entropy_nll(to_encoder, z)
        scale = self.lambda_ * (nll.detach() > self.threshold).float()
        to_encoder.register_hook(lambda grad: grad * scale)
        x_adv = (x + grad_reverse(delta)).clamp(0.0, 1.0)
        return AdversarialBatch(x_adv, y, extra_loss=nll, stats={"entropy_nll": nll.detach()})

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

