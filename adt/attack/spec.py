"""One row of a robustness table: an attack function with its settings (:class:`AttackSpec`).

A spec is one row: an attack function with its settings, its kind ("clean", "white"
rows enter A_rob, "black" rows are reported apart, "sanity" rows serve the checks of
:mod:`adt.evaluation.sanity`), and, for a transfer attack, the source model it is
crafted on (``source_model``, named ``source``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adt.attack.functions import Attack, pgd, transfer
from adt.core._checks import check_int_at_least

__all__ = ["AttackSpec", "CLEAN", "KINDS", "pgd_spec", "plain", "callable_name"]

KINDS = ("clean", "white", "black", "sanity")


def callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return callable_name(fn.func)
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
        return callable_name(value)
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
                             "pass a function such as adt.attack.functions.pgd")
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
                "attack": None if attack is None else callable_name(attack),
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
