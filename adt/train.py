"""Algorithm 1 as one loop for every method.

For each minibatch the method's inner maximiser gives the training batch (line 4),
then one SGD step is taken on the classifier (line 5, Theorem 1); the amortised
maximisers update their generators in the same backward pass.

Each run lives in ``<runs_root>/<profile>/<dataset>/<method>-seed<k>/``:
``checkpoint.pt`` (model, optimiser, scheduler, maximiser with its own optimisers,
epoch, every RNG state), written atomically at every epoch end, and ``metrics.json``
(per epoch: loss, clean and PGD accuracy, times). A finished run is reused; an
unfinished one resumes from its last epoch and ends exactly where an uninterrupted
run would (on CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adt._checks import check_choice, check_int_at_least
from adt.attacks import pgd
from adt.data import DATASETS, DatasetSpec, ImageDataset, load_dataset
from adt.inner import InnerMaximizer
from adt.io import save_torch, write_json
from adt.methods import LABELS, METHODS, build_maximizer
from adt.models import build_model
from adt.profiles import Profile, get_profile

__all__ = ["Run", "train", "train_step", "load_run", "run_dir", "resolve_device", "accuracy",
           "DEFAULT_RUNS_ROOT"]

DEFAULT_RUNS_ROOT = Path("data/runs")
CHECKPOINT, METRICS = "checkpoint.pt", "metrics.json"
_FORMAT = 1


@dataclass
class Run:
    """A trained (or training) run: the classifier, its maximiser, and its metrics."""

    path: Path
    profile: Profile
    method: str
    seed: int
    model: nn.Module
    maximizer: InnerMaximizer
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return bool(self.metrics.get("finished"))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) means CUDA when available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine; "
                         "use device='cpu' (or 'auto')")
    return device


def run_dir(profile: Profile, method: str, seed: int,
            runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    return Path(runs_root) / profile.name / profile.dataset / f"{method}-seed{seed}"


def _identity(profile: Profile, method: str, seed: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the current call to be resumed or reused."""
    full = profile.to_dict()
    keep = ("dataset", "model", "model_kwargs", "train_examples", "epsilon", "recipe",
            "methods", "monitor_examples", "monitor_pgd_steps")
    return {"profile": profile.name, "method": method, "seed": seed,
            **{k: full[k] for k in keep}}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _build(profile: Profile, method: str, spec: DatasetSpec,
           device: torch.device) -> tuple[nn.Module, InnerMaximizer]:
    c, h, _ = spec.image_shape
    model = build_model(profile.model, c, spec.num_classes, h, **profile.model_kwargs)
    maximizer = build_maximizer(method, profile, spec)
    model, maximizer = model.to(device), maximizer.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        maximizer = maximizer.to(memory_format=torch.channels_last)
    return model, maximizer


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
                         "the file is truncated or not a checkpoint of this artifact. Delete it, "
                         "or pass force_retrain=True to train this run again") from err


def _restore(ckpt: dict[str, Any], path: Path, expected: dict[str, Any], model: nn.Module,
             maximizer: InnerMaximizer) -> None:
    if ckpt.get("format") != _FORMAT or "identity" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of this artifact (format "
                         f"{ckpt.get('format')!r}); delete it or pass force_retrain=True")
    stored = ckpt["identity"]
    if stored != expected:
        diff = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        raise ValueError(f"{path} was written for other settings (differing: {', '.join(diff)}; "
                         f"e.g. model {stored.get('model')!r} {stored.get('model_kwargs')} vs "
                         f"{expected.get('model')!r} {expected.get('model_kwargs')}). Pass "
                         "force_retrain=True to discard it, or use another runs_root")
    try:
        model.load_state_dict(ckpt["model"])
        maximizer.load_state_dict(ckpt["maximizer"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the {expected['model']} model / "
                         f"{expected['method']} maximiser built now ({str(err)[:300]}); pass "
                         "force_retrain=True to discard it") from err


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
             ) -> torch.Tensor:
    """Per-example correctness (bool, on the device) of ``model`` on ``x`` or ``attack(x, y)``."""
    out = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if attack is not None:
            xb = attack(xb, yb)
        with torch.no_grad():
            out.append(model(xb).argmax(1) == yb)
    return torch.cat(out)


def _epsilon_at(profile: Profile, step: int, steps_per_epoch: int) -> float:
    """The training epsilon after ``step`` optimiser steps: a linear ramp from ~0 over the
    first ``epsilon_warmup_epochs`` epochs, then the profile's epsilon."""
    warm = profile.recipe.epsilon_warmup_epochs * steps_per_epoch
    return profile.train_epsilon * min(1.0, (step + 1) / warm) if warm else profile.train_epsilon


def _monitor(model: nn.Module, profile: Profile, x: torch.Tensor, y: torch.Tensor,
             autocast: Any) -> tuple[torch.Tensor, torch.Tensor]:
    eps = profile.train_epsilon
    model.eval()
    with autocast():
        clean = accuracy(model, x, y).float().mean()
        robust = accuracy(model, x, y, attack=lambda xb, yb: pgd(
            model, xb, yb, epsilon=eps, step_size=eps / 4, steps=profile.monitor_pgd_steps)
        ).float().mean()
    return clean, robust


def train_step(model: nn.Module, maximizer: InnerMaximizer, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor,
               autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: inner maximisation (line 4), then one step on theta
    (line 5) and on the maximiser's own networks. Returns per-batch sums as device
    tensors (no host sync): ``loss`` and ``train_accuracy`` times the batch size, and the
    maximiser's stats likewise."""
    with autocast():
        adv = maximizer(model, x, y)
        logits = model(adv.x)
        loss = F.cross_entropy(logits.float(), adv.y)
        total = loss if adv.extra_loss is None else loss + adv.extra_loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    maximizer.step()
    n = len(adv.y)
    return {"loss": loss.detach() * n, "train_accuracy": (logits.argmax(1) == adv.y).sum(),
            **{k: v * n for k, v in adv.stats.items()}}


def train(profile: str | Profile, method: str, seed: int = 0, *,
          data: ImageDataset | None = None, device: str | torch.device | None = None,
          runs_root: str | Path = DEFAULT_RUNS_ROOT, resume: bool = True,
          force_retrain: bool = False, progress: bool = True,
          on_batch_end: Callable[[int, int], None] | None = None) -> Run:
    """Train ``method`` under ``profile`` (Algorithm 1), or reuse/resume its run on disk.

    ``data`` defaults to the profile's dataset (loaded from ``data/``); ``device``
    to the profile's. ``on_batch_end(epoch, batch)`` is called after every step
    (tests use it to interrupt a run).
    """
    profile = get_profile(profile)
    check_choice(method, METHODS, "method")
    check_int_at_least(seed, 0, "seed", "0")
    device = resolve_device(device if device is not None else profile.device)
    if data is None:
        data = load_dataset(profile.dataset, device=device)
    elif data.name != profile.dataset:
        raise ValueError(f"data is {data.name!r} but profile {profile.name!r} trains on "
                         f"{profile.dataset!r}; pass profile.replace(dataset={data.name!r})")
    data = data.to(device).subset(train=profile.train_examples)
    path = run_dir(profile, method, seed, runs_root)
    if force_retrain and path.exists():
        shutil.rmtree(path)

    _seed_everything(seed)
    model, maximizer = _build(profile, method, data.spec, device)
    recipe = profile.recipe
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.lr_milestones),
                                                     recipe.lr_gamma)
    identity = _identity(profile, method, seed)
    metrics: dict[str, Any] = {
        "profile": profile.name, "dataset": profile.dataset, "method": method, "seed": seed,
        "model": profile.model, "model_kwargs": dict(profile.model_kwargs),
        "train_examples": len(data.x_train), "epsilon": profile.train_epsilon,
        "device": str(device), "torch": torch.__version__, "epochs": recipe.epochs,
        "history": [], "finished": False}
    start_epoch = 0
    ckpt_path = path / CHECKPOINT
    if ckpt_path.exists() and resume:
        ckpt = _load_checkpoint(ckpt_path, device)
        _restore(ckpt, ckpt_path, identity, model, maximizer)
        metrics = ckpt["metrics"]
        if metrics["finished"]:
            return Run(path, profile, method, seed, model.eval(), maximizer, metrics)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        start_epoch = ckpt["epoch"]

    use_amp = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp \
        else contextlib.nullcontext
    forward = torch.compile(model) if profile.compile else model
    batch_size = recipe.batch_size_for(method)
    n_batches = -(-len(data.x_train) // batch_size)
    x_mon, y_mon = data.test_tensors(profile.monitor_examples)
    epochs = tqdm(range(start_epoch, recipe.epochs), desc=f"{LABELS[method]} seed {seed}",
                  initial=start_epoch, total=recipe.epochs, disable=not progress)
    for epoch in epochs:
        lr = optimizer.param_groups[0]["lr"]
        sums: dict[str, torch.Tensor] = {}
        n_seen = 0
        model.train()
        maximizer.train()
        started = time.perf_counter()
        batches = data.batches("train", batch_size, shuffle=True, augment=data.spec.augment,
                               seed=seed * 1_000_003 + epoch, channels_last=use_amp)
        for i, (x, y) in enumerate(tqdm(batches, total=n_batches, leave=False,
                                        desc=f"epoch {epoch + 1}", disable=not progress)):
            maximizer.epsilon = _epsilon_at(profile, epoch * n_batches + i, n_batches)
            batch_stats = train_step(forward, maximizer, optimizer, x, y, autocast)
            for k, v in batch_stats.items():
                sums[k] = sums[k] + v if k in sums else v.float()
            n_seen += len(y)
            if on_batch_end is not None:
                on_batch_end(epoch, i)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - started
        started = time.perf_counter()
        clean, robust = _monitor(model, profile, x_mon, y_mon, autocast)
        record = {"epoch": epoch + 1, "epsilon": maximizer.epsilon, "lr": lr,
                  **{k: (v / n_seen).item() for k, v in sums.items()},
                  "clean_accuracy": clean.item(), "pgd_accuracy": robust.item(),
                  "train_time_s": train_time, "eval_time_s": time.perf_counter() - started}
        metrics["history"].append(record)
        metrics["finished"] = epoch + 1 == recipe.epochs
        history = metrics["history"]
        metrics["wall_time_s"] = sum(r["train_time_s"] + r["eval_time_s"] for r in history)
        metrics["train_time_per_epoch_s"] = sum(r["train_time_s"] for r in history) / len(history)
        save_torch({"format": _FORMAT, "identity": identity, "epoch": epoch + 1,
                    "model": model.state_dict(), "maximizer": maximizer.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "metrics": metrics}, ckpt_path)
        write_json(metrics, path / METRICS)
        epochs.set_postfix(loss=f"{record['loss']:.3f}", clean=f"{record['clean_accuracy']:.3f}",
                           pgd=f"{record['pgd_accuracy']:.3f}")
    return Run(path, profile, method, seed, model.eval(), maximizer, metrics)


def load_run(profile: str | Profile, method: str, seed: int = 0, *,
             device: str | torch.device | None = None,
             runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Run:
    """A finished run from disk (no data needed); FileNotFoundError when it is not there."""
    profile = get_profile(profile)
    device = resolve_device(device if device is not None else profile.device)
    path = run_dir(profile, method, seed, runs_root)
    if not (path / CHECKPOINT).exists():
        raise FileNotFoundError(f"no run at {path}; train it first: "
                                f"adt.train.train({profile.name!r}, {method!r}, seed={seed})")
    model, maximizer = _build(profile, method, DATASETS[profile.dataset], device)
    ckpt = _load_checkpoint(path / CHECKPOINT, device)
    _restore(ckpt, path / CHECKPOINT, _identity(profile, method, seed), model, maximizer)
    return Run(path, profile, method, seed, model.eval(), maximizer, ckpt["metrics"])

