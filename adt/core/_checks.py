"""Argument checks shared by attacks, maximisers and profiles: one message style everywhere.

Numbers may be Python, numpy or 0-d torch scalars (``np.float32(0.3)``, ``np.int64(2)``,
``torch.tensor(0.5)``); booleans are never numbers here. Real values must be finite.

:func:`check_batch` is the one input contract of images and labels: the attacks, the
evaluation engine, the inner maximisers and ``adt.train_step`` all call it. torch is
imported when it is first called, so this module stays light.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["check_epsilon", "check_positive", "check_nonnegative", "check_fraction",
           "check_int_at_least", "check_choice", "as_real", "as_int", "check_batch",
           "first_float_weight"]


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


# ----------------------------------------------------------------------------- image batches

def _described(value: Any) -> str:
    """``value`` as its type, dtype and shape, for a message."""
    shape = tuple(getattr(value, "shape", ()))
    return f"{type(value).__name__} {getattr(value, 'dtype', '')} {shape}".replace("  ", " ")


def _check_images(x: Any) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a float tensor of images (B, C, H, W) in [0, 1], got "
                         f"{_described(x)}; convert uint8 images with x.float() / 255")


def _check_labels(x: torch.Tensor, y: Any) -> None:
    import torch

    if (not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x)
            or y.dtype not in (torch.int64, torch.uint8)):
        raise ValueError(f"y must hold one integer label per image ({len(x)}) as int64, got "
                         f"{_described(y)}; pass y as a LongTensor of shape (B,) (y.long())")


def _check_shape(x: torch.Tensor, image_shape: Sequence[int | None], owner: str) -> None:
    """``x`` is (B, *image_shape), None matching any size."""
    expected = tuple(image_shape)
    got = tuple(x.shape[1:])
    if len(got) == len(expected) and all(e is None or e == g
                                         for e, g in zip(expected, got, strict=True)):
        return
    wanted = ", ".join("*" if e is None else str(e) for e in expected)
    raise ValueError(f"x has shape {tuple(x.shape)} but {owner} expects images of shape "
                     f"(B, {wanted}); pass such images, or build it for images of shape {got}")


def first_float_weight(module: nn.Module) -> torch.Tensor | None:
    """The module's first floating parameter or buffer (None without one): where and in
    which dtype a classifier computes."""
    return next((t for t in itertools.chain(module.parameters(), module.buffers())
                 if t.is_floating_point()), None)


def _check_placement(x: torch.Tensor, model: nn.Module) -> None:
    """``x`` on the classifier's device, and of its floating dtype unless autocast is on."""
    import torch

    weight = first_float_weight(model)
    if weight is None:
        return
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the classifier on {weight.device}; move the "
                         f"batch there: x.to({str(weight.device)!r}), y.to(...)")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"x is {x.dtype} but the classifier's weights are {weight.dtype}; pass "
                         f"x.to({weight.dtype}) (or convert the model: model.to({x.dtype}))")


def _check_range(x: torch.Tensor) -> None:
    """Finite values in [0, 1], read with one host sync (NaN propagates through aminmax, so a
    NaN or inf fails the same comparison)."""
    import torch

    if not x.numel():
        return
    low, high = torch.aminmax(x.detach())
    if bool((low >= 0) & (high <= 1)):
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(f"x holds {int((~finite).sum())} non-finite values (NaN or inf) of "
                         f"{x.numel()}: images must be finite floats in [0, 1]; find where "
                         "the NaN comes from (a division by zero, a diverged model) and "
                         "drop or fix those images")
    raise ValueError(f"x has values in [{low.item():.3g}, {high.item():.3g}], outside [0, 1]: "
                     "images must be floats in [0, 1] (divide images in [0, 255] by 255) and "
                     "any normalisation (mean, std) belongs inside the model")


def check_batch(x: torch.Tensor, y: torch.Tensor, *,
                image_shape: Sequence[int | None] | None = None, owner: str = "the model",
                model: nn.Module | None = None) -> None:
    """The input contract of every attack, maximiser and table: ``x`` a float tensor of
    images (B, ...) with finite values in [0, 1], ``y`` B int64 labels; with
    ``image_shape``, ``x`` is (B, *image_shape) (None: any size), as ``owner`` was built
    for; with ``model``, ``x`` is on the classifier's device and of its dtype (any dtype
    under autocast). Raises ValueError saying what to do. One host sync, for the range;
    call it once per batch, never inside a loop over steps."""
    _check_images(x)
    _check_labels(x, y)
    if image_shape is not None:
        _check_shape(x, image_shape, owner)
    if model is not None:
        _check_placement(x, model)
    _check_range(x)
