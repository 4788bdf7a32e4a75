"""The modules of a run: built from its profile (:func:`build_modules`), seeded
(:func:`seed_everything`), and restored from its checkpoint (:func:`restore_run`: the one
resume sequence, shared by the trainer and :func:`load_run`). :func:`load_run` also reads a
committed run (``data/archive/``) directly when the runs folder lacks it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adt.config.profiles import Profile, get_profile
from adt.core.data import DATASETS, DatasetSpec
from adt.core.models import build_model
from adt.core.runtime import resolve_device
from adt.method.inner import InnerMaximizer
from adt.method.methods import build_maximizer
from adt.training.archive import (
    ARCHIVE_ROOT,
    ARCHIVED,
    archived_models,
    available_models,
    load_tensors,
    shown,
)
from adt.training.runs import (
    CHECKPOINT,
    DEFAULT_RUNS_ROOT,
    Run,
    read_checkpoint,
    reconcile_metrics,
    restore_modules,
    run_dir,
    run_identity,
)

__all__ = ["build_modules", "seed_everything", "restore_run", "load_run"]


def build_modules(profile: Profile, method: str, spec: DatasetSpec,
                  device: torch.device) -> tuple[nn.Module, InnerMaximizer]:
    """The classifier and the maximiser of a run, on ``device``, in channels_last memory
    format (the faster convolutions on CUDA; on the 2-core CPU a SmallCNN forward-backward
    alone ran about 25 % faster, whole training epochs about as fast as before)."""
    c, h, _ = spec.image_shape
    model = build_model(profile.model, c, spec.num_classes, h, **profile.model_kwargs)
    maximizer = build_maximizer(method, profile.methods, spec, profile.train_epsilon)
    model = model.to(device, memory_format=torch.channels_last)
    maximizer = maximizer.to(device, memory_format=torch.channels_last)
    return model, maximizer


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def restore_run(profile: Profile, method: str, seed: int, path: Path, spec: DatasetSpec,
                device: torch.device, *, resume: bool = True, reconcile: bool = True,
                convert: Callable[[nn.Module], nn.Module] | None = None,
                ) -> tuple[nn.Module, InnerMaximizer, dict[str, Any] | None]:
    """The classifier and the maximiser of the run in folder ``path``, restored from its
    ``checkpoint.pt`` when there is one and ``resume``: build them (:func:`build_modules`;
    ``convert``, e.g. to SyncBatchNorm, applied to each right after), read the checkpoint,
    check that it was written for this run's identity and load it. Returns the modules and
    the checkpoint (None: nothing was restored). ``reconcile``: repair ``metrics.json`` of a
    finished run from the checkpoint (:func:`~adt.training.runs.reconcile_metrics`)."""
    model, maximizer = build_modules(profile, method, spec, device)
    if convert is not None:
        model, maximizer = convert(model), convert(maximizer)
    if not (resume and (path / CHECKPOINT).exists()):
        return model, maximizer, None
    ckpt = read_checkpoint(path / CHECKPOINT, device)
    restore_modules(ckpt, path / CHECKPOINT, run_identity(profile, method, seed), model,
                    maximizer)
    if reconcile and ckpt["metrics"].get("finished"):
        reconcile_metrics(path, ckpt["metrics"], stacklevel=4)
    return model, maximizer, ckpt


def _run_file(profile: Profile, method: str, seed: int, runs_root: str | Path) -> Path | None:
    """Where the run's weights are: its ``checkpoint.pt`` under ``runs_root``, its
    ``run.pt`` there (``runs_root`` is an archive, e.g. ``data/archive``), or the committed
    archive's ``run.pt`` (:data:`~adt.training.archive.ARCHIVE_ROOT`); None: nowhere."""
    path = run_dir(profile, method, seed, runs_root)
    committed = run_dir(profile, method, seed, ARCHIVE_ROOT) / ARCHIVED
    return next((f for f in (path / CHECKPOINT, path / ARCHIVED, committed) if f.is_file()),
                None)


def _missing_run(profile: Profile, method: str, seed: int, runs_root: str | Path) -> str:
    path = run_dir(profile, method, seed, runs_root)
    return (f"no run at {path} (no {CHECKPOINT}) and none committed in "
            f"{shown(run_dir(profile, method, seed, ARCHIVE_ROOT))}; train it: adt.train("
            f"{profile.name!r}, {method!r}, seed={seed}), or load a committed model by name: "
            f"adt.load_model(profile, method, seed=..., epochs=...) (committed: "
            f"{available_models(archived_models())})")


def load_run(profile: str | Profile, method: str, seed: int = 0, *,
             device: str | torch.device | None = None,
             runs_root: str | Path = DEFAULT_RUNS_ROOT, allow_unfinished: bool = False) -> Run:
    """A finished run from disk (no data needed): its ``checkpoint.pt`` under ``runs_root``,
    else its committed ``run.pt`` (``runs_root`` may be an archive such as ``data/archive``;
    otherwise the committed archive is read directly, nothing is restored: the run's
    ``path`` is then its folder in the archive). FileNotFoundError when it is nowhere,
    ValueError when it is unfinished (``allow_unfinished=True`` returns it as it is)."""
    profile = get_profile(profile)
    device = resolve_device(device if device is not None else profile.device)
    file = _run_file(profile, method, seed, runs_root)
    if file is None:
        raise FileNotFoundError(_missing_run(profile, method, seed, runs_root))
    spec = DATASETS[profile.dataset]
    if file.name == CHECKPOINT:
        model, maximizer, ckpt = restore_run(profile, method, seed, file.parent, spec, device)
    else:  # an archived run: weights only, finished by construction
        model, maximizer = build_modules(profile, method, spec, device)
        ckpt = load_tensors(file, device)
        restore_modules(ckpt, file, run_identity(profile, method, seed), model, maximizer)
    metrics = ckpt["metrics"]
    if not metrics.get("finished") and not allow_unfinished:
        raise ValueError(f"the run at {file.parent} is unfinished ({ckpt['epoch']} of "
                         f"{metrics.get('epochs')} epochs); finish it with adt.train("
                         f"{profile.name!r}, {method!r}, seed={seed}) (it resumes), or pass "
                         "allow_unfinished=True to load it as it is")
    return Run(file.parent, profile, method, seed, model.eval(), maximizer, metrics)
