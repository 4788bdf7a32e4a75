"""Argument checks shared by attacks, maximisers and profiles: one message style everywhere."""

from __future__ import annotations

__all__ = ["check_epsilon", "check_positive", "check_int_at_least", "check_choice"]


def check_epsilon(epsilon: float, what: str = "epsilon") -> float:
    """An l_inf radius for images in [0, 1]: 0 < epsilon <= 1."""
    if not isinstance(epsilon, int | float) or not 0.0 < epsilon <= 1.0:
        raise ValueError(f"{what}={epsilon!r} is outside (0, 1]: images live in [0, 1], so use "
                         "e.g. 8/255 for CIFAR-10 or 0.3 for MNIST")
    return float(epsilon)


def check_positive(value: float, what: str, example: str) -> float:
    if not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{what}={value!r} must be > 0; use e.g. {example}")
    return float(value)


def check_int_at_least(value: int, minimum: int, what: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what}={value!r} must be an integer >= {minimum}; use e.g. {example}")
    return value


def check_choice(value: str, allowed: object, what: str) -> str:
    if value not in allowed:  # type: ignore[operator]
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value
