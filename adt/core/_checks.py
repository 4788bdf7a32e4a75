"""Argument checks shared by attacks, maximisers and profiles: one message style everywhere.

Numbers may be Python, numpy or 0-d torch scalars (``np.float32(0.3)``, ``np.int64(2)``,
``torch.tensor(0.5)``); booleans are never numbers here. Real values must be finite.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_epsilon", "check_positive", "check_nonnegative", "check_fraction",
           "check_int_at_least", "check_choice", "as_real", "as_int"]


def _scalar(value: Any) -> Any:
    """A 0-d array or tensor (numpy, torch) as its Python number; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def as_real(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number (bools are
    not numbers here)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_int(value: Any) -> int | None:
    """``value`` as an int, or None when it is not an integer (bools are not integers)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_epsilon(epsilon: float, what: str = "epsilon") -> float:
    """An l_inf radius for images in [0, 1]: 0 < epsilon <= 1."""
    value = as_real(epsilon)
    if value is None or not 0.0 < value <= 1.0:
        raise ValueError(f"{what}={epsilon!r} is outside (0, 1]: images live in [0, 1], so use "
                         "e.g. 8/255 for CIFAR-10 or 0.3 for MNIST")
    return value


def check_positive(value: float, what: str, example: str) -> float:
    """A finite real number > 0."""
    real = as_real(value)
    if real is None or not real > 0:
        raise ValueError(f"{what}={value!r} must be > 0 and finite; use e.g. {example}")
    return real


def check_nonnegative(value: float, what: str, example: str) -> float:
    """A finite real number >= 0."""
    real = as_real(value)
    if real is None or not real >= 0:
        raise ValueError(f"{what}={value!r} must be >= 0 and finite; use e.g. {example}")
    return real


def check_fraction(value: float, what: str, example: str) -> float:
    """A finite real number in [0, 1) (a momentum, a decay)."""
    real = as_real(value)
    if real is None or not 0.0 <= real < 1.0:
        raise ValueError(f"{what}={value!r} must be a number in [0, 1); use e.g. {example}")
    return real


def check_int_at_least(value: int, minimum: int, what: str, example: str) -> int:
    """An integer (Python, numpy or 0-d torch; not a bool) >= ``minimum``."""
    integer = as_int(value)
    if integer is None or integer < minimum:
        raise ValueError(f"{what}={value!r} must be an integer >= {minimum}; use e.g. {example}")
    return integer


def check_choice(value: str, allowed: object, what: str) -> str:
    if value not in allowed:  # type: ignore[operator]
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value
