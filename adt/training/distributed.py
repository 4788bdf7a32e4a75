"""Data-parallel training (DDP) under ``torchrun``: the process group, the shards, the
random draws, and the gradient scales that make N processes take the step one process
takes on the same global batch.

* :func:`init_from_env` reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (set by
  ``torchrun``), checks them and joins the process group (NCCL on CUDA, gloo on the CPU);
  the device follows ``LOCAL_RANK``. Without ``WORLD_SIZE`` it is one process, no group.
* :func:`check_world_size`: the world size must divide every global batch of an epoch.
* :func:`shard`: rank ``r`` trains on rows ``[r b, (r + 1) b)`` of each global batch
  (``b = B / N``); every rank draws the same global batches (order and augmentation
  depend only on (seed, epoch)), so a rank's share depends only on (seed, epoch, rank).
* :class:`GlobalBatchDraws`: every random draw of the maximiser with a batch dimension is
  made for the global batch and sliced to the rank's rows. All ranks keep one random
  stream (:func:`sync_rng`), so each example's draws do not depend on the world size.
* :class:`DistributedClassifier`: the classifier's training pass goes through
  ``DistributedDataParallel`` (gradients averaged over ranks); the maximisers' passes
  (eval mode) go to the plain module and communicate nothing.
* :func:`wrapped_maximizer`: the AM generators (and ADT_IMP-AM's noise map and encoder)
  under DDP for an epoch, and the maximiser's hooks (``batch_share``, ``global_mean``) set
  so that the release's batch-mean gradient scales of ADT_EXP and of the AM conditioning,
  and ADT_IMP-AM's entropy hinge, are those of the global batch.
* :func:`convert_sync_batchnorm`: BatchNorm statistics of the global batch (PyTorch's
  ``SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` on the CPU).

With one process none of this runs: training is bit for bit what it was.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.overrides import TorchFunctionMode

from adt.method.inner import InnerMaximizer

__all__ = ["DistContext", "init_from_env", "current", "check_world_size", "shard",
           "GlobalBatchDraws", "sync_rng", "DistributedClassifier", "wrapped_maximizer",
           "convert_sync_batchnorm", "GlooSyncBatchNorm", "all_reduce_sum", "all_reduce_sums", "barrier", "torch_dist_cleanup"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer; torchrun sets it (start the run "
                         "with `torchrun --nproc_per_node=N -m adt.train ...`), or unset it "
                         "to train in one process") from None


def _check_env() -> DistContext:
    """The process's place from the environment, checked (no group is joined)."""
    world = _env_int("WORLD_SIZE")
    if world is None:
        return DistContext()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} with WORLD_SIZE={world}: the rank must lie in "
                         f"[0, {world}); let torchrun set both")
    if not 0 <= local < local_world:
        raise ValueError(f"LOCAL_RANK={local} is outside [0, {local_world}) (LOCAL_WORLD_SIZE="
                         f"{local_world}); let torchrun set it (--nproc_per_node=N)")
    return DistContext(rank, local, world)


def init_from_env(device: str | None = None) -> tuple[DistContext, torch.device | None]:
    """Join the process group ``torchrun`` describes in the environment (no-op without
    ``WORLD_SIZE``) and pick this process's device: ``cuda:LOCAL_RANK`` when ``device`` is
    CUDA (or None/"auto" and CUDA is available), the CPU otherwise. Returns the context and
    the device (None in one process: the caller's choice stands)."""
    ctx = _check_env()
    if ctx.world_size == 1 and "WORLD_SIZE" not in os.environ:
        return ctx, None
    want_cuda = (device in (None, "auto") and torch.cuda.is_available()) or \
        (device is not None and str(device).startswith("cuda"))
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine; "
                         "pass --device cpu (gloo backend)")
    if want_cuda:
        count = torch.cuda.device_count()
        if ctx.local_rank >= count:
            raise ValueError(f"LOCAL_RANK={ctx.local_rank} but this machine has {count} CUDA "
                             f"device(s): start at most {count} processes per node "
                             "(torchrun --nproc_per_node) or train on device cpu")
        chosen = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo",
                                device_id=chosen if chosen.type == "cuda" else None)
    return ctx, chosen


def current() -> DistContext:
    """The context of the process group this process is in (one process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), _env_int("LOCAL_RANK", 0) or 0, dist.get_world_size())


def torch_dist_cleanup() -> None:
    """Leave the process group (if this process is in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_world_size(world_size: int, batch_size: int, train_examples: int,
                     method: str) -> None:
    """The world size must divide the global batch and the epoch's last, smaller batch, so
    that every rank takes an equal share (DDP averages the ranks' gradients equally)."""
    last = train_examples % batch_size
    for what, n in (("batch size", batch_size), ("last batch of the epoch", last)):
        if n and n % world_size:
            raise ValueError(
                f"world size {world_size} does not divide the {what} {n} of {method} "
                f"({train_examples} training images, batch {batch_size}): every rank must get "
                f"an equal share. Start a number of processes that divides {n}, or change "
                "the batch size / train_examples (e.g. recipe.batch_size=...)")


def shard(x: torch.Tensor, y: torch.Tensor, ctx: DistContext
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``ctx.rank``'s rows of a global batch."""
    b = len(x) // ctx.world_size
    rows = slice(ctx.rank * b, (ctx.rank + 1) * b)
    return x[rows], y[rows]


# ----------------------------------------------------------------------------- random draws

_FACTORIES = {torch.randn, torch.rand}
_LIKE = {torch.randn_like, torch.rand_like}
_INPLACE = {torch.Tensor.uniform_, torch.Tensor.normal_}


class GlobalBatchDraws(TorchFunctionMode):
    """While active, a random draw whose shape has this rank's batch dimension is drawn for
    the global batch (that dimension times the world size) and sliced to the rank's rows.

    The batch dimension is the one of size ``local_batch`` followed by the image shape
    (``(k, B, C, H, W)`` for ADT_EXP's k draws), else dimension 0 when it has that size
    (``(B, ...)``); draws without one (shared by the batch) are left as they are. Covers
    ``torch.randn``/``rand``, their ``_like`` forms and ``Tensor.uniform_``/``normal_``:
    the draws of every maximiser of :mod:`adt.method.inner`.
    """

    def __init__(self, ctx: DistContext, local_batch: int, image_shape: tuple[int, ...]
                 ) -> None:
        super().__init__()
        self.ctx, self.b, self.image_shape = ctx, local_batch, tuple(image_shape)

    def _batch_dim(self, shape: tuple[int, ...]) -> int | None:
        for i, n in enumerate(shape):
            if n == self.b and tuple(shape[i + 1:]) == self.image_shape:
                return i
        return 0 if shape and shape[0] == self.b else None

    def _widen(self, shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
        return (*shape[:dim], self.b * self.ctx.world_size, *shape[dim + 1:])

    def _mine(self, big: torch.Tensor, dim: int) -> torch.Tensor:
        return big.narrow(dim, self.ctx.rank * self.b, self.b)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES:
            size = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
            shape = tuple(kwargs.pop("size", size))
            dim = self._batch_dim(shape)
            if dim is not None:
                return self._mine(func(self._widen(shape, dim), **kwargs), dim)
        elif func in _LIKE or func in _INPLACE:
            target = args[0]
            dim = self._batch_dim(tuple(target.shape))
            if dim is not None:
                big = target.new_empty(self._widen(tuple(target.shape), dim))
                if target.is_contiguous(memory_format=torch.channels_last) and target.dim() == 4 \
                        and not target.is_contiguous():
                    big = big.contiguous(memory_format=torch.channels_last)
                if func in _LIKE:
                    return self._mine(func(big, *args[1:], **kwargs), dim)
                func(big, *args[1:], **kwargs)
                with torch.no_grad():
                    return target.copy_(self._mine(big, dim))
        return func(*args, **kwargs)


def sync_rng(ctx: DistContext, device: torch.device) -> None:
    """Give every rank rank 0's random state (the CPU's and ``device``'s), so that all ranks
    draw one stream: after the seed, after a resume, after rank 0's monitor."""
    if not ctx.distributed:
        return
    state = [torch.get_rng_state(),
             torch.cuda.get_rng_state(device) if device.type == "cuda" else None]
    dist.broadcast_object_list(state, src=0)
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def all_reduce_sums(sums: dict[str, torch.Tensor], n: int, device: torch.device
                    ) -> tuple[dict[str, torch.Tensor], int]:
    """Per-rank sums (and example counts) added over the ranks, in one collective."""
    keys = sorted(sums)
    flat = torch.stack([sums[k].float() for k in keys]
                       + [torch.tensor(float(n), device=device)])
    dist.all_reduce(flat)
    return {k: flat[i] for i, k in enumerate(keys)}, int(flat[-1].item())


# ----------------------------------------------------------------------------- the modules

class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of every rank's copy of the sum
    flows back to every rank's input (the backward is the same sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, with gradients summed back (see :class:`_AllReduceSum`)."""
    return _AllReduceSum.apply(x)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with the batch statistics of the global batch, for CPU (gloo) runs, where
    PyTorch's ``SyncBatchNorm`` does not run: the per-channel sums, then the sums of squared
    deviations from the global mean, are added over the ranks (two differentiable
    all-reduces), so the output and the running statistics are those of one process on the
    whole batch. Eval mode (and a process outside a group) is plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce_sum(centred.square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def _gloo_sync(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum,
                                   module.affine, module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias  # the same Parameters
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _gloo_sync(child))
    return module


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers synchronised over the ranks: PyTorch's ``SyncBatchNorm`` on CUDA,
    :class:`GlooSyncBatchNorm` on the CPU. The parameters stay the same objects, so
    optimisers built before keep working, and the state_dict keys do not change."""
    if device.type != "cuda":
        return _gloo_sync(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


class DistributedClassifier(nn.Module):
    """The classifier as the trainer and the maximisers see it under DDP: in train mode (the
    training pass of Algorithm 1, line 5) through ``DistributedDataParallel``; in eval mode
    (the maximisers' inner passes) the plain module, which communicates nothing."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ddp(x) if self.training else self.ddp.module(x)


def _global_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean over the ranks of a per-rank batch mean (equal shares: the global batch's
    mean), differentiable: each rank's gradient flows back to every rank's inputs."""
    return all_reduce_sum(value) / ctx.world_size


@contextlib.contextmanager
def wrapped_maximizer(maximizer: InnerMaximizer, ctx: DistContext, device: torch.device
                      ) -> Iterator[InnerMaximizer]:
    """The maximiser ready for a DDP epoch, restored on exit (so checkpoints keep the plain
    modules' keys):

    * its own networks (``maximizer.networks``: the AM generators, ADT_IMP-AM's noise map
      and encoder) under ``DistributedDataParallel``, so their gradients are averaged like
      the classifier's;
    * its hooks (:class:`~adt.method.inner.InnerMaximizer`) set to the global batch:
      ``batch_share = 1/N`` scales the release's batch-mean gradients (ADT_EXP's
      ``running_sum`` objective, the AM ``raw`` conditioning), and ``global_mean`` takes
      ADT_IMP-AM's entropy NLL over the global batch before its hinge
      ``relu(NLL - threshold)`` (one differentiable all-reduce a step). The other updates
      are invariant to that scale (sign steps, per-example sums, normalised gradients),
      and DDP's average of the ranks' batch means is the global batch's mean for every
      loss linear in them.
    """
    swapped: dict[str, nn.Module] = {}
    for name in maximizer.networks:
        sub = getattr(maximizer, name, None)
        if isinstance(sub, nn.Module) and any(p.requires_grad for p in sub.parameters()):
            swapped[name] = sub
            setattr(maximizer, name, DistributedDataParallel(
                sub, device_ids=[device.index] if device.type == "cuda" else None))
    maximizer.batch_share = 1.0 / ctx.world_size
    maximizer.global_mean = functools.partial(_global_mean, ctx=ctx)
    try:
        yield maximizer
    finally:
        for name, sub in swapped.items():
            setattr(maximizer, name, sub)
        del maximizer.batch_share, maximizer.global_mean  # back to the class defaults
