"""Which attacks a robustness table runs: :class:`AttackSpec` rows and the paper's protocol.

A spec is one row: an attack function with its settings, its kind ("clean", "white"
rows enter A_rob, "black" rows are reported apart, "sanity" rows serve the checks of
:mod:`adt.evaluation.sanity`), and, for a transfer attack, the source model it is crafted on
(``source_model``, named ``source``). :func:`white_box_attacks`,
:func:`black_box_attacks` and :func:`standard_attacks` build the protocol of
REPRODUCTION.md, "Evaluation protocol", sized by a profile's
:class:`~adt.config.profiles.EvalSettings`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adt.config.profiles import EvalSettings
from adt.core._checks import check_epsilon, check_int_at_least
from adt.evaluation.attacks import (
    Attack,
    autoattack,
    cw,
    fea_attack,
    fgsm,
    mim,
    pgd,
    spsa,
    square,
    transfer,
)

__all__ = ["AttackSpec", "CLEAN", "KINDS", "pgd_spec", "autoattack_specs", "full_autoattack",
           "white_box_attacks", "black_box_attacks", "standard_attacks", "plain",
           "describe_protocol"]

KINDS = ("clean", "white", "black", "sanity")


def _callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    return getattr(fn, "__name__", type(fn).__name__)


def plain(value: Any) -> Any:
    """A JSON-able description of a setting (functions and models by name)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, nn.Module):
        return type(value).__name__
    if callable(value):
        return _callable_name(value)
    return repr(value)


@dataclass(frozen=True)
class AttackSpec:
    """One row of the table: ``attack(model, x, y, **settings)`` (None: the clean input).

    ``kind`` is "clean", "white" (enters A_rob), "black" (transfer, SPSA; reported
    apart) or "sanity" (extra runs of the sanity checks). Black-box rows may run on the
    first ``n_examples`` only (SPSA is expensive); ``float32`` crafts without autocast;
    a transfer row crafts ``attack`` on ``source_model`` (named ``source``) and scores
    the result on the evaluated model; ``uses_pool`` passes the whole evaluated set as
    ``target_pool`` (FeaAttack's target images: one batch may hold a single class).
    ``survivors_of`` names an earlier row: the attack runs only on the examples that row
    left correct, and the row holds the cascade's result (that row AND this attack), as
    AutoAttack runs Square after its gradient attacks. ``score_based`` marks attacks that
    use no gradients (Square, SPSA), which the masking checks compare with the others.
    """

    name: str
    attack: Attack | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "white"
    n_examples: int | None = None
    float32: bool = False
    source: str | None = None
    source_model: nn.Module | None = None
    uses_pool: bool = False
    survivors_of: str | None = None
    score_based: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"AttackSpec name={self.name!r} must be a non-empty string, e.g. "
                             "'PGD-20'")
        if self.kind not in KINDS:
            raise ValueError(f"AttackSpec {self.name!r}: kind={self.kind!r}; allowed: "
                             f"{', '.join(KINDS)}")
        if (self.attack is None) != (self.kind == "clean"):
            raise ValueError(f"AttackSpec {self.name!r}: kind 'clean' goes with attack=None and "
                             "every other kind needs an attack function; use CLEAN for the "
                             "clean row")
        if self.attack is not None and not callable(self.attack):
            raise ValueError(f"AttackSpec {self.name!r}: attack={self.attack!r} is not callable; "
                             "pass a function such as adt.evaluation.attacks.pgd")
        if self.source_model is not None and (self.source is None or self.kind != "black"):
            raise ValueError(f"AttackSpec {self.name!r}: a transfer row (source_model given) is "
                             "of kind 'black' and names its source; pass kind='black', "
                             "source='...'")
        if self.survivors_of is not None and self.n_examples is not None:
            raise ValueError(f"AttackSpec {self.name!r}: a cascade row (survivors_of) covers "
                             "the examples of its earlier row; drop n_examples")
        if self.n_examples is not None:
            check_int_at_least(self.n_examples, 1, f"n_examples of {self.name!r}", "1000")
            if self.kind in ("clean", "white"):
                raise ValueError(f"AttackSpec {self.name!r}: a {self.kind} row enters A_rob, so "
                                 "it must cover every example; drop n_examples (only black-box "
                                 "rows may use a subset)")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 **extra: Any) -> torch.Tensor:
        if self.attack is None:
            return x
        if self.source_model is not None:
            return transfer(self.source_model, model, x, y, attack=self.attack,
                            **self.settings, **extra)
        return self.attack(model, x, y, **self.settings, **extra)

    def describe(self) -> dict[str, Any]:
        """The row's settings as plain JSON (written to eval.json). A transfer row is
        described as the attack ``transfer`` whose ``attack`` setting is the crafting one."""
        attack, settings = self.attack, dict(self.settings)
        if self.source_model is not None:
            attack, settings = transfer, {"attack": self.attack, **settings}
        return {"name": self.name, "kind": self.kind,
                "attack": None if attack is None else _callable_name(attack),
                "settings": {k: plain(v) for k, v in settings.items()},
                "n_examples": self.n_examples, "float32": self.float32, "source": self.source,
                "uses_pool": self.uses_pool, "survivors_of": self.survivors_of,
                "score_based": self.score_based}

    def same_run(self, other: AttackSpec) -> bool:
        """Whether the two specs run the same attack on the same examples."""
        return (self.attack is other.attack and dict(self.settings) == dict(other.settings)
                and self.source_model is other.source_model
                and self.n_examples == other.n_examples and self.float32 == other.float32
                and self.uses_pool == other.uses_pool and self.survivors_of == other.survivors_of)


CLEAN = AttackSpec("Clean", None, kind="clean")


def pgd_spec(name: str, epsilon: float, step_fraction: float, steps: int,
             kind: str = "white") -> AttackSpec:
    """PGD-``steps`` with steps of ``step_fraction * epsilon`` from a uniform random start."""
    return AttackSpec(name, pgd, {"epsilon": epsilon, "step_size": step_fraction * epsilon,
                                  "steps": steps, "random_start": True}, kind=kind)


def autoattack_specs(settings: EvalSettings, epsilon: float,
                     num_classes: int) -> tuple[AttackSpec, AttackSpec]:
    """AutoAttack as two rows: its gradient attacks (APGD-CE, APGD-T with
    ``settings.autoattack_targets`` targets, and FAB-T for "standard", each with
    ``settings.autoattack_steps`` iterations), then "AutoAttack": Square with
    ``settings.square_queries`` queries on that row's survivors, i.e. the whole cascade.
    With the defaults, the original "standard" AutoAttack."""
    version = "gradient" if settings.autoattack == "standard" else "cheap"
    name = "APGD-CE+T+FAB-T" if version == "gradient" else "APGD-CE+T"
    gradient = AttackSpec(name, autoattack, {
        "epsilon": epsilon, "version": version, "num_classes": num_classes,
        "steps": settings.autoattack_steps,
        "targets": min(settings.autoattack_targets, num_classes - 1)})
    cascade = AttackSpec("AutoAttack", square, {"epsilon": epsilon,
                                                "queries": settings.square_queries},
                         survivors_of=name, score_based=True)
    return gradient, cascade


def full_autoattack(epsilon: float, num_classes: int) -> tuple[AttackSpec, AttackSpec]:
    """The original "standard" AutoAttack at 100 iterations, 9 targets and 5000 queries
    (the reference the quick profile's cheaper protocol is measured against)."""
    return autoattack_specs(EvalSettings(), epsilon, num_classes)


def white_box_attacks(settings: EvalSettings, epsilon: float, *,
                      num_classes: int = 10) -> list[AttackSpec]:
    """The paper's white-box rows: clean, FGSM, PGD-k for each k in ``settings.pgd_steps``
    (20 and 100), MIM, C&W, FeaAttack, AutoAttack (:func:`autoattack_specs`: its gradient
    attacks, then the cascade with Square); step sizes are fractions of
    ``epsilon`` (``settings.step_fraction``, ``settings.fea_step_fraction``)."""
    check_epsilon(epsilon)
    step = settings.step_fraction * epsilon
    return [
        CLEAN,
        AttackSpec("FGSM", fgsm, {"epsilon": epsilon}),
        *(pgd_spec(f"PGD-{k}", epsilon, settings.step_fraction, k) for k in settings.pgd_steps),
        AttackSpec("MIM", mim, {"epsilon": epsilon, "step_size": step,
                                "steps": settings.mim_steps, "decay": 1.0}),
        AttackSpec("C&W", cw, {"epsilon": epsilon, "step_size": step, "steps": settings.cw_steps,
                               "kappa": settings.cw_kappa}),
        AttackSpec("FeaAttack", fea_attack, {
            "epsilon": epsilon, "step_size": settings.fea_step_fraction * epsilon,
            "steps": settings.fea_steps, "targets": settings.fea_targets}, uses_pool=True),
        *autoattack_specs(settings, epsilon, num_classes),
    ]


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
        specs.append(AttackSpec("SPSA", spsa, {
            "epsilon": epsilon, "lr": settings.spsa_lr, "delta": settings.spsa_delta,
            "iterations": settings.spsa_iterations, "samples": settings.spsa_samples},
            kind="black", n_examples=settings.spsa_examples, float32=True, score_based=True))
    return specs


def standard_attacks(settings: EvalSettings, epsilon: float, *, num_classes: int = 10,
                     sources: Mapping[str, nn.Module] | None = None) -> list[AttackSpec]:
    """White-box rows, then black-box rows: the whole protocol."""
    return (white_box_attacks(settings, epsilon, num_classes=num_classes)
            + black_box_attacks(settings, epsilon, sources=sources))


def _row_text(spec: Mapping[str, Any], epsilon: float | None) -> str:
    s, name = spec["settings"], spec["name"]

    def step(key: str = "step_size") -> str:
        return f"{s[key] / epsilon:.3g} eps" if epsilon else f"{s[key]:.3g}"

    texts = {
        "fgsm": lambda: f"{name} (one step of eps)",
        "pgd": lambda: f"{name} ({s.get('steps')} steps of {step()}, random start)",
        "mim": lambda: f"{name} ({s.get('steps')} steps of {step()}, decay {s.get('decay')})",
        "cw": lambda: f"{name} ({s.get('steps')} steps of {step()}, kappa {s.get('kappa'):g})",
        "fea_attack": lambda: (f"{name} ({s.get('targets')} targets x {s.get('steps')} steps "
                               f"of {step()}, cosine distance)"),
        "autoattack": lambda: (f"{name} ({s.get('steps')} iterations, {s.get('targets')} "
                               "targets)"),
        "square": lambda: (f"{name} = {spec.get('survivors_of')} then Square "
                           f"({s.get('queries')} queries) on its survivors"
                           if spec.get("survivors_of") else
                           f"{name} (Square, {s.get('queries')} queries)"),
    }
    return texts.get(spec["attack"], lambda: name)()


def describe_protocol(specs: Sequence[Mapping[str, Any]], epsilon: float | None = None) -> str:
    """One sentence naming the attacks in A_rob with their steps, targets and queries, for
    a table's caption; ``specs`` are :meth:`AttackSpec.describe` dicts (a table's
    ``specs``)."""
    rows = [_row_text(s, epsilon) for s in specs if s["kind"] == "white"]
    return "A_rob: the per-example worst case over clean and " + "; ".join(rows)
