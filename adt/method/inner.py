"""The inner maximisers' one interface, and the point-wise baselines.

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

Calling a maximiser checks the batch first, once (:func:`adt.core._checks.check_batch`,
the contract of the attacks and the tables: float images in [0, 1], int64 labels, the
image shape the maximiser was built for, the classifier's device and dtype), and moves
the maximiser's own networks to the classifier's device and dtype when they differ.

- :class:`Clean`: no perturbation (standard training).
- :class:`PGD`: AT, Eq. (1)-(2).
- :class:`TRADES`: the TRADES baseline (Zhang et al., 2019), with its own outer loss.

ADT's maximisers: :mod:`adt.method.explicit` (ADT_EXP, per-example tanh-Gaussians) and
:mod:`adt.method.amortized` (ADT_EXP-AM and ADT_IMP-AM, generators).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from adt.core._checks import (
    check_batch,
    check_epsilon,
    check_int_at_least,
    check_positive,
    first_float_weight,
)
from adt.core.primitives import ce_sum, sign_ascent, uniform_start
from adt.core.runtime import eval_mode

__all__ = ["AdversarialBatch", "InnerMaximizer", "Clean", "PGD", "TRADES", "kl_to_clean"]


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


def _same(value: torch.Tensor) -> torch.Tensor:
    return value


def _move_state(optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's optimiser state (Adam's moments) onto the parameter's device and
    dtype; the step counters stay where the optimiser keeps them."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor) and value.is_floating_point():
                state[key] = value.to(device=param.device, dtype=param.dtype)


class InnerMaximizer(nn.Module):
    """Interface of every maximiser; see the module docstring.

    Two hooks make N data-parallel processes take the step one process takes on the
    global batch (:func:`adt.training.distributed.wrapped_maximizer` sets them for an epoch):
    ``batch_share``, this process's share of the global batch (1/N), multiplies the
    release's batch-mean gradient scales; ``global_mean`` turns a batch mean over this
    process's rows into the global batch's mean. In one process they change nothing.
    ``networks`` names the maximiser's own trained networks (attributes), which
    data-parallel training wraps in DistributedDataParallel; none for the maximisers
    without networks. ``image_shape`` is the (C, H, W) of the images the networks were
    built for (None in a place: any size there; None: any shape), ``built_for`` names the
    maximiser and its sizes in messages.

    ``maximizer(model, x, y)`` (:meth:`__call__`) is the entry: it checks the batch once
    (:func:`~adt.core._checks.check_batch`, one host sync), makes the maximiser's
    networks follow the classifier (:meth:`follow`), then runs :meth:`forward`.
    """

    epsilon: float
    networks: tuple[str, ...] = ()
    batch_share: float = 1.0
    global_mean: Callable[[torch.Tensor], torch.Tensor] = staticmethod(_same)
    image_shape: tuple[int | None, ...] | None = None
    built_for: str = ""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AdversarialBatch:
        """The maximiser's entry: :func:`~adt.core._checks.check_batch` (ValueError saying
        what to fix), :meth:`follow`, then :meth:`forward` (through ``nn.Module``'s call,
        hooks included)."""
        check_batch(x, y, image_shape=self.image_shape, owner=self.built_for or
                    type(self).__name__, model=model)
        self.follow(model)
        return super().__call__(model, x, y)

    def follow(self, model: nn.Module) -> None:
        """Move the maximiser's parameters and buffers, and the state of its optimisers, to
        the device and floating dtype of the classifier's first floating weight (a
        generator built on the CPU in float32 follows a float64 or CUDA classifier); a
        no-op when they are there already, or either has no weights."""
        target = first_float_weight(model)
        own = first_float_weight(self)
        if target is None or own is None or (own.device, own.dtype) == (target.device,
                                                                         target.dtype):
            return
        self.to(device=target.device, dtype=target.dtype)
        for optimizer in (v for v in vars(self).values()
                          if isinstance(v, torch.optim.Optimizer)):
            _move_state(optimizer)

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
        # Eq. (2) through the attacks' own loop, without their per-call checks: the settings
        # were checked once, in __init__, and the batch once, at the entry (__call__).
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


