"""The amortised maximisers (Sec. 3.2-3.3): generators that map a clean batch to its
adversarial distribution, trained in the classifier's own backward pass through a
gradient-reversal layer.

- :class:`AmortizedExplicitADT`: ADT_EXP-AM, a generator outputs (mu, v) (Sec. 3.2).
- :class:`AmortizedImplicitADT`: ADT_IMP-AM, an implicit generator with an entropy bound
  (Sec. 3.3).

Both read :func:`gradient_conditioning` ([x, g1, g2]).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adt.core._checks import check_choice, check_epsilon, check_int_at_least
from adt.core.models import Encoder, Generator, NoiseMap
from adt.core.primitives import ce_sum, input_gradient, l1_normalised
from adt.core.runtime import eval_mode
from adt.method.distributions import TanhGaussian
from adt.method.inner import AdversarialBatch, InnerMaximizer

__all__ = ["AmortizedExplicitADT", "AmortizedImplicitADT", "grad_reverse",
           "gradient_conditioning", "CONDITIONINGS"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def _widened(t: torch.Tensor) -> torch.Tensor:
    """A network's output in float32 when autocast made it half precision; float32 and
    float64 (a float64 classifier's generators) kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward (Ganin & Lempitsky, 2015).

    Placed on the perturbation, it lets the generator ascend the very loss the
    classifier descends in one backward pass.
    """
    return _GradReverse.apply(x)


CONDITIONINGS = ("raw", "normalised")
_CHANNELS = "1 (grey images) or 3 (RGB): the images' channels"


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

    networks = ("generator",)

    passes_per_image = 3  # g1 and g2 of the conditioning, then the training pass

    def __init__(self, in_channels: int, epsilon: float, ngf: int = 256, lambda_: float = 0.01,
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 conditioning: str = "raw") -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.lambda_ = float(lambda_)
        self.conditioning = check_choice(conditioning, CONDITIONINGS, "generator conditioning")
        check_int_at_least(ngf, 1, "ngf", "256 (paper) or 8 (CPU)")
        in_channels = check_int_at_least(in_channels, 1, "in_channels", _CHANNELS)
        self.image_shape = (in_channels, None, None)
        self.built_for = f"AmortizedExplicitADT(in_channels={in_channels})"
        self.generator = Generator(3 * in_channels, 2 * in_channels, ngf)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)

    def distribution(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TanhGaussian:
        """p_phi(delta | x) for a batch: the generator's (mu, v) from x and two input gradients."""
        cond = gradient_conditioning(model, x, y, self.epsilon, self.conditioning,
                                     self.batch_share)
        mu, v = _widened(self.generator(cond)).chunk(2, dim=1)
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
    :class:`~adt.core.models.NoiseMap`. The entropy is kept up through a variational bound: an
    encoder q(z | delta / epsilon) recovers the noise, and everything pays

        lambda_ * relu(NLL - threshold),   NLL = mean over batch and z-dims of -log q(z | delta),

    in the classifier's own backward pass; the gradient reversal on delta flips only the
    CE part for the generator. So, as in the release, the encoder learns ONLY through
    this penalty (no gradient while NLL < threshold), and the generator's entropy pressure
    is active only above the threshold (REPRODUCTION.md, "ADT_IMP-AM as released").
    """

    networks = ("generator", "noise_map", "encoder")

    passes_per_image = 3  # g1 and g2 of the conditioning, then the training pass

    def __init__(self, in_channels: int, image_size: int, epsilon: float, ngf: int = 256,
                 noise_dim: int = 64, lambda_: float = 1.0, threshold: float = 0.9,
                 lr: float = 2e-4, encoder_lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999),
                 encoder_betas: tuple[float, float] = (0.9, 0.999),
                 conditioning: str = "raw") -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        check_int_at_least(ngf, 1, "ngf", "256 (paper) or 8 (CPU)")
        in_channels = check_int_at_least(in_channels, 1, "in_channels", _CHANNELS)
        image_size = check_int_at_least(image_size, 1, "image_size",
                                        "28 (MNIST) or 32 (CIFAR-10)")
        self.image_shape = (in_channels, image_size, image_size)
        self.built_for = (f"AmortizedImplicitADT(in_channels={in_channels}, "
                          f"image_size={image_size})")
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
        if z is None:  # in the noise map's dtype (float32 unless it follows a float64 model)
            dtype = next(self.noise_map.parameters()).dtype
            z = torch.rand(len(cond), self.noise_dim, device=cond.device, dtype=dtype) * 2 - 1
        out = _widened(self.generator(torch.cat([cond, self.noise_map(z).to(cond.dtype)], 1)))
        return self.epsilon * torch.tanh(out), z

    def sample(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(delta, z)``: one perturbation per image of the batch against ``model``."""
        return self.sample_from(self.conditioning_input(model, x, y), z)

    def entropy_nll(self, delta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean over batch and dimensions of -log q(z | delta): low means a high entropy bound."""
        mean, variance = self.encoder(delta / self.epsilon)
        return gaussian_nll(_widened(mean), _widened(variance), z).mean()

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        Encoder.check_size(*x.shape[-2:])  # before any pass (sample() works at any size)
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

