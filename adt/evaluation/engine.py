"""The evaluation engine: attacks any classifier with a protocol and fills its
robustness table.

:func:`robustness_table` runs a list of :class:`~adt.attack.spec.AttackSpec` on the
first ``n`` test examples (eval mode, batched, on the model's device, bf16 autocast on
CUDA), plus the extra runs of the sanity checks (:mod:`adt.evaluation.sanity`), and returns
a :class:`~adt.evaluation.table.RobustnessTable` whose per-example correctness matrix every
number is recomputed from. A failed check is a warning
(:class:`~adt.evaluation.sanity.GradientMaskingWarning`), a ``flags`` entry in the table,
or an error with ``strict=True``. :func:`pgd_accuracy` gives the points of the accuracy
curves. Stored tables of trained runs: :mod:`adt.evaluation.stored`; checkpoint files:
:mod:`adt.evaluation.cli`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from adt.attack.spec import CLEAN, AttackSpec, pgd_spec
from adt.core._checks import check_batch, check_int_at_least
from adt.core.data import ImageDataset, to_float
from adt.core.primitives import correct_predictions
from adt.core.runtime import autocast as bf16_autocast
from adt.core.runtime import device_of, isolated_rng, preserved_modes
from adt.evaluation.checks import SanityChecks
from adt.evaluation.sanity import report, run_checks
from adt.evaluation.table import RobustnessTable

__all__ = ["robustness_table", "pgd_accuracy", "check_deterministic", "RandomizedModelError",
           "evaluation_examples"]


def evaluation_examples(data: ImageDataset | tuple[torch.Tensor, torch.Tensor], n: int | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (floats in [0, 1]) and labels, on ``device``."""
    if isinstance(data, ImageDataset):
        x, y = data.x_test, data.y_test
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    else:
        raise ValueError(f"data must be an ImageDataset or a pair (x, y) of tensors, got "
                         f"{type(data).__name__}; e.g. adt.load_dataset('mnist5k')")
    if n is not None:
        check_int_at_least(n, 1, "n_examples", "1000")
        if n > len(x):
            raise ValueError(f"n_examples={n} but only {len(x)} test examples are available; "
                             f"pass n_examples <= {len(x)} (or None for all)")
    x, y = x[:n].to(device), y[:n].to(device)
    if len(x) == 0:
        raise ValueError("data holds no test examples; pass a dataset with a test split")
    x = to_float(x) if x.dtype == torch.uint8 else x
    check_batch(x, y)  # finite floats in [0, 1], one label each (one host sync)
    return x, y


def _checked_specs(attacks: Sequence[AttackSpec]) -> list[AttackSpec]:
    """The rows to evaluate: the clean row first (added when missing), unique names."""
    attacks = list(attacks)
    if not attacks or not all(isinstance(a, AttackSpec) for a in attacks):
        raise ValueError("attacks must be a non-empty list of AttackSpec; build one with "
                         "adt.evaluation.protocol.standard_attacks(profile.eval, epsilon)")
    names = [a.name for a in attacks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"attack names must be unique, {duplicated} repeat; rename the rows")
    if not any(a.kind == "clean" for a in attacks):
        attacks.insert(0, CLEAN)
    for i, a in enumerate(attacks):
        if a.survivors_of is not None and a.survivors_of not in names[:i]:
            raise ValueError(f"AttackSpec {a.name!r} runs on the survivors of "
                             f"{a.survivors_of!r}, which is not an earlier row; put that row "
                             "first")
    return attacks


class RandomizedModelError(ValueError):
    """The model's outputs differ between two identical calls (random transforms, dropout
    left on): white-box attacks would report a robustness it does not have."""


def check_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`RandomizedModelError` when two identical calls of ``model`` on ``x``
    disagree (one host sync)."""
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    gap = (first - second).abs().amax()
    if float(gap) > 1e-4 * (1.0 + float(first.abs().amax())):
        raise RandomizedModelError(
            f"the model's logits differ by up to {float(gap):.3g} between two identical calls "
            "in eval mode: it is randomised (random input transforms, or dropout left on). "
            "Gradient attacks on one draw overstate the robustness of such a model, so no "
            "robust accuracy is reported. Make it deterministic for evaluation, or attack it "
            "with expectation over transformation (average the gradients over many draws, "
            "Athalye et al. 2018) with your own AttackSpec.")


def _default_sanity(specs: Sequence[AttackSpec]) -> SanityChecks:
    """SanityChecks at the (single) epsilon of the white-box rows."""
    eps = {s.settings.get("epsilon") for s in specs if s.kind == "white"} - {None}
    if len(eps) != 1:
        raise ValueError(f"sanity=True needs one epsilon among the white-box rows, found "
                         f"{sorted(eps) or 'none'}; pass sanity=SanityChecks(epsilon=...) or "
                         "sanity=False")
    return SanityChecks(epsilon=eps.pop())


def _plan_sanity(checks: SanityChecks, specs: list[AttackSpec]
                 ) -> tuple[list[AttackSpec], dict[str, str]]:
    """Extra rows the checks need (rows already in the table are reused) and the name of
    the row playing each role."""
    extra, roles = [], {}
    for role, wanted in checks.specs().items():
        same = next((s for s in specs + extra if s.same_run(wanted)), None)
        if same is None:
            taken = {s.name for s in specs + extra}
            same = wanted if wanted.name not in taken else dataclasses.replace(
                wanted, name=f"{wanted.name} (sanity)")
            extra.append(same)
        roles[role] = same.name
    return extra, roles


def _evaluate_row(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int, autocast: bool, progress: bool = False) -> torch.Tensor:
    """Per-example correctness under one attack; its outputs are checked against the
    epsilon ball and [0, 1] (one host sync per row). With ``progress``, a bar counts the
    row's attacked images batch by batch (a long AutoAttack or Square row moves)."""
    device = x.device
    n = len(x) if spec.n_examples is None else min(spec.n_examples, len(x))
    eps = spec.settings.get("epsilon", 0.0 if spec.attack is None else math.inf)
    excess = [torch.zeros((), device=device)]
    pool = {"target_pool": (x, y)} if spec.uses_pool else {}

    bar = tqdm(total=n, desc=spec.name, unit="image", leave=False,
               disable=not progress or spec.attack is None)

    def attacked(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with bf16_autocast(device, autocast and not spec.float32):
            x_adv = spec(model, xb, yb, **pool)
        excess[0] = torch.maximum(excess[0], torch.stack([
            ((x_adv - xb).abs() - eps).amax(), -x_adv.amin(), x_adv.amax() - 1]).amax())
        bar.update(len(xb))
        return x_adv

    with bar:
        correct = correct_predictions(model, x[:n], y[:n], batch_size=batch_size,
                                      perturb=attacked,
                                      autocast=functools.partial(bf16_autocast, device, autocast))
    if float(excess[0]) > 1e-5:
        raise RuntimeError(f"attack {spec.name!r} returned images outside the epsilon={eps} ball "
                           f"or [0, 1] (by {float(excess[0]):.3g}); fix the attack function")
    return correct


def robustness_table(model: nn.Module, data: ImageDataset | tuple[torch.Tensor, torch.Tensor],
                     attacks: Sequence[AttackSpec], n_examples: int | None = None, *,
                     batch_size: int = 200, sanity: SanityChecks | bool = True,
                     strict: bool = False, autocast: bool = True, seed: int = 0,
                     progress: bool = False) -> RobustnessTable:
    """Accuracy of ``model`` under each attack on the first ``n_examples`` test examples
    of ``data`` (an ImageDataset, or a pair (x, y) with images in [0, 1] or uint8), A_rob,
    and the sanity checks (``sanity=False`` skips them; True uses
    ``SanityChecks(epsilon)`` at the white-box rows' epsilon).

    The model runs in eval mode (every module's mode is restored afterwards), on its own
    device, in batches of about ``batch_size``, under bf16 autocast on CUDA when
    ``autocast``. The global RNG is reseeded with ``seed`` inside and restored after, so a
    table is reproducible and leaves no trace. A failed sanity check warns
    (:class:`~adt.evaluation.sanity.GradientMaskingWarning`) or, with ``strict``, raises
    :class:`~adt.evaluation.sanity.GradientMaskingError`. With ``progress``, one bar counts
    the rows and another the images of the row running.
    """
    specs = _checked_specs(attacks)
    check_int_at_least(batch_size, 1, "batch_size", "200")
    device = device_of(model)
    x, y = evaluation_examples(data, n_examples, device)
    checks = (_default_sanity(specs) if sanity is True else sanity) if sanity else None
    roles: dict[str, str] = {}
    if checks is not None:
        extra, roles = _plan_sanity(checks, specs)
        specs = specs + extra
    correct = torch.zeros(len(specs), len(x), dtype=torch.bool)
    n_evaluated, seconds = [], []
    with preserved_modes(model), isolated_rng(device, seed):
        model.eval()
        check_deterministic(model, x[:batch_size])
        for i, spec in enumerate(tqdm(specs, desc="attacks", disable=not progress)):
            started = time.perf_counter()
            if spec.survivors_of is None:
                row = _evaluate_row(model, spec, x, y, batch_size, autocast, progress).cpu()
            else:  # a cascade: the earlier row AND this attack on that row's survivors
                row = correct[[s.name for s in specs].index(spec.survivors_of)].clone()
                alive = row.nonzero().squeeze(1)
                if len(alive):
                    index = alive.to(device)
                    row[alive] = _evaluate_row(model, spec, x[index], y[index], batch_size,
                                               autocast, progress).cpu()
            correct[i, :len(row)] = row
            n_evaluated.append(len(row))
            seconds.append(time.perf_counter() - started)
    epsilons = {s.settings.get("epsilon") for s in specs if s.kind == "white"} - {None}
    table = RobustnessTable(
        [s.describe() for s in specs], correct, n_evaluated, seconds, sanity=checks, roles=roles,
        meta={"epsilon": epsilons.pop() if len(epsilons) == 1 else None,
              "model": type(model).__name__, "device": str(device),
              "autocast": autocast and device.type == "cuda", "batch_size": batch_size,
              "seed": seed, "torch": torch.__version__,
              "examples": f"the first {len(x)} test examples"})
    table.checks = run_checks(table)
    report(table, strict)
    return table


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 step_size: float, steps: int, batch_size: int = 500, autocast: bool = True,
                 seed: int = 0) -> float:
    """Accuracy of ``model`` (in eval mode, modes restored) under PGD with these settings;
    the points of the accuracy-vs-epsilon and accuracy-vs-steps curves."""
    device = device_of(model)
    check_batch(x, y)
    spec = pgd_spec("PGD", epsilon, step_size / epsilon, steps)
    with preserved_modes(model), isolated_rng(device, seed):
        model.eval()
        correct = _evaluate_row(model, spec, x.to(device), y.to(device), batch_size, autocast)
    return float(correct.float().mean())
