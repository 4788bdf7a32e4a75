"""The explicit adversarial distribution of ADT_EXP: delta = epsilon * tanh(u), u ~ N(mu, sigma^2).

Paper Eq. (8)-(11). The density follows from the change of variables
delta = epsilon * tanh(u):

    -log p(delta) = sum_j [ r_j^2 / 2 + log(2 pi) / 2 + log sigma_j
                            + log(1 - tanh(u_j)^2) + log epsilon ],   r = (u - mu) / sigma  (Eq. 11)

``log(1 - tanh(u)^2)`` is computed as ``2 (log 2 - |u| - log1p(exp(-2|u|)))``, which is exact
and finite for every u (the naive form is ``log(0) = -inf`` once tanh(u) rounds to 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.distributions import Distribution, constraints

__all__ = ["TanhGaussian", "EntropyEstimate", "log1m_tanh_sq", "release_negative_log_density"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log1m_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2) = 2 (log 2 - |u| - log(1 + exp(-2|u|))), exact and finite for all u
    (the log-Jacobian of tanh)."""
    a = u.abs()
    return 2.0 * (math.log(2.0) - a - torch.log1p(torch.exp(-2.0 * a)))


def release_negative_log_density(noise: torch.Tensor, u: torch.Tensor,
                                 scale: torch.Tensor) -> torch.Tensor:
    """The release's per-pixel -log p(delta) up to constants, Eq. (11) as it computes it:

        r^2 / 2 + log(sigma + 1e-8) + log(1 - tanh(u)^2 + 1e-8),   u = mu + sigma r,

    with ``noise`` the drawn r (so r^2 / 2 carries no gradient) and the naive logarithms
    (flat at log 1e-8 once tanh(u) rounds to 1: no gradient pulls a saturated u back).
    Its mean over the batch and the pixels is the entropy term lambda = 0.01 was tuned
    for (REPRODUCTION.md, "ADT_EXP as released")."""
    return (noise.square() / 2 + torch.log(scale + 1e-8)
            + torch.log(1 - torch.tanh(u).square() + 1e-8))


class EntropyEstimate(NamedTuple):
    """Single-sample entropy estimates of a TanhGaussian, one per drawn perturbation.

    ``total``: -log p(delta) summed over the pixels (Eq. 11), an unbiased estimate of H(p).
    ``per_pixel``: the mean over pixels of the part of -log p(delta) that depends on the
    parameters, log sigma + log(1 - tanh(u)^2); the scaling the release uses with
    lambda = 0.01 (REPRODUCTION.md, "ADT_EXP as released").
    """

    total: torch.Tensor
    per_pixel: torch.Tensor


class TanhGaussian(Distribution):
    """delta = epsilon * tanh(u), u ~ N(loc, diag(scale^2)) (Eq. 8).

    Batch shape ``(B,)``, event shape the image shape ``loc.shape[1:]``. Samples lie in
    the closed l_inf ball of radius ``epsilon`` (strictly inside but for float rounding of
    tanh at |u| > ~9). ``log_prob`` of a value drawn
    by this object's last ``rsample``/``sample`` call reuses the pre-tanh ``u`` and is
    exact; other values are mapped back with atanh.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, epsilon: float,
                 validate_args: bool | None = None) -> None:
        if not 0.0 < float(epsilon):
            raise ValueError(f"TanhGaussian epsilon={epsilon} must be > 0 (the l_inf radius)")
        if loc.dim() < 2:
            raise ValueError(f"TanhGaussian loc of shape {tuple(loc.shape)} needs a batch "
                             "dimension and at least one event dimension, e.g. (B, C, H, W)")
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.epsilon = float(epsilon)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(self.loc.shape[:1], self.loc.shape[1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.interval(-self.epsilon, self.epsilon)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> TanhGaussian:
        shape = torch.Size(batch_shape) + self.event_shape
        return TanhGaussian(self.loc.expand(shape), self.scale.expand(shape), self.epsilon)

    @property
    def mean_perturbation(self) -> torch.Tensor:
        """epsilon * tanh(loc): the perturbation at the mode of u (not the mean of delta)."""
        return self.epsilon * torch.tanh(self.loc)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Reparameterised draw, Eq. (10): delta = epsilon * tanh(loc + scale * r), r ~ N(0, I)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.rsample_from(torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device))

    def rsample_from(self, noise: torch.Tensor) -> torch.Tensor:
        """The draws epsilon * tanh(loc + scale * noise) for given standard-normal ``noise``
        of shape ``sample_shape + batch_shape + event_shape`` (common random numbers)."""
        u = self.loc + self.scale * noise
        value = self.epsilon * torch.tanh(u)
        self._last = (value, u)
        return value

    def _pre_tanh(self, value: torch.Tensor) -> torch.Tensor:
        if self._last is not None and value is self._last[0]:
            return self._last[1]
        limit = 1.0 - torch.finfo(value.dtype).eps
        return torch.atanh((value / self.epsilon).clamp(-limit, limit))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(delta) summed over the event dimensions (minus Eq. 11)."""
        u = self._pre_tanh(value)
        r = (u - self.loc) / self.scale
        log_p = (-0.5 * r.square() - _HALF_LOG_2PI - self.scale.log()
                 - log1m_tanh_sq(u) - math.log(self.epsilon))
        return log_p.flatten(-len(self.event_shape)).sum(-1)

    def release_entropy(self, value: torch.Tensor) -> torch.Tensor:
        """Per pixel, the release's -log p of drawn ``value``s
        (:func:`release_negative_log_density`); its mean over batch and pixels is the
        entropy term of ADT_EXP and ADT_EXP-AM as released."""
        u = self._pre_tanh(value)
        noise = ((u - self.loc) / self.scale).detach()  # the drawn r: r^2 / 2 has no gradient
        return release_negative_log_density(noise, u, self.scale)

    def entropy_estimate(self, value: torch.Tensor) -> EntropyEstimate:
        """Both entropy estimates of :class:`EntropyEstimate` for drawn ``value``s."""
        u = self._pre_tanh(value)
        per_pixel = (self.scale.log() + log1m_tanh_sq(u)).flatten(-len(self.event_shape)).mean(-1)
        return EntropyEstimate(-self.log_prob(value), per_pixel)
