"""Where and how tensors run: device resolution, module modes, random streams, autocast.

Shared by training, attacks, evaluation and analysis, so each of these ideas is
written once:

* :func:`resolve_device` and :func:`device_of` (which device a call or a model uses);
* :func:`preserved_modes` and :func:`eval_mode` (train/eval flags restored on exit);
* :func:`isolated_rng` (a block on its own random stream, the global one untouched);
* :func:`autocast` (bf16 on CUDA, nothing on the CPU);
* :func:`per_example` (a ``(B,)`` vector broadcast against a ``(B, ...)`` batch);
* :func:`one_thread_worker` (the initializer of the batch's one-thread worker processes).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["resolve_device", "device_of", "preserved_modes", "eval_mode", "isolated_rng",
           "autocast", "per_example", "one_thread_worker"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) means CUDA when available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine; "
                         "use device='cpu' (or 'auto')")
    return device


def device_of(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter or buffer (``default`` if it has none)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device(default) if tensor is None else tensor.device


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
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model.eval()``, restoring every submodule's mode afterwards."""
    with preserved_modes(model):
        yield model.eval()


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


def autocast(device: torch.device | str, enabled: bool = True
             ) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled``; on CUDA with ``enabled=False`` autocast is
    switched off explicitly (a float32 region inside an autocast region stays float32);
    nothing on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)
    return contextlib.nullcontext()


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` vector reshaped to ``(B, 1, ..., 1)`` to broadcast against ``like``
    of shape ``(B, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def one_thread_worker() -> None:
    """Initializer of a one-thread worker process (``adt.prepare``, ``adt.budget_study``):
    one intra-op thread, so that as many workers as cores share the CPU; warnings off, since
    the notebooks show the checks as data."""
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
