"""Training runs on disk: folders, checkpoints, resume, metrics, and loading.

Each run lives in ``<runs_root>/<profile>/<dataset>/<method>-seed<k>/``:

* ``checkpoint.pt``: model, optimiser, scheduler, maximiser with its own optimisers,
  epoch, every RNG state, the metrics, and the run's identity (the settings it must
  share with a call to be resumed or reused); written atomically at every epoch end;
* ``metrics.json``: per epoch, loss, clean and PGD accuracy, times;
* ``eval.json`` once evaluated (:mod:`adt.evaluate`).

A finished run is reused; an unfinished one resumes from its last epoch and ends
exactly where an uninterrupted run would (on CPU, bit for bit, at a fixed thread count).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adt.data import DATASETS, DatasetSpec
from adt.inner import InnerMaximizer
from adt.io import save_torch, write_json
from adt.methods import build_maximizer
from adt.models import build_model
from adt.profiles import Profile, get_profile
from adt.runtime import resolve_device

__all__ = ["Run", "DEFAULT_RUNS_ROOT", "CHECKPOINT", "METRICS", "run_dir", "run_identity",
           "build_modules", "seed_everything", "new_metrics", "record_epoch", "save_checkpoint",
           "read_checkpoint", "restore_modules", "restore_training", "load_run"]

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


def run_dir(profile: Profile, method: str, seed: int,
            runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    return Path(runs_root) / profile.name / profile.dataset / f"{method}-seed{seed}"


def run_identity(profile: Profile, method: str, seed: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the current call to be resumed or reused."""
    full = profile.to_dict()
    keep = ("dataset", "model", "model_kwargs", "train_examples", "epsilon", "recipe",
            "methods", "monitor_examples", "monitor_pgd_steps")
    return {"profile": profile.name, "method": method, "seed": seed,
            **{k: full[k] for k in keep}}


def build_modules(profile: Profile, method: str, spec: DatasetSpec,
                  device: torch.device) -> tuple[nn.Module, InnerMaximizer]:
    """The classifier and the maximiser of a run, on ``device`` (channels_last on CUDA)."""
    c, h, _ = spec.image_shape
    model = build_model(profile.model, c, spec.num_classes, h, **profile.model_kwargs)
    maximizer = build_maximizer(method, profile.methods, spec, profile.train_epsilon)
    model, maximizer = model.to(device), maximizer.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        maximizer = maximizer.to(memory_format=torch.channels_last)
    return model, maximizer


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


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


# ----------------------------------------------------------------------------- metrics

def new_metrics(profile: Profile, method: str, seed: int, train_examples: int,
                device: torch.device) -> dict[str, Any]:
    """The metrics of a run before its first epoch."""
    return {"profile": profile.name, "dataset": profile.dataset, "method": method, "seed": seed,
            "model": profile.model, "model_kwargs": dict(profile.model_kwargs),
            "train_examples": train_examples, "epsilon": profile.train_epsilon,
            "device": str(device), "torch": torch.__version__, "epochs": profile.recipe.epochs,
            "history": [], "finished": False}


def record_epoch(metrics: dict[str, Any], record: dict[str, Any]) -> None:
    """Append an epoch's record and update the run's totals and ``finished``."""
    history = metrics["history"]
    history.append(record)
    metrics["finished"] = record["epoch"] == metrics["epochs"]
    metrics["wall_time_s"] = sum(r["train_time_s"] + r["eval_time_s"] for r in history)
    metrics["train_time_per_epoch_s"] = sum(r["train_time_s"] for r in history) / len(history)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, *, identity: dict[str, Any], model: nn.Module,
                    maximizer: InnerMaximizer, optimizer: torch.optim.Optimizer,
                    scheduler: Any, metrics: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` (with every RNG state) and ``metrics.json`` into the run
    folder ``path``, each atomically, after the last epoch of ``metrics``."""
    save_torch({"format": _FORMAT, "identity": identity,
                "epoch": metrics["history"][-1]["epoch"],
                "model": model.state_dict(), "maximizer": maximizer.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(), "metrics": metrics}, path / CHECKPOINT)
    write_json(metrics, path / METRICS)


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
                         "the file is truncated or not a checkpoint of this artifact. Delete it, "
                         "or pass force_retrain=True to train this run again") from err


def restore_modules(ckpt: dict[str, Any], path: Path, expected: dict[str, Any],
                    model: nn.Module, maximizer: InnerMaximizer) -> None:
    """Load the classifier and the maximiser of a checkpoint written for ``expected``."""
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


def restore_training(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> int:
    """Load the optimiser, the scheduler and the RNG states; returns the epochs done."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"])
    return ckpt["epoch"]


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
    model, maximizer = build_modules(profile, method, DATASETS[profile.dataset], device)
    ckpt = read_checkpoint(path / CHECKPOINT, device)
    restore_modules(ckpt, path / CHECKPOINT, run_identity(profile, method, seed), model,
                    maximizer)
    return Run(path, profile, method, seed, model.eval(), maximizer, ckpt["metrics"])
