"""Algorithm 1 as one loop for every method.

For each minibatch the method's inner maximiser gives the training batch (line 4),
then one SGD step is taken on the classifier (line 5, Theorem 1); the amortised
maximisers update their generators in the same backward pass. Run folders,
checkpoints and resume live in :mod:`adt.training.runs`.

Under ``torchrun`` every process trains its share of each global batch and DDP averages
the gradients (:mod:`adt.training.distributed`); rank 0 alone monitors and writes. The command line:

    python -m adt.train --profile quick --method adt_exp --seed 0 [overrides]
    torchrun --nproc_per_node=4 -m adt.train --profile paper --method pgd_at --seed 0
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adt.config.profiles import PROFILES, Profile, Recipe, get_profile
from adt.core._checks import check_choice, check_int_at_least
from adt.core.commands import (
    USER_ERRORS,
    add_progress,
    add_runs_root,
    command_parser,
    device_name,
    int_at_least,
)
from adt.core.data import ImageDataset, load_dataset
from adt.core.primitives import correct_predictions
from adt.core.runtime import autocast, resolve_device
from adt.method.inner import PGD, InnerMaximizer
from adt.method.methods import LABELS, REGISTRY
from adt.training import distributed as ddp
from adt.training.modules import restore_run, seed_everything
from adt.training.runs import (
    DEFAULT_RUNS_ROOT,
    Run,
    RunLock,
    RunLockedError,
    clear_run_folder,
    new_metrics,
    record_epoch,
    restore_training,
    run_dir,
    run_identity,
    save_checkpoint,
)

__all__ = ["train", "train_step", "train_epoch", "parse_overrides", "main", "command_line"]


def train_step(model: nn.Module, maximizer: InnerMaximizer, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor,
               autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: inner maximisation (line 4), then one step on theta
    (line 5) and on the maximiser's own networks. Returns per-batch sums as device
    tensors: ``loss`` and ``train_accuracy`` times the batch size, and the maximiser's
    stats likewise.

    The batch is checked once, at the maximiser's entry (:meth:`InnerMaximizer.__call__`,
    the contract of the attacks and the tables, one host sync): ``x`` float images in
    [0, 1] (not uint8, not [0, 255]: ``x.float() / 255``) on the classifier's device and
    of its dtype, ``y`` one int64 label per image; a bad batch raises ValueError before
    any step. The amortised maximisers' generators follow the classifier's device and
    dtype."""
    with autocast():
        adv = maximizer(model, x, y)
        loss, logits = maximizer.outer_loss(model, x, y, adv)
        total = loss if adv.extra_loss is None else loss + adv.extra_loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    maximizer.step()
    n = len(adv.y)
    return {"loss": loss.detach() * n, "train_accuracy": (logits.argmax(1) == adv.y).sum(),
            **{k: v * n for k, v in adv.stats.items()}}


def train_epoch(model: nn.Module, maximizer: InnerMaximizer, optimizer: torch.optim.Optimizer,
                data: ImageDataset, profile: Profile, epoch: int, batch_size: int, seed: int,
                amp: Callable[[], Any], progress: bool = False,
                on_batch_end: Callable[[int, int], None] | None = None,
                ctx: ddp.DistContext | None = None) -> dict[str, torch.Tensor]:
    """One pass over the training split (epoch ``epoch``, 0-based): the epsilon ramp, then
    :func:`train_step` per batch. Returns the per-example means of the step statistics
    (device tensors). Under DDP (``ctx``), each rank steps on its share of every global
    batch, its random draws made for the global batch (:mod:`adt.training.distributed`), and the
    means are over all ranks."""
    sums: dict[str, torch.Tensor] = {}
    n_seen = 0
    n_batches = -(-len(data.x_train) // batch_size)
    batches = data.batches("train", batch_size, shuffle=True, augment=data.spec.augment,
                           seed=seed * 1_000_003 + epoch, channels_last=True)
    for i, (x, y) in enumerate(tqdm(batches, total=n_batches, leave=False,
                                    desc=f"epoch {epoch + 1}", disable=not progress)):
        maximizer.epsilon = _epsilon_at(profile, epoch * n_batches + i, n_batches)
        lr = _warmup_lr(profile.recipe, epoch * n_batches + i, n_batches)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        draws = contextlib.nullcontext()
        if ctx is not None and ctx.distributed:
            x, y = ddp.shard(x, y, ctx)
            draws = ddp.GlobalBatchDraws(ctx, len(y), data.spec.image_shape)
        with draws:
            stats = train_step(model, maximizer, optimizer, x, y, amp)
        for k, v in stats.items():
            sums[k] = sums[k] + v if k in sums else v.float()
        n_seen += len(y)
        if on_batch_end is not None:
            on_batch_end(epoch, i)
    if ctx is not None and ctx.distributed:
        sums, n_seen = ddp.all_reduce_sums(sums, n_seen, data.x_train.device)
    return {k: v / n_seen for k, v in sums.items()}


def _epsilon_at(profile: Profile, step: int, steps_per_epoch: int) -> float:
    """The training epsilon after ``step`` optimiser steps: a linear ramp from ~0 over the
    first ``epsilon_warmup_epochs`` epochs, then the profile's epsilon."""
    warm = profile.recipe.epsilon_warmup_epochs * steps_per_epoch
    return profile.train_epsilon * min(1.0, (step + 1) / warm) if warm else profile.train_epsilon


def _warmup_lr(recipe: Recipe, step: int, steps_per_epoch: int) -> float | None:
    """The learning rate of optimiser step ``step`` during the warm-up (a linear ramp that
    reaches ``recipe.lr`` at the last step of the first ``lr_warmup_epochs`` epochs); None
    after it, where the step-decay schedule sets it."""
    warm = recipe.lr_warmup_epochs * steps_per_epoch
    return recipe.lr * (step + 1) / warm if step < warm else None


def _outer_optimizer(model: nn.Module, recipe: Recipe) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with momentum and weight decay on theta, and the step-decay schedule."""
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(recipe.lr_milestones), recipe.lr_gamma)


def _monitor(model: nn.Module, profile: Profile, x: torch.Tensor, y: torch.Tensor,
             amp: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and PGD accuracy on the monitor images, the model in eval mode."""
    eps = profile.train_epsilon
    attack = PGD(eps, step_size=eps / 4, steps=profile.monitor_pgd_steps)
    model.eval()
    with amp():
        clean = correct_predictions(model, x, y, autocast=amp).float().mean()
        robust = correct_predictions(model, x, y, autocast=amp,
                                     perturb=lambda xb, yb: attack(model, xb, yb).x)
    return clean, robust.float().mean()


def _check_finite(epoch: int, means: dict[str, torch.Tensor], modules: tuple[nn.Module, ...],
                  lr: float, method: str) -> None:
    """Raise when an epoch left a non-finite loss, statistic or weight (one host sync)."""
    tensors = [*means.values()] + [t.detach() for m in modules
                                   for t in (*m.parameters(), *m.buffers())
                                   if t.is_floating_point()]
    if bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
        return
    loss = means.get("loss")
    raise FloatingPointError(
        f"epoch {epoch + 1} of {LABELS[method]} ended with a non-finite loss or weights (loss "
        f"{'?' if loss is None else f'{loss.item():.4g}'}, lr {lr:g}): training diverged. "
        "Nothing of this epoch was saved. Lower the learning rate, e.g. "
        f"profile.replace(recipe={{'lr': {lr / 10:g}}})")


def train(profile: str | Profile, method: str, seed: int = 0, *,
          data: ImageDataset | None = None, device: str | torch.device | None = None,
          runs_root: str | Path = DEFAULT_RUNS_ROOT, resume: bool = True,
          force_retrain: bool = False, progress: bool = True,
          on_batch_end: Callable[[int, int], None] | None = None,
          sync_batchnorm: bool = True) -> Run:
    """Train ``method`` under ``profile`` (Algorithm 1), or reuse/resume its run on disk.

    ``data`` defaults to the profile's dataset (loaded from ``data/``); ``device``
    to the profile's. ``on_batch_end(epoch, batch)`` is called after every step
    (tests use it to interrupt a run). The run folder is created and tested for writing
    before anything else and locked while this call runs (a second writer fails at once,
    :class:`~adt.training.runs.RunLockedError`). An epoch with a non-finite loss or weights raises
    FloatingPointError before anything of it is saved.

    In a process group (``torchrun``, :func:`adt.training.distributed.init_from_env`) the call is
    one rank of a data-parallel run: CUDA devices follow ``LOCAL_RANK``, BatchNorm is
    synchronised over the ranks when ``sync_batchnorm`` (CUDA only), rank 0 locks the
    folder, monitors and writes; the others return a Run without the last metrics.
    """
    profile = get_profile(profile)
    check_choice(method, REGISTRY, "method")
    seed = check_int_at_least(seed, 0, "seed", "0")
    ctx = ddp.current()
    device = resolve_device(device if device is not None else profile.device)
    if ctx.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    if data is None:
        data = load_dataset(profile.dataset, device=device)
    elif data.name != profile.dataset:
        raise ValueError(f"data is {data.name!r} but profile {profile.name!r} trains on "
                         f"{profile.dataset!r}; pass profile.replace(dataset={data.name!r})")
    data = data.to(device).subset(train=profile.train_examples)
    if ctx.distributed:
        ddp.check_world_size(ctx.world_size, profile.recipe.batch_size_for(method),
                             len(data.x_train), method)
    path = run_dir(profile, method, seed, runs_root)
    with RunLock(path) if ctx.is_main else contextlib.nullcontext():
        if force_retrain and ctx.is_main:
            clear_run_folder(path)
        ddp.barrier()  # nobody reads the folder before rank 0 holds it (and cleared it)
        return _train_locked(profile, method, seed, data, device, path, resume, progress,
                             on_batch_end, ctx, sync_batchnorm)


def _train_locked(profile: Profile, method: str, seed: int, data: ImageDataset,
                  device: torch.device, path: Path, resume: bool, progress: bool,
                  on_batch_end: Callable[[int, int], None] | None,
                  ctx: ddp.DistContext | None = None, sync_batchnorm: bool = True) -> Run:
    """The body of :func:`train`, run while the run folder ``path`` is locked."""
    ctx = ctx or ddp.DistContext()
    seed_everything(seed)
    convert = (functools.partial(ddp.convert_sync_batchnorm, device=device)
               if ctx.distributed and sync_batchnorm else None)
    model, maximizer, ckpt = restore_run(profile, method, seed, path, data.spec, device,
                                         resume=resume, reconcile=ctx.is_main, convert=convert)
    optimizer, scheduler = _outer_optimizer(model, profile.recipe)
    identity = run_identity(profile, method, seed)
    metrics = new_metrics(profile, method, seed, len(data.x_train), device)
    start_epoch = 0
    if ckpt is not None:
        metrics = ckpt["metrics"]
        if metrics["finished"]:
            return Run(path, profile, method, seed, model.eval(), maximizer, metrics)
        start_epoch = restore_training(ckpt, optimizer, scheduler)
    ddp.sync_rng(ctx, device)  # one random stream for all ranks (CUDA states are per device)

    amp = functools.partial(autocast, device)
    forward = torch.compile(model) if profile.compile else model
    if ctx.distributed:
        forward = ddp.DistributedClassifier(forward, device)
    progress = progress and ctx.is_main
    x_mon, y_mon = data.test_tensors(profile.monitor_examples)
    epochs = tqdm(range(start_epoch, profile.recipe.epochs), desc=f"{LABELS[method]} seed {seed}",
                  initial=start_epoch, total=profile.recipe.epochs, disable=not progress)
    for epoch in epochs:
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        maximizer.train()
        started = time.perf_counter()
        with (ddp.wrapped_maximizer(maximizer, ctx, device) if ctx.distributed
              else contextlib.nullcontext()):
            means = train_epoch(forward, maximizer, optimizer, data, profile, epoch,
                                profile.recipe.batch_size_for(method), seed, amp, progress,
                                on_batch_end, ctx)
        _check_finite(epoch, means, (model, maximizer), lr, method)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - started
        if not ctx.is_main:
            ddp.sync_rng(ctx, device)  # rank 0's state after its monitor
            continue
        started = time.perf_counter()
        clean, robust = _monitor(model, profile, x_mon, y_mon, amp)
        record = {"epoch": epoch + 1, "epsilon": maximizer.epsilon, "lr": lr,
                  **{k: v.item() for k, v in means.items()},
                  "clean_accuracy": clean.item(), "pgd_accuracy": robust.item(),
                  "train_time_s": train_time, "eval_time_s": time.perf_counter() - started}
        if ctx.distributed:
            record["world_size"] = ctx.world_size
        record_epoch(metrics, record)
        save_checkpoint(path, identity=identity, model=model, maximizer=maximizer,
                        optimizer=optimizer, scheduler=scheduler, metrics=metrics)
        ddp.sync_rng(ctx, device)
        epochs.set_postfix(loss=f"{record['loss']:.3f}", clean=f"{record['clean_accuracy']:.3f}",
                           pgd=f"{record['pgd_accuracy']:.3f}")
    ddp.barrier()
    return Run(path, profile, method, seed, model.eval(), maximizer, metrics)


# ----------------------------------------------------------------------------- command line

def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``field=value`` and ``nested.field=value`` (``recipe``, ``methods``, ``eval``) as the
    keyword arguments of :meth:`Profile.replace`; values are Python literals, else strings."""
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not FIELD=VALUE; e.g. recipe.epochs=2 or "
                             "train_examples=1000")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        head, dot, field = key.partition(".")
        if dot:
            changes.setdefault(head, {})[field] = value
        else:
            changes[key] = value
    return changes


def _override_help() -> str:
    profile = PROFILES["smoke"]
    top = [f.name for f in dataclasses.fields(profile) if f.name not in ("name", "description")]
    nested = {k: [f.name for f in dataclasses.fields(getattr(profile, k))]
              for k in ("recipe", "methods", "eval")}
    lines = [("profile fields", top), *((f"{k}.FIELD", v) for k, v in nested.items())]
    return "\n".join(textwrap.fill(f"{what}: " + ", ".join(names), 88, initial_indent="  ",
                                   subsequent_indent="    ") for what, names in lines)


def _parser() -> argparse.ArgumentParser:
    profiles = "\n".join(f"  {n:8s} {p.description}" for n, p in PROFILES.items())
    methods = "\n".join(f"  {m:11s} {LABELS[m]}" for m in REGISTRY)
    parser = command_parser(
        "train",
        "Train one (method, seed) of a profile (Algorithm 1), or resume it. Under torchrun "
        "(torchrun --nproc_per_node=N -m adt.train ...) the run is data-parallel over N "
        "processes.",
        epilog=f"profiles:\n{profiles}\n\nmethods:\n{methods}\n\noverrides (FIELD=VALUE, "
               f"values as Python literals):\n{_override_help()}\n\nexample:\n  python -m "
               "adt.train --profile quick --method adt_exp --seed 1 recipe.epochs=2")
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile (named settings; see below)")
    parser.add_argument("--method", required=True, choices=list(REGISTRY),
                        help="the method to train (required; see below)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="the run's seed (model initialisation, data order, attacks)")
    add_runs_root(parser, str(DEFAULT_RUNS_ROOT))
    parser.add_argument("--data-root", default="data", help="where the dataset files are")
    parser.add_argument("--device", type=device_name, default=None,
                        help="auto, cpu, cuda or cuda:N (default: the profile's; under torchrun "
                             "CUDA devices follow LOCAL_RANK)")
    parser.add_argument("--force-retrain", action="store_true",
                        help="discard the run folder's checkpoint and train from scratch")
    parser.add_argument("--no-sync-batchnorm", dest="sync_batchnorm", action="store_false",
                        help="under DDP, keep BatchNorm statistics per rank")
    add_progress(parser)
    parser.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                        help="profile fields to change, e.g. recipe.epochs=2")
    return parser


def main(argv: list[str] | None = None) -> Run:
    """The command line (``python -m adt.train --help``)."""
    args = _parser().parse_args(argv)
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    ctx, device = ddp.init_from_env(args.device or profile.device)
    try:
        device = device or resolve_device(args.device or profile.device)
        data = load_dataset(profile.dataset, root=args.data_root, device=device)
        run = train(profile, args.method, args.seed, data=data, device=device,
                    runs_root=args.runs_root, force_retrain=args.force_retrain,
                    progress=args.progress, sync_batchnorm=args.sync_batchnorm)
        if ctx.is_main:
            last = run.metrics["history"][-1] if run.metrics.get("history") else {}
            print(f"{run.path}: epoch {last.get('epoch', 0)}/{profile.recipe.epochs}, "
                  f"loss {last.get('loss', float('nan')):.4f}, clean "
                  f"{last.get('clean_accuracy', float('nan')):.4f}, pgd "
                  f"{last.get('pgd_accuracy', float('nan')):.4f}"
                  + (f", world size {ctx.world_size}" if ctx.distributed else ""))
        return run
    finally:
        ddp.torch_dist_cleanup()


def command_line(argv: list[str] | None = None) -> int:
    """``python -m adt.train``: :func:`main`, a bad input reported in one line (exit 2)."""
    try:
        main(argv)
    except (*USER_ERRORS, RunLockedError) as err:
        print(f"python -m adt.train: error: {err}", file=sys.stderr)
        return 2
    return 0
