"""l_inf attacks as plain functions ``(model, x, y, *, epsilon, ...) -> x_adv``.

White-box attacks of the paper's evaluation protocol (REFERENCE.md):

* :func:`fgsm`   one signed-gradient step of size epsilon (Goodfellow et al. 2015);
* :func:`pgd`    projected sign ascent on the cross-entropy, Eq. (2) (Madry et al. 2018);
* :func:`mim`    the same with an L1-normalised momentum (Dong et al. 2018);
* :func:`cw`     PGD on the C&W margin loss with confidence kappa (Carlini & Wagner 2017);
* :func:`fea_attack` sign descent on the distance between penultimate features and those
  of an image of another class;
* :func:`with_restarts` repeats any of them and keeps the strongest result per example.

Library attacks through torchattacks: :func:`autoattack` (Croce & Hein 2020) and
:func:`spsa` (Uesato et al. 2018); and :func:`transfer` (craft on one model, score on
another).

Every attack is batched tensor code: one forward and one backward per step for the
whole batch, no per-example Python loop, no host synchronisation inside a step loop;
per-example choices use masks. The model is used in whatever mode it is in (the
evaluation code puts it in eval mode); logits are cast to float32 before any loss, so
the model may run under bf16 autocast. Outputs always satisfy
``|x_adv - x|_inf <= epsilon`` and ``0 <= x_adv <= 1``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adt._checks import check_choice, check_epsilon, check_int_at_least, check_positive
from adt.models import device_of, penultimate_features

__all__ = ["input_gradient", "objective_gradient", "project", "uniform_start", "sign_ascent",
           "ce_sum", "ce_per_example", "margin", "cw_loss", "fgsm", "pgd", "mim", "cw", "fea_attack", "with_restarts", "autoattack",
           "spsa", "transfer", "preserved_modes", "isolated_rng", "AUTOATTACK_VERSIONS"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> scalar to ascend
Objective = Callable[[torch.Tensor], torch.Tensor]  # x_adv -> scalar to ascend
Attack = Callable[..., torch.Tensor]  # (model, x, y, **settings) -> x_adv

AUTOATTACK_VERSIONS = ("standard", "cheap")


# ----------------------------------------------------------------------------- losses

def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: each example's gradient is its own loss's."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def ce_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each example, shape (B,)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


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


# ----------------------------------------------------------------------------- building blocks

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


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Projection onto the l_inf ball of radius epsilon around x, intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp_(0.0, 1.0)


def uniform_start(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """A uniform draw from the epsilon ball around x, clipped to [0, 1] (Madry et al. 2018)."""
    return (x + torch.empty_like(x).uniform_(-epsilon, epsilon)).clamp(0.0, 1.0)


def _l1_normalised(grad: torch.Tensor) -> torch.Tensor:
    """grad / ||grad||_1 per example (a zero gradient stays zero)."""
    norm = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
    return grad / norm.view(-1, *([1] * (grad.dim() - 1)))


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
            momentum = decay * momentum + _l1_normalised(grad)
            grad = momentum
        x_adv = torch.clamp(x_adv + step_size * grad.sign(), lo, hi)
    return x_adv.detach()


def _misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float().argmax(1) != y


def _keep(best: torch.Tensor, found: torch.Tensor, candidate: torch.Tensor,
          candidate_found: torch.Tensor, better: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: keep the first successful result; until one succeeds, take the candidate
    where it succeeds or is ``better``. Returns (new best, new found)."""
    take = ~found & (candidate_found | better)
    best = torch.where(take.view(-1, *([1] * (best.dim() - 1))), candidate, best)
    return best, found | candidate_found


# ----------------------------------------------------------------------------- argument checks

def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Images (B, ...) as floats in [0, 1] and B integer labels (checked before any loop)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a float tensor of images (B, C, H, W), got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')} "
                         f"{tuple(getattr(x, 'shape', ()))}; convert uint8 images with x.float() / 255")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
        raise ValueError(f"y must hold one integer label per image ({len(x)}), got "
                         f"{type(y).__name__} {getattr(y, 'dtype', '')} "
                         f"{tuple(getattr(y, 'shape', ()))}; pass y as a LongTensor of shape (B,)")
    # one host sync per attack call, outside every loop (training calls sign_ascent directly)
    if x.numel() and bool((x.amin() < 0) | (x.amax() > 1)):
        raise ValueError(f"x has values in [{x.min().item():.3g}, {x.max().item():.3g}], outside "
                         "[0, 1]: attacks work on unnormalised images; put any normalisation "
                         "inside the model")


def _check_iterative(x: torch.Tensor, y: torch.Tensor, epsilon: float, step_size: float,
                     steps: int) -> None:
    check_epsilon(epsilon)
    check_positive(step_size, "step_size", "epsilon / 4 (2/255 at 8/255)")
    check_int_at_least(steps, 1, "steps", "20")
    _check_batch(x, y)


# ----------------------------------------------------------------------------- white-box attacks

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
         loss_fn: Loss = ce_sum) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): clip(x + epsilon * sign(grad_x L), 0, 1).

    One step, no random start (the paper's protocol).
    """
    check_epsilon(epsilon)
    _check_batch(x, y)
    return (x + epsilon * input_gradient(model, x, y, loss_fn).sign()).clamp(0.0, 1.0).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
        step_size: float, steps: int, random_start: bool = True,
        loss_fn: Loss = ce_sum) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn``, Eq. (2): x <- Pi(x + step_size * sign(grad)).

    With ``random_start`` the start is uniform in the epsilon ball (Madry et al. 2018).
    """
    _check_iterative(x, y, epsilon, step_size, steps)
    x = x.detach()
    start = uniform_start(x, epsilon) if random_start else x
    return sign_ascent(lambda v: loss_fn(model(v), y), x, start, epsilon=epsilon,
                       step_size=step_size, steps=steps)


def mim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
        step_size: float, steps: int = 20, decay: float = 1.0, random_start: bool = True,
        loss_fn: Loss = ce_sum) -> torch.Tensor:
    """Momentum iterative method (Dong et al. 2018): g <- decay * g + grad / ||grad||_1
    (per example), x <- Pi(x + step_size * sign(g)). Paper: 20 steps, decay 1.0."""
    _check_iterative(x, y, epsilon, step_size, steps)
    check_positive(decay, "decay", "1.0 (the paper's MIM; decay 0 would be plain PGD)")
    x = x.detach()
    start = uniform_start(x, epsilon) if random_start else x
    return sign_ascent(lambda v: loss_fn(model(v), y), x, start, epsilon=epsilon,
                       step_size=step_size, steps=steps, decay=decay)


def cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
       step_size: float, steps: int = 30, kappa: float = 50.0,
       random_start: bool = True) -> torch.Tensor:
    """C&W-l_inf as PGD (Madry et al. 2018; Carlini & Wagner 2017): :func:`pgd` ascending
    :func:`cw_loss`, min(max_{j != y} z_j - z_y, kappa). Paper: 30 steps, kappa = 50."""
    return pgd(model, x, y, epsilon=epsilon, step_size=step_size, steps=steps,
               random_start=random_start, loss_fn=cw_loss(kappa))


def _other_class_targets(y: torch.Tensor, pool_y: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices into the pool, random images whose label differs from y, distinct where
    the pool allows (otherwise the first choice repeats). One host sync checks that every
    example has at least one image of another class."""
    other = pool_y[None, :] != y[:, None]
    if not bool(other.any(1).all()):
        raise ValueError("fea_attack needs, for every example, a target image of another class, "
                         "but the target pool holds only images of the example's class; pass a "
                         "batch with several classes or target_pool=(x_pool, y_pool)")
    scores = torch.rand(other.shape, device=y.device).masked_fill(~other, -1.0)
    idx = scores.topk(k, dim=1).indices
    return torch.where(other.gather(1, idx), idx, idx[:, :1])


def fea_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
               step_size: float, steps: int = 50, targets: int = 9, random_start: bool = True,
               target_pool: tuple[torch.Tensor, torch.Tensor] | None = None,
               early_stop: bool = True) -> torch.Tensor:
    """Feature-space attack (FeaAttack in the paper's evaluation): sign descent on

        || phi(x + delta) - phi(x_t) ||_2^2,

    phi the penultimate features (:func:`adt.models.penultimate_features`), x_t an image
    of another class; ``steps`` projected steps of ``step_size`` (paper: 50 steps of
    epsilon / 8 = 1/255 at 8/255). Up to ``targets`` candidate x_t are tried, drawn at
    random from ``target_pool`` (default: the batch itself); per example the result of
    the first target that makes it misclassified is kept, else that of the last one.
    ``early_stop`` stops when every example is fooled (one host sync per target).
    """
    _check_iterative(x, y, epsilon, step_size, steps)
    check_int_at_least(targets, 1, "targets", "9 (one per other class on CIFAR-10)")
    pool_x, pool_y = (x, y) if target_pool is None else target_pool
    _check_batch(pool_x, pool_y)
    x = x.detach()
    idx = _other_class_targets(y, pool_y, min(targets, len(pool_y)))
    best, found = x, torch.zeros_like(y, dtype=torch.bool)
    for t in range(idx.shape[1]):
        with torch.no_grad():
            target = penultimate_features(model, pool_x[idx[:, t]])[0].float()

        def closeness(v: torch.Tensor, target: torch.Tensor = target) -> torch.Tensor:
            return -(penultimate_features(model, v)[0].float() - target).pow(2).sum()

        start = uniform_start(x, epsilon) if random_start else x
        candidate = sign_ascent(closeness, x, start, epsilon=epsilon, step_size=step_size,
                                steps=steps)
        fooled = _misclassified(model, candidate, y)
        best, found = _keep(best, found, candidate, fooled, torch.ones_like(fooled))
        if early_stop and bool(found.all()):
            break
    return best


def with_restarts(attack: Attack, restarts: int, *, loss_fn: Loss = ce_per_example,
                  early_stop: bool = True) -> Attack:
    """``attack`` run ``restarts`` times (each with its own random start); per example the
    first result that is misclassified is kept, else the one of highest ``loss_fn``
    (per-example loss, default cross-entropy). ``early_stop`` skips the remaining runs once
    every example is fooled (one host sync per run). The returned function has the
    attack's signature."""
    check_int_at_least(restarts, 1, "restarts", "5")
    if not callable(attack):
        raise ValueError(f"attack={attack!r} is not callable; pass an attack function such as "
                         "adt.attacks.pgd")

    def score(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = model(x_adv).float()
        return logits.argmax(1) != y, loss_fn(logits, y)

    @functools.wraps(attack)
    def restarted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings: Any
                  ) -> torch.Tensor:
        best = attack(model, x, y, **settings)
        found, best_loss = score(model, best, y)
        for _ in range(restarts - 1):
            if early_stop and bool(found.all()):
                break
            candidate = attack(model, x, y, **settings)
            fooled, loss = score(model, candidate, y)
            better = loss > best_loss
            best_loss = torch.where(~found & (fooled | better), loss, best_loss)
            best, found = _keep(best, found, candidate, fooled, better)
        return best

    restarted.__name__ = f"{getattr(attack, '__name__', 'attack')}_x{restarts}_restarts"
    return restarted


# ----------------------------------------------------------------------------- library attacks

@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's train/eval flag on exit (torchattacks switches modes)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def isolated_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run a block on its own random stream: the global RNG state of the CPU and of
    ``device`` is restored afterwards (optionally seeded with ``seed`` inside)."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.manual_seed(seed)
        yield


class _FloatLogits(nn.Module):
    """The model with float32 logits, so library losses are exact under bf16 autocast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


def _run_library(build: Callable[[nn.Module], Any], model: nn.Module, x: torch.Tensor,
                 y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Run a torchattacks attack without side effects: every module's mode and the global
    RNG state (torchattacks' APGD reseeds it) are restored; the attack runs on x's
    device; the result is projected once more (float round-off) and returned there."""
    with preserved_modes(model), isolated_rng(x.device):
        attack = build(_FloatLogits(model))
        attack.set_device(x.device)
        x_adv = attack(x.detach(), y)
    return project(x_adv.detach().to(x.device, x.dtype), x.detach(), epsilon)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
               version: str = "standard", num_classes: int = 10, steps: int = 100,
               targets: int = 9, square_queries: int = 5000, seed: int = 0) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) from torchattacks' components, run as a cascade
    (each attack only on the examples that survived the previous ones: the per-example
    worst case).

    * ``"standard"``: APGD-CE, APGD-T, FAB-T (``targets`` target classes each, capped at
      ``num_classes - 1``) with ``steps`` iterations, then Square with ``square_queries``
      queries. The defaults are the original's (100 iterations, 9 targets, 5000
      queries); torchattacks' own ``AutoAttack`` class runs 10 iterations instead.
    * ``"cheap"``: APGD-CE and APGD-T only, for CPU profiles (choose fewer ``steps`` and
      ``targets``).
    """
    import torchattacks  # imported here: a slow import only the library attacks need

    check_epsilon(epsilon)
    check_choice(version, AUTOATTACK_VERSIONS, "AutoAttack version")
    check_int_at_least(num_classes, 4, "num_classes (APGD-T's targeted DLR loss needs 4)", "10")
    check_int_at_least(steps, 1, "steps", "100 (the original AutoAttack)")
    check_int_at_least(targets, 1, "targets", "9 (the original AutoAttack)")
    check_int_at_least(square_queries, 1, "square_queries", "5000 (the original AutoAttack)")
    _check_batch(x, y)
    n_targets = min(targets, num_classes - 1) + 1  # torchattacks: "n_classes" = targets + 1

    def build(net: nn.Module) -> Any:
        common = {"norm": "Linf", "eps": epsilon, "seed": seed, "n_restarts": 1}
        parts = [torchattacks.APGD(net, loss="ce", steps=steps, **common),
                 torchattacks.APGDT(net, steps=steps, n_classes=n_targets, **common)]
        if version == "standard":
            parts += [torchattacks.FAB(net, steps=steps, multi_targeted=True,
                                       n_classes=n_targets, **common),
                      torchattacks.Square(net, n_queries=square_queries, **common)]
        return torchattacks.MultiAttack(parts)

    return _run_library(build, model, x, y, epsilon)


def spsa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
         lr: float = 0.01, delta: float = 1e-3, iterations: int = 100, samples: int = 256,
         max_batch_size: int = 64) -> torch.Tensor:
    """SPSA (Uesato et al. 2018), a gradient-free attack, through ``torchattacks.SPSA``:
    Adam (learning rate ``lr``) on the margin loss max_{j != y} z_j - z_y, with the
    gradient estimated from ``samples`` Rademacher perturbations of size ``delta`` per
    iteration (evaluated ``max_batch_size`` perturbations at a time), projected onto the
    ball. Runs in float32 even under autocast: finite differences of size 1e-3 are
    below bf16 resolution. Paper: lr 0.01, delta 1e-3, 100 iterations, 256-2048 samples.
    """
    import torchattacks

    check_epsilon(epsilon)
    check_positive(lr, "lr", "0.01")
    check_positive(delta, "delta", "1e-3")
    check_int_at_least(iterations, 1, "iterations", "100")
    check_int_at_least(samples, 1, "samples", "256")
    check_int_at_least(max_batch_size, 1, "max_batch_size", "64")
    _check_batch(x, y)

    def build(net: nn.Module) -> Any:
        return torchattacks.SPSA(net, eps=epsilon, delta=delta, lr=lr, nb_iter=iterations,
                                 nb_sample=samples, max_batch_size=max_batch_size)

    with torch.autocast(x.device.type, enabled=False):
        return _run_library(build, model, x, y, epsilon)


def transfer(source_model: nn.Module, target_model: nn.Module, x: torch.Tensor,
             y: torch.Tensor, *, attack: Attack = pgd, **settings: Any) -> torch.Tensor:
    """Transfer (black-box) attack (Papernot et al. 2017): ``attack(source_model, x, y,
    **settings)`` crafted on the source model in eval mode (its modes are restored) and
    on its device, returned on the target model's device to be scored there. The target
    model's gradients are never used."""
    if not callable(attack):
        raise ValueError(f"attack={attack!r} is not callable; pass e.g. adt.attacks.pgd or "
                         "adt.attacks.mim")
    _check_batch(x, y)
    source_device = device_of(source_model, x.device)
    with preserved_modes(source_model):
        source_model.eval()
        x_adv = attack(source_model, x.to(source_device), y.to(source_device), **settings)
    return x_adv.to(device_of(target_model, x.device))
