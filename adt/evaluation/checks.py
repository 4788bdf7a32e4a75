"""The settings of the checks against false robustness and their outcomes, as data:
:class:`SanityChecks` (what the checks compare, and the extra PGD runs they need) and
:class:`CheckResult` (one check's verdict and the numbers behind it). Both are stored in a
robustness table (:mod:`adt.evaluation.table`); the checks themselves are
:mod:`adt.evaluation.sanity`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from adt.attack.functions import pgd, with_restarts
from adt.attack.spec import AttackSpec, pgd_spec
from adt.config.profiles import EvalSettings
from adt.core._checks import check_epsilon, check_int_at_least, check_positive

__all__ = ["SanityChecks", "CheckResult"]


@dataclass(frozen=True)
class SanityChecks:
    """Settings of the checks against false robustness (see the module docstring).

    PGD runs use ``step_fraction * epsilon`` steps; ``steps`` = (few, many) for check
    (a); ``restarts`` restarts of PGD-few for (a); PGD-``large_steps`` at
    ``large_epsilon`` must leave at most ``max_large_accuracy`` for (b); ``z`` and
    ``tolerance`` set the noise band of the pairwise comparisons.
    """

    epsilon: float
    step_fraction: float = 0.25
    steps: tuple[int, int] = (20, 100)
    restarts: int = 5
    large_epsilon: float = 0.5
    large_steps: int = 20
    max_large_accuracy: float = 0.05
    tolerance: float = 0.01
    z: float = 3.0
    max_score_only: float = 0.01
    max_autoattack_gap: float = 0.05

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon, "sanity epsilon")
        check_positive(self.step_fraction, "sanity step_fraction", "0.25")
        if len(self.steps) != 2 or self.steps[0] > self.steps[1]:
            raise ValueError(f"sanity steps={self.steps!r} must be (few, many) with few <= many, "
                             "e.g. (20, 100)")
        for steps in self.steps:
            check_int_at_least(steps, 1, "sanity steps", "(20, 100)")
        check_int_at_least(self.restarts, 1, "sanity restarts", "5")
        check_epsilon(self.large_epsilon, "large_epsilon")
        if self.large_epsilon <= self.epsilon:
            raise ValueError(f"large_epsilon={self.large_epsilon} must exceed epsilon="
                             f"{self.epsilon}; use e.g. 0.5 (any image can be made grey)")
        check_int_at_least(self.large_steps, 1, "large_steps", "20")
        if not 0.0 <= self.max_large_accuracy < 1.0:
            raise ValueError(f"max_large_accuracy={self.max_large_accuracy} must be in [0, 1); "
                             "use e.g. 0.05")
        for what, value in (("max_score_only", self.max_score_only),
                            ("max_autoattack_gap", self.max_autoattack_gap)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{what}={value} must be in [0, 1); use e.g. 0.01 or 0.05")
        if self.tolerance < 0 or self.z < 0:
            raise ValueError(f"tolerance={self.tolerance} and z={self.z} must be >= 0; use e.g. "
                             "0.01 and 3")

    @classmethod
    def from_settings(cls, settings: EvalSettings, epsilon: float) -> SanityChecks:
        """The checks for a profile: its PGD steps (shortest, longest), step size and
        ``sanity_restarts``; the large-epsilon PGD takes max(10, shortest) steps."""
        few, many = min(settings.pgd_steps), max(settings.pgd_steps)
        return cls(epsilon=epsilon, step_fraction=settings.step_fraction, steps=(few, many),
                   restarts=settings.sanity_restarts, large_steps=max(10, few))

    @classmethod
    def from_dict(cls, blob: dict[str, Any]) -> SanityChecks:
        return cls(**{**blob, "steps": tuple(blob["steps"])})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def specs(self) -> dict[str, AttackSpec]:
        """The runs the checks need, by role (rows of the table are reused when equal)."""
        few, many = self.steps
        base = pgd_spec(f"PGD-{few}", self.epsilon, self.step_fraction, few, kind="sanity")
        return {
            "few": base,
            "many": pgd_spec(f"PGD-{many}", self.epsilon, self.step_fraction, many,
                             kind="sanity"),
            "restarts": dataclasses.replace(base, name=f"PGD-{few} x{self.restarts} restarts",
                                            attack=with_restarts(pgd, self.restarts)),
            "large": pgd_spec(f"PGD-{self.large_steps} at eps={self.large_epsilon:g}",
                              self.large_epsilon, self.step_fraction, self.large_steps,
                              kind="sanity"),
        }


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``status`` is "passed", "failed" or "skipped"; ``values``
    holds the numbers it was decided on."""

    name: str
    status: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message,
                **self.values}

    @classmethod
    def from_dict(cls, blob: dict[str, Any]) -> CheckResult:
        keys = ("name", "status", "message")
        return cls(*(blob[k] for k in keys), {k: v for k, v in blob.items() if k not in keys})

    def __str__(self) -> str:
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in self.values.items())
        return f"{self.name} ({self.message}: {values})"
