"""The tensor primitives that training and evaluation share.

* losses: :func:`ce_sum`, :func:`ce_per_example`, :func:`cross_entropy`, :func:`margin`,
  :func:`cw_loss`;
* input gradients: :func:`objective_gradient`, :func:`input_gradient`;
* the l_inf ball: :func:`project`, :func:`uniform_start`;
* the one iterative loop of every sign-gradient method, :func:`sign_ascent` (PGD, Eq. 2,
  and MIM), with :func:`l1_normalised`;
* correctness: :func:`correct_predictions` (per example, batched, optionally under a
  perturbation), :func:`misclassified`, :func:`even_batches`;
* :func:`check_batch`, the input check of every public attack.

Everything is batched tensor code without host synchronisation, except
:func:`check_batch` (one sync per call, outside every loop). Logits are cast to
float32 before a loss, so the model may run under bf16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adt.core._checks import check_batch, check_positive
from adt.core.runtime import per_example

__all__ = ["Loss", "Objective", "ce_sum", "ce_per_example", "cross_entropy", "margin",
           "cw_loss", "objective_gradient", "input_gradient", "project", "uniform_start",
           "l1_normalised", "sign_ascent", "misclassified", "even_batches",
           "correct_predictions", "check_batch"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> scalar to ascend
Objective = Callable[[torch.Tensor], torch.Tensor]  # x_adv -> scalar to ascend


# ----------------------------------------------------------------------------- losses

def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: each example's gradient is its own loss's."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def ce_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each example, shape (B,)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Cross-entropy, computed in float32 for half-precision logits (float64 kept, as the
    analyses' double-precision checks need)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, y, reduction=reduction)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per example: > 0 exactly when the example is misclassified."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def cw_loss(kappa: float) -> Loss:
    """The C&W loss of Carlini & Wagner (2017) for l_inf PGD, summed over the batch:

        L(x) = min(max_{j != y} z_j(x) - z_y(x), kappa),

    i.e. the margin, saturated once the wrong class leads by kappa. It equals the
    common form ``-relu(z_y - max_{j != y} z_j + kappa)`` plus the constant kappa, so
    both have the same gradient.
    """
    check_positive(kappa, "kappa", "50 (the paper's C&W confidence)")
    return lambda logits, y: margin(logits, y).clamp(max=kappa).sum()


# ----------------------------------------------------------------------------- gradients

def objective_gradient(objective: Objective, x: torch.Tensor) -> torch.Tensor:
    """grad_x of ``objective(x)``; model parameters receive no gradient (works inside
    ``torch.no_grad()`` too)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x), x)
    return grad


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Loss = ce_sum) -> torch.Tensor:
    """grad_x of ``loss_fn(model(x), y)``; the model's parameters receive no gradient."""
    return objective_gradient(lambda v: loss_fn(model(v), y), x)


# ----------------------------------------------------------------------------- the l_inf ball

def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Projection onto the l_inf ball of radius epsilon around x, intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp_(0.0, 1.0)


def uniform_start(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """A uniform draw from the epsilon ball around x, clipped to [0, 1] (Madry et al. 2018)."""
    return (x + torch.empty_like(x).uniform_(-epsilon, epsilon)).clamp(0.0, 1.0)


def l1_normalised(grad: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """grad / ||grad||_1 per example (``mean``: divided by the mean absolute entry instead,
    i.e. ||grad||_1 / D); a zero gradient stays zero."""
    size = grad.abs().flatten(1)
    norm = size.mean(1) if mean else size.sum(1)
    return grad / per_example(norm.clamp_min(1e-12), grad)


def sign_ascent(objective: Objective, x: torch.Tensor, x_adv: torch.Tensor, *, epsilon: float,
                step_size: float, steps: int, decay: float = 0.0) -> torch.Tensor:
    """The one iterative loop of every gradient attack here (unchecked: callers validate):

        g_{t+1} = decay * g_t + grad / ||grad||_1   (decay > 0: MIM, Dong et al. 2018, Eq. 6)
        g_{t+1} = grad                              (decay = 0: PGD, Eq. 2 of the paper)
        x_{t+1} = Pi_{B_eps(x) cap [0,1]}(x_t + step_size * sign(g_{t+1})).
    """
    momentum = torch.zeros_like(x) if decay else None
    # the projection's bounds, computed once: Pi(v) = clamp(v, lo, hi)
    lo, hi = (x - epsilon).clamp_(0.0, 1.0), (x + epsilon).clamp_(0.0, 1.0)
    for _ in range(steps):
        grad = objective_gradient(objective, x_adv)
        if momentum is not None:
            momentum = decay * momentum + l1_normalised(grad)
            grad = momentum
        x_adv = torch.clamp(x_adv + step_size * grad.sign(), lo, hi)
    return x_adv.detach()


# ----------------------------------------------------------------------------- correctness

def misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: whether ``model`` gets ``x`` wrong (no gradient)."""
    with torch.no_grad():
        return model(x).float().argmax(1) != y


def even_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """ceil(n / batch_size) contiguous batches of nearly equal size (no tiny last batch)."""
    bounds = torch.linspace(0, n, -(-n // batch_size) + 1).round().long().tolist()
    yield from zip(bounds[:-1], bounds[1:], strict=True)


def correct_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        batch_size: int = 500,
                        perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                        autocast: Callable[[], Any] = contextlib.nullcontext) -> torch.Tensor:
    """Per-example correctness (bool, on the device) of ``model`` on ``x``, or on
    ``perturb(x_batch, y_batch)``, in :func:`even_batches` of about ``batch_size``.

    The model runs as it is (callers choose its mode); its forward passes run under
    ``autocast()``. This is the one place where accuracy, clean or under attack, is
    measured: the training monitor, every row of the robustness table and the
    accuracy curves go through it.
    """
    out = []
    for lo, hi in even_batches(len(x), batch_size):
        xb, yb = x[lo:hi], y[lo:hi]
        if perturb is not None:
            xb = perturb(xb, yb)
        with autocast(), torch.no_grad():
            out.append(model(xb).argmax(1) == yb)
    return torch.cat(out)


# ----------------------------------------------------------------------------- input checks
