"""l_inf attacks as plain functions ``(model, x, y, *, epsilon, ...) -> x_adv``.

White-box attacks of the paper's evaluation protocol (REPRODUCTION.md, "Evaluation protocol"):

* :func:`fgsm`   one signed-gradient step of size epsilon (Goodfellow et al. 2015);
* :func:`pgd`    projected sign ascent on the cross-entropy, Eq. (2) (Madry et al. 2018);
* :func:`mim`    the same with an L1-normalised momentum (Dong et al. 2018);
* :func:`cw`     PGD on the C&W margin loss with confidence kappa (Carlini & Wagner 2017);
* :func:`fea_attack` sign descent on the distance between penultimate features and those
  of an image of another class;
* :func:`with_restarts` repeats any of them and keeps the strongest result per example.

Library attacks through torchattacks: :func:`autoattack` (Croce & Hein 2020),
:func:`square` (Andriushchenko et al. 2020) and :func:`spsa` (Uesato et al. 2018), the
last two score-based (no gradients); and :func:`transfer` (craft on one model, score on
another).

Every attack is batched tensor code: one forward and one backward per step for the
whole batch, no per-example Python loop, no host synchronisation inside a step loop;
per-example choices use masks. The model is used in whatever mode it is in (the
evaluation code puts it in eval mode); logits are cast to float32 before any loss, so
the model may run under bf16 autocast. Outputs always satisfy
``|x_adv - x|_inf <= epsilon`` and ``0 <= x_adv <= 1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adt.core._checks import check_choice, check_epsilon, check_int_at_least, check_positive
from adt.core.models import penultimate_features
from adt.core.primitives import (
    Loss,
    ce_per_example,
    ce_sum,
    check_batch,
    cw_loss,
    input_gradient,
    misclassified,
    project,
    sign_ascent,
    uniform_start,
)
from adt.core.runtime import device_of, isolated_rng, per_example, preserved_modes

__all__ = ["fgsm", "pgd", "mim", "cw", "fea_attack", "with_restarts", "autoattack",
           "autoattack_parts", "original_autoattack", "square", "spsa", "transfer", "AUTOATTACK_VERSIONS", "Attack"]

Attack = Callable[..., torch.Tensor]  # (model, x, y, **settings) -> x_adv

AUTOATTACK_VERSIONS = ("standard", "gradient", "cheap")


def _keep(best: torch.Tensor, found: torch.Tensor, candidate: torch.Tensor,
          candidate_found: torch.Tensor, better: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: keep the first successful result; until one succeeds, take the candidate
    where it succeeds or is ``better``. Returns (new best, new found)."""
    take = ~found & (candidate_found | better)
    best = torch.where(per_example(take, best), candidate, best)
    return best, found | candidate_found


def _check_iterative(x: torch.Tensor, y: torch.Tensor, epsilon: float, step_size: float,
                     steps: int) -> None:
    check_epsilon(epsilon)
    check_positive(step_size, "step_size", "epsilon / 4 (2/255 at 8/255)")
    check_int_at_least(steps, 1, "steps", "20")
    check_batch(x, y)


# ----------------------------------------------------------------------------- white-box attacks

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
         loss_fn: Loss = ce_sum) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): clip(x + epsilon * sign(grad_x L), 0, 1).

    One step, no random start (the paper's protocol).
    """
    check_epsilon(epsilon)
    check_batch(x, y)
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
    """(B, k) indices into the pool: images whose label differs from y, drawn uniformly at
    random with replacement (as the release draws them). One host sync checks that every
    example has at least one image of another class."""
    other = pool_y[None, :] != y[:, None]
    if not bool(other.any(1).all()):
        raise ValueError("fea_attack needs, for every example, a target image of another class, "
                         "but the target pool holds only images of the example's class; pass a "
                         "batch with several classes or target_pool=(x_pool, y_pool)")
    return torch.multinomial(other.float(), k, replacement=True)


FEATURE_DISTANCES = ("cosine", "l2")


def _feature_distance(features: torch.Tensor, target: torch.Tensor, distance: str) -> torch.Tensor:
    """Per example: max(0, 1 - cos(features, target)) ("cosine") or ||features - target||^2."""
    if distance == "cosine":
        return (1 - F.cosine_similarity(features, target, dim=1)).clamp_min(0.0)
    return (features - target).pow(2).sum(1)


def fea_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
               step_size: float, steps: int = 50, targets: int = 200, random_start: bool = True,
               target_pool: tuple[torch.Tensor, torch.Tensor] | None = None,
               distance: str = "cosine") -> torch.Tensor:
    """Feature-space attack (FeaAttack, as the release runs it): sign descent on the distance

        d(phi(x + delta), phi(x_t))      (default: 1 - cos, clamped at 0; "l2": squared l2),

    phi the penultimate features (:func:`adt.core.models.penultimate_features`), x_t an image
    of another class; ``steps`` projected steps of ``step_size`` from a uniform random start
    (release: 50 steps of 1/255 at 8/255, ``targets`` = 200 images drawn at random with
    replacement from ``target_pool``'s images of other labels; default pool: the batch).
    An example counts as robust only if no copy is misclassified: per example the first
    misclassified copy is kept (later targets attack only the examples still standing,
    one host sync per target), else the last copy.
    """
    _check_iterative(x, y, epsilon, step_size, steps)
    check_int_at_least(targets, 1, "targets", "200 (the release's)")
    check_choice(distance, FEATURE_DISTANCES, "FeaAttack distance")
    pool_x, pool_y = (x, y) if target_pool is None else target_pool
    check_batch(pool_x, pool_y)
    x = x.detach()
    idx = _other_class_targets(y, pool_y, targets)
    best, found = x.clone(), torch.zeros_like(y, dtype=torch.bool)
    for t in range(targets):
        active = (~found).nonzero().squeeze(1)
        if len(active) == 0:
            break
        xa, ya = x[active], y[active]
        with torch.no_grad():
            target = penultimate_features(model, pool_x[idx[active, t]])[0].float()

        def closeness(v: torch.Tensor, target: torch.Tensor = target) -> torch.Tensor:
            features = penultimate_features(model, v)[0].float()
            return -_feature_distance(features, target, distance).sum()

        start = uniform_start(xa, epsilon) if random_start else xa
        candidate = sign_ascent(closeness, xa, start, epsilon=epsilon, step_size=step_size,
                                steps=steps)
        best[active] = candidate
        found[active] = misclassified(model, candidate, ya)
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
                         "adt.attack.functions.pgd")

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


def autoattack_parts(net: nn.Module, *, epsilon: float, version: str = "standard",
                     num_classes: int = 10, steps: int = 100, targets: int = 9,
                     square_queries: int = 5000, seed: int = 0) -> list[Any]:
    """The torchattacks components of AutoAttack (Croce & Hein 2020), in cascade order.

    * ``"standard"``: APGD-CE, APGD-T, FAB-T (``targets`` target classes each, capped at
      ``num_classes - 1``) with ``steps`` iterations, then Square with ``square_queries``
      queries: with the defaults (100 iterations, 9 targets, 5000 queries, one restart
      each) the original "standard" AutoAttack; torchattacks' own ``AutoAttack`` class
      runs 10 iterations instead;
    * ``"gradient"``: the gradient-based part of "standard" (APGD-CE, APGD-T, FAB-T);
    * ``"cheap"``: APGD-CE and APGD-T only.
    """
    import torchattacks  # imported here: a slow import only the library attacks need

    n_targets = min(targets, num_classes - 1) + 1  # torchattacks: "n_classes" = targets + 1
    common = {"norm": "Linf", "eps": epsilon, "seed": seed, "n_restarts": 1}
    parts = [torchattacks.APGD(net, loss="ce", steps=steps, **common),
             torchattacks.APGDT(net, steps=steps, n_classes=n_targets, **common)]
    if version in ("standard", "gradient"):
        parts.append(torchattacks.FAB(net, steps=steps, multi_targeted=True,
                                      n_classes=n_targets, **common))
    if version == "standard":
        parts.append(torchattacks.Square(net, n_queries=square_queries, **common))
    return parts


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
               version: str = "standard", num_classes: int = 10, steps: int = 100,
               targets: int = 9, square_queries: int = 5000, seed: int = 0) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) from torchattacks' components
    (:func:`autoattack_parts`), run as a cascade: each attack only on the examples that
    survived the previous ones, the per-example worst case."""
    import torchattacks

    check_epsilon(epsilon)
    check_choice(version, AUTOATTACK_VERSIONS, "AutoAttack version")
    check_int_at_least(num_classes, 4, "num_classes (APGD-T's targeted DLR loss needs 4)", "10")
    check_int_at_least(steps, 1, "steps", "100 (the original AutoAttack)")
    check_int_at_least(targets, 1, "targets", "9 (the original AutoAttack)")
    check_int_at_least(square_queries, 1, "square_queries", "5000 (the original AutoAttack)")
    check_batch(x, y)

    def build(net: nn.Module) -> Any:
        return torchattacks.MultiAttack(autoattack_parts(
            net, epsilon=epsilon, version=version, num_classes=num_classes, steps=steps,
            targets=targets, square_queries=square_queries, seed=seed))

    return _run_library(build, model, x, y, epsilon)


def original_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        epsilon: float, seed: int = 0) -> torch.Tensor:
    """The AutoAttack authors' own code (``pyautoattack``, Croce & Hein 2020; the
    RobustBench standard), version "standard": APGD-CE, APGD-T (9 targets), FAB-T
    (9 targets) at 100 iterations, then Square at 5000 queries, each on the survivors of
    the ones before. The reference the profile's cheaper AutoAttack is measured against
    (:func:`adt.evaluation.stored.full_autoattack_survivors`); not a port."""
    import logging

    from pyautoattack import AutoAttack

    check_epsilon(epsilon)
    check_batch(x, y)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with preserved_modes(model), isolated_rng(x.device):
        model.eval()
        attack = AutoAttack(_FloatLogits(model), eps=epsilon, norm="Linf", version="standard",
                            seed=seed, device=x.device)
        x_adv, _ = attack.run_standard_evaluation(x.detach(), y, batch_size=len(x))
    return project(x_adv.detach().to(x.device, x.dtype), x.detach(), epsilon)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
           queries: int = 5000, seed: int = 0) -> torch.Tensor:
    """Square Attack (Andriushchenko et al. 2020), a score-based black-box attack: random
    square-shaped updates at the corners of the ball, accepted when they lower the margin
    loss; ``queries`` model evaluations per image at most (AutoAttack's: 5000). It uses no
    gradient, so it breaks what gradient masking hides."""
    import torchattacks

    check_epsilon(epsilon)
    check_int_at_least(queries, 1, "queries", "5000 (AutoAttack's Square)")
    check_batch(x, y)

    def build(net: nn.Module) -> Any:
        return torchattacks.Square(net, norm="Linf", eps=epsilon, n_queries=queries,
                                   n_restarts=1, seed=seed)

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
    check_batch(x, y)

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
        raise ValueError(f"attack={attack!r} is not callable; pass e.g. adt.attack.functions.pgd or "
                         "adt.attack.functions.mim")
    check_batch(x, y)
    source_device = device_of(source_model, x.device)
    with preserved_modes(source_model):
        source_model.eval()
        x_adv = attack(source_model, x.to(source_device), y.to(source_device), **settings)
    return x_adv.to(device_of(target_model, x.device))
