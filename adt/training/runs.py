"""Training runs on disk: folders, checkpoints, resume, metrics, and loading.

Each run lives in ``<runs_root>/<profile>/<dataset>/<method>-seed<k>/``, where
``<profile>`` is the profile's name, followed by a short hash of its training settings
(``quick-3fa2c1``) when they differ from the named profile's (:func:`profile_folder`), so
a variant never shares the folder of the profile it was made from:

* ``checkpoint.pt``: model, optimiser, scheduler, maximiser with its own optimisers,
  epoch, every RNG state, the metrics, and the run's identity (the settings it must
  share with a call to be resumed or reused); written atomically at every epoch end;
* ``metrics.json``: per epoch, loss, clean and PGD accuracy, times (a copy of the
  checkpoint's metrics, repaired from it on load when they disagree);
* ``eval.json`` once evaluated (:mod:`adt.evaluation.stored`);
* ``.lock`` while a process trains the run (:class:`RunLock`): one writer per folder.

A finished run is reused; an unfinished one resumes from its last epoch and ends
exactly where an uninterrupted run would (on CPU, bit for bit, at a fixed thread count).
A run's modules are built, seeded and restored by :mod:`adt.training.modules`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn

from adt.config.profiles import PROFILES, Profile
from adt.core.io import read_json, save_torch, write_json
from adt.method.inner import InnerMaximizer

__all__ = ["Run", "DEFAULT_RUNS_ROOT", "CHECKPOINT", "METRICS", "LOCK", "run_dir",
           "run_identity", "identity_hash", "profile_folder", "variant_of", "state_hash",
           "RunLock", "RunLockedError", "is_locked", "prepare_run_folder", "clear_run_folder",
           "new_metrics", "record_epoch", "save_checkpoint", "read_checkpoint", "restore_modules",
           "restore_training", "reconcile_metrics"]

DEFAULT_RUNS_ROOT = Path("data/runs")
CHECKPOINT, METRICS, LOCK = "checkpoint.pt", "metrics.json", ".lock"
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
    """The run's folder: ``<runs_root>/<profile folder>/<dataset>/<method>-seed<seed>``."""
    return Path(runs_root) / profile_folder(profile) / profile.dataset / f"{method}-seed{seed}"


_TRAINING_FIELDS = ("dataset", "model", "model_kwargs", "train_examples", "epsilon", "recipe",
                    "methods", "monitor_examples", "monitor_pgd_steps")


def run_identity(profile: Profile, method: str, seed: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the current call to be resumed or reused."""
    full = profile.to_dict()
    return {"profile": profile.name, "method": method, "seed": seed,
            **{k: full[k] for k in _TRAINING_FIELDS}}


def identity_hash(identity: dict[str, Any], length: int = 12) -> str:
    """A short sha256 of an identity dict (canonical JSON: sorted keys, numpy/torch scalars
    as numbers)."""
    text = json.dumps(identity, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy and torch scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} in a run identity is not JSON serialisable")


def variant_of(profile: Profile) -> dict[str, Any]:
    """How ``profile``'s training settings differ from the named profile's: ``tag`` (a
    short hash; None when they do not differ) and ``differs`` (the differing fields; every
    field for a name that is not one of ``adt.config.profiles.PROFILES``)."""
    mine = {k: v for k, v in run_identity(profile, "", 0).items() if k not in ("method", "seed")}
    named = PROFILES.get(profile.name)
    base = run_identity(named, "", 0) if named is not None else {}
    differs = sorted(k for k in mine if k != "profile" and base.get(k) != mine[k])
    return {"tag": identity_hash(mine, 6) if differs else None, "differs": differs}


def profile_folder(profile: Profile) -> str:
    """The profile's folder under the runs root: its name, with ``-<tag>`` for a variant
    whose training settings differ from the named profile's (:func:`variant_of`)."""
    tag = variant_of(profile)["tag"]
    return profile.name if tag is None else f"{profile.name}-{tag}"


def state_hash(module: nn.Module) -> str:
    """A sha256 of every tensor of ``module.state_dict()`` (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu().contiguous()
        h.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        # reshape: a 0-dim tensor (BatchNorm's num_batches_tracked) has no byte view
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------- the run folder

class RunLockedError(RuntimeError):
    """Another process trains the run (it holds the run folder's lock)."""


def prepare_run_folder(path: Path) -> Path:
    """Create the run folder and check that a file can be written in it, before any
    training: a folder that cannot be written fails here, naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(
            f"the run folder {path} cannot be written ({type(err).__name__}: {err}); training "
            "would fail at its first checkpoint. Fix the folder's permissions or pass another "
            "runs_root (a writable folder)") from err
    return path


def clear_run_folder(path: Path) -> None:
    """Delete everything in the run folder but its lock file (``force_retrain``)."""
    for entry in Path(path).iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class _Replaced(Exception):
    """The lock file was removed and made anew while this process waited to lock it."""


class RunLock:
    """An exclusive lock on ``<run folder>/.lock`` (:class:`filelock.FileLock`: ``flock``
    on Linux and macOS, ``msvcrt`` locking on Windows), held while a process trains the run;
    the lock file holds the holder's PID and is removed on release (while still locked, so
    that nobody takes it meanwhile; a process that locked the removed file retries). A
    second writer (another process, or another ``RunLock`` in this one) fails at once
    (:class:`RunLockedError`) naming the holder's PID. The operating system drops the lock
    when the holder dies (even by ``kill -9``), so a stale file blocks nobody."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self._lock: FileLock | None = None

    def _claim(self, fd: int) -> None:
        """On locking ``fd``: check that it is the file at the path now, write our PID."""
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise _Replaced
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(os.getpid()).encode())

    def __enter__(self) -> RunLock:
        prepare_run_folder(self.path.parent)
        while self._lock is None:
            lock = FileLock(self.path, timeout=0, on_acquired=self._claim)
            try:
                lock.acquire()
            except _Replaced:
                continue
            except Timeout:
                raise RunLockedError(
                    f"the run folder {self.path.parent} is being trained by process "
                    f"{self._holder()} (it holds {self.path}); wait for it to finish, or train "
                    "this run elsewhere (another runs_root)") from None
            self._lock = lock
        return self

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"PID {pid}" if pid else "of unknown PID"

    def __exit__(self, *exc: object) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):  # Windows: filelock removes it on release
            self.path.unlink(missing_ok=True)
        self._lock.release()
        self._lock = None


def is_locked(folder: Path) -> bool:
    """Whether a process holds the run folder's lock (:class:`RunLock`) now."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return False
    probe = FileLock(path, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


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
    variant = variant_of(profile)
    return {"profile": profile.name, "profile_folder": profile_folder(profile),
            "variant": variant["tag"], "variant_of_named_profile": variant["differs"],
            "dataset": profile.dataset, "method": method, "seed": seed,
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
        first = diff[0]
        raise ValueError(f"{path} was written for other settings (differing: {', '.join(diff)}; "
                         f"e.g. {first} {stored.get(first)!r} there vs {expected.get(first)!r} "
                         "now). Pass force_retrain=True to discard it, or use another runs_root")
    try:
        model.load_state_dict(ckpt["model"])
        if ckpt["maximizer"] is not None:  # None: an archived run kept without it
            # an archived maximiser lacks its training-only parts (adt.training.archive)
            maximizer.load_state_dict(ckpt["maximizer"],
                                      strict=not ckpt.get("partial_maximizer", False))
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the {expected['model']} model / "
                         f"{expected['method']} maximiser built now ({str(err)[:300]}); pass "
                         "force_retrain=True to discard it") from err
    if not _all_finite(model, maximizer):
        raise ValueError(f"{path} holds non-finite weights (NaN or inf) after epoch "
                         f"{ckpt.get('epoch')}: the run diverged. Train it again with a lower "
                         "lr (profile.replace(recipe={'lr': ...})), or pass force_retrain=True")


def _all_finite(*modules: nn.Module) -> bool:
    """Whether every floating parameter and buffer of ``modules`` is finite (one host sync)."""
    tensors = [t.detach() for m in modules for t in (*m.parameters(), *m.buffers())
               if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def restore_training(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> int:
    """Load the optimiser, the scheduler and the RNG states; returns the epochs done."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"])
    return ckpt["epoch"]


def reconcile_metrics(folder: Path, metrics: dict[str, Any], stacklevel: int = 3) -> bool:
    """Make ``metrics.json`` in the run folder equal the checkpoint's ``metrics`` (the
    checkpoint is written first, so it is the truth when the two disagree: a write of
    ``metrics.json`` was interrupted, or the file was edited or deleted). Returns whether
    the file was repaired; says so with a warning."""
    path = Path(folder) / METRICS
    expected = json.loads(json.dumps(metrics, default=_plain))
    try:
        stored: Any = read_json(path)
        why = "disagrees with the checkpoint" if stored != expected else None
    except FileNotFoundError:
        why = "is missing"
    except ValueError:
        why = "is not valid JSON"
    if why is None:
        return False
    try:
        write_json(metrics, path)
    except OSError as err:
        warnings.warn(f"{path} {why} and could not be repaired ({err}); the checkpoint's "
                      "metrics are used", stacklevel=stacklevel)
        return False
    warnings.warn(f"{path} {why}; rewritten from the checkpoint {Path(folder) / CHECKPOINT}",
                  stacklevel=stacklevel)
    return True
