"""Which attacks a robustness table runs: the paper's protocol, sized by a profile.

:func:`white_box_attacks` gives the clean row and the rows of every attack of
:data:`adt.attack.catalogue.PROTOCOL` (each attack's record builds its own rows from the
profile's :class:`~adt.config.profiles.EvalSettings`), :func:`black_box_attacks` the
transfer rows and SPSA, :func:`standard_attacks` both: REPRODUCTION.md, "Evaluation
protocol". The rows are :class:`~adt.attack.spec.AttackSpec`s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from adt.attack.catalogue import AUTOATTACK, PROTOCOL, SPSA, AutoAttackSettings, row_caption
from adt.attack.functions import mim, original_autoattack, pgd
from adt.attack.spec import CLEAN, AttackSpec
from adt.config.profiles import EvalSettings
from adt.core._checks import check_epsilon

__all__ = ["autoattack_specs", "full_autoattack", "white_box_attacks", "a_rob_cascade",
           "black_box_attacks", "standard_attacks", "describe_protocol"]


def autoattack_specs(settings: EvalSettings | AutoAttackSettings, epsilon: float,
                     num_classes: int) -> tuple[AttackSpec, AttackSpec]:
    """AutoAttack as two rows (:data:`adt.attack.catalogue.AUTOATTACK`): its gradient
    attacks, then "AutoAttack": Square on that row's survivors, i.e. the whole cascade.
    With the defaults, the original "standard" AutoAttack."""
    gradient, cascade = AUTOATTACK.specs(settings, epsilon, num_classes)
    return gradient, cascade


def full_autoattack(epsilon: float, num_classes: int = 10) -> tuple[AttackSpec]:
    """The original "standard" AutoAttack, run by its authors' own code
    (:func:`~adt.attack.functions.original_autoattack`: APGD-CE, APGD-T, FAB-T at 100
    iterations and 9 targets, then Square at 5000 queries): the reference the quick
    profile's cheaper protocol is measured against. ``num_classes`` is the dataset's
    (pyautoattack targets min(9, classes - 1) classes itself)."""
    check_epsilon(epsilon)
    return (AttackSpec("Original AutoAttack (pyautoattack)", original_autoattack,
                       {"epsilon": epsilon}, float32=True),)


def white_box_attacks(settings: EvalSettings, epsilon: float, *,
                      num_classes: int = 10) -> list[AttackSpec]:
    """The paper's white-box rows: clean, then the rows of each attack of the protocol
    (:data:`adt.attack.catalogue.PROTOCOL`: FGSM, PGD-k for each k in
    ``settings.pgd_steps``, MIM, C&W, FeaAttack, AutoAttack's gradient attacks and its
    cascade with Square), each built from its own fields of ``settings``."""
    check_epsilon(epsilon)
    return [CLEAN, *(spec for attack in PROTOCOL
                     for spec in attack.specs(settings, epsilon, num_classes))]


def a_rob_cascade(settings: EvalSettings, epsilon: float, *,
                  num_classes: int = 10) -> list[AttackSpec]:
    """A_rob alone, as one cascade: the white-box rows of :func:`white_box_attacks`, the
    AutoAttack rows first (they break the most examples), each later row run only on the
    survivors of the row before it (FeaAttack, which draws its target images from the whole
    evaluated set, runs on every image). A_rob (the per-example worst case over every row,
    :meth:`RobustnessTable.worst_case`) is then that of the whole table, at the cost of
    attacking survivors only; the rows are not per-attack accuracies, and no sanity check
    is planned on them (the budget study)."""
    rows = white_box_attacks(settings, epsilon, num_classes=num_classes)
    clean, attacks = rows[0], rows[1:]
    autoattack = [s for s in attacks if s.name.startswith(("APGD", "AutoAttack"))]
    ordered = autoattack + [s for s in attacks if s not in autoattack]
    chain, previous = [clean], clean.name
    for spec in ordered:
        if spec.uses_pool:  # FeaAttack draws its targets from every evaluated image
            chain.append(spec)
            continue
        # AutoAttack's own cascade row runs on its gradient row's survivors already
        after = spec.survivors_of or previous
        chain.append(dataclasses.replace(spec, survivors_of=after))
        previous = spec.name
    return chain


def black_box_attacks(settings: EvalSettings, epsilon: float, *,
                      sources: Mapping[str, nn.Module] | None = None,
                      include_spsa: bool = True) -> list[AttackSpec]:
    """The paper's black-box rows: PGD (the profile's shortest) and MIM transferred from
    each model in ``sources`` (name -> model), and SPSA on the first
    ``settings.spsa_examples`` examples."""
    check_epsilon(epsilon)
    step = settings.step_fraction * epsilon
    k = min(settings.pgd_steps)
    specs = []
    for name, source in (sources or {}).items():
        specs += [
            AttackSpec(f"Transfer PGD-{k} from {name}", pgd, {
                "epsilon": epsilon, "step_size": step, "steps": k},
                kind="black", source=name, source_model=source),
            AttackSpec(f"Transfer MIM from {name}", mim, {
                "epsilon": epsilon, "step_size": step, "steps": settings.mim_steps},
                kind="black", source=name, source_model=source)]
    if include_spsa:
        specs += SPSA.specs(settings, epsilon)
    return specs


def standard_attacks(settings: EvalSettings, epsilon: float, *, num_classes: int = 10,
                     sources: Mapping[str, nn.Module] | None = None) -> list[AttackSpec]:
    """White-box rows, then black-box rows: the whole protocol."""
    return (white_box_attacks(settings, epsilon, num_classes=num_classes)
            + black_box_attacks(settings, epsilon, sources=sources))


def describe_protocol(specs: Sequence[Mapping[str, Any]], epsilon: float | None = None) -> str:
    """One sentence naming the attacks in A_rob with their steps, targets and queries, for
    a table's caption; ``specs`` are :meth:`AttackSpec.describe` dicts (a table's
    ``specs``)."""
    rows = [row_caption(s, epsilon) for s in specs if s["kind"] == "white"]
    return "A_rob: the per-example worst case over clean and " + "; ".join(rows)
