"""Finished runs kept in git: the committed archive under ``data/archive/``.

``data/runs/`` is the working store (checkpoints with optimiser and RNG states, git-ignored).
A finished run is archived as what its results need and nothing else: ``run.pt`` (the
classifier's and the maximiser's weights in float32, exactly as trained, the run's
identity, epoch and metrics; the amortised methods' generators without their optimisers'
moments) and its JSON files (``metrics.json``, the stored tables ``eval*.json``).
:func:`restore_archive` writes them back into a runs folder where a run is missing, so a
fresh clone reuses every archived run instead of training it: the same weights, so the
same tables (:func:`adt.evaluation.stored.run_fingerprint` matches) on any CPU.

The archive is also a model zoo: :func:`archived_models` lists its runs from their
``metrics.json`` (profile, method, seed, epochs, dataset; no torch, no weights read),
:func:`find_archived` picks one by that metadata, and :func:`load_tensors` reads a
``run.pt`` (or any checkpoint) with torch's weights-only unpickler: tensors, plain
containers and numbers, nothing that runs code (:data:`SAFE_GLOBALS`).

An archived run cannot be resumed (no optimiser state); it is finished by construction.
This module imports torch only when a function needs it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.config.provenance import REPO_ROOT
from adt.core.io import save_torch, write_json

__all__ = ["ARCHIVE_ROOT", "ARCHIVED", "ArchivedModel", "UnsafeCheckpointError", "archive_run",
           "archive_runs", "restore_archive", "archived_runs", "archived_models",
           "find_archived", "available_models", "load_tensors"]

ARCHIVE_ROOT = REPO_ROOT / "data" / "archive"
ARCHIVED = "run.pt"
_METRICS = "metrics.json"  # adt.training.runs.METRICS (that module imports torch)
_CHECKPOINT = "checkpoint.pt"  # adt.training.runs.CHECKPOINT
_KEPT = ("format", "identity", "epoch", "model", "maximizer", "metrics")
_RUN_FOLDER = re.compile(r"^(?P<method>.+)-seed(?P<seed>\d+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds Python objects that torch's weights-only unpickler refuses (they
    could run code when unpickled), so it is not read."""


#: Training-only maximiser parts (ADT_IMP-AM's encoder, 12 times the quick
#: classifier: its NLL is logged in the metrics; no table, figure or sample reads it again).
#: Archived without them, a run restores them freshly built (``partial_maximizer``).
TRAINING_ONLY = ("encoder.",)


def _safe_globals() -> list[Any]:
    """What the weights-only unpickler may build besides tensors and containers: the
    ``torch.__version__`` string our metrics record (``TorchVersion``, a ``str``) and plain
    numpy arrays (the RNG states of a run's ``checkpoint.pt``). Nothing that runs code."""
    import numpy as np
    from torch.torch_version import TorchVersion

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in ("uint32", "int64", "float32", "float64")]
    return [TorchVersion, _reconstruct, np.ndarray, np.dtype, *dtypes]


def _refusal(err: Exception) -> str:
    """What the weights-only unpickler refused, in one line without terminal escapes."""
    text = _ANSI.sub("", str(err))
    found = _UNSUPPORTED.search(text)
    if found:
        return f"a Python object of type {found.group(1)}"
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return f"Python objects ({(lines or [text.splitlines()[0] if text else 'unknown'])[-1]})"


def load_tensors(path: str | Path, map_location: Any = "cpu") -> Any:
    """The object ``torch.save`` wrote to ``path``, read with torch's weights-only unpickler
    (tensors, dicts, lists, numbers, strings, and :func:`_safe_globals`): a checkpoint of the
    authors' release, our ``run.pt`` or ``checkpoint.pt``. A file holding other objects
    raises :class:`UnsafeCheckpointError` naming the first; a file that is not a torch file
    raises what ``torch.load`` raises."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} holds {_refusal(err)} besides tensors, so it is not read (only tensors, "
            "containers and numbers are: torch.load(weights_only=True), for safety); save "
            "the model's state_dict alone with torch.save(model.state_dict(), path)") from None


def _weights_only(state: dict[str, Any]) -> dict[str, Any]:
    """A maximiser's state dict without its optimisers' moments (kept in ``_extra_state``
    by the amortised methods: the parameter groups stay, so it still loads) and without
    its :data:`TRAINING_ONLY` parts."""
    out = {}
    for key, value in state.items():
        if key.startswith(TRAINING_ONLY):
            continue
        if key.endswith("_extra_state") and isinstance(value, dict):
            value = {k: ({"state": {}, "param_groups": v["param_groups"]}
                         if isinstance(v, dict) and "param_groups" in v else v)
                     for k, v in value.items()}
        out[key] = value
    return out


def _jsons(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def archive_run(folder: str | Path, runs_root: str | Path | None = None,
                archive_root: str | Path = ARCHIVE_ROOT, *, maximizer: bool = True) -> Path:
    """Archive the finished run in ``folder`` (under ``runs_root``, default ``data/runs``)
    at the same relative path under ``archive_root``; returns the archived folder. The
    weights are rewritten only when they changed, the JSON files always (an evaluation may
    have been added). ``maximizer=False`` keeps the classifier alone (ADT_IMP-AM's encoder
    is 12 times the classifier): for runs that only their tables read; restored, their
    maximiser is untrained."""
    import torch

    from adt.training.runs import DEFAULT_RUNS_ROOT, read_checkpoint

    folder, runs_root = Path(folder), Path(runs_root or DEFAULT_RUNS_ROOT)
    target = Path(archive_root) / folder.resolve().relative_to(runs_root.resolve())
    ckpt = read_checkpoint(folder / _CHECKPOINT, torch.device("cpu"))
    if not ckpt["metrics"].get("finished"):
        raise ValueError(f"the run at {folder} is unfinished (epoch {ckpt.get('epoch')}); "
                         "only finished runs are archived: finish it first")
    kept = {k: ckpt[k] for k in _KEPT}
    kept["maximizer"] = _weights_only(kept["maximizer"]) if maximizer else None
    kept["partial_maximizer"] = True
    stored = target / ARCHIVED
    before = torch.load(stored, weights_only=False) if stored.is_file() else {}
    if before.keys() != kept.keys() or before["metrics"] != kept["metrics"]:
        save_torch(kept, stored)
    for path in _jsons(folder):
        shutil.copyfile(path, target / path.name)
    return target


def archive_runs(folders: Iterable[str | Path], runs_root: str | Path | None = None,
                 archive_root: str | Path = ARCHIVE_ROOT) -> list[Path]:
    """:func:`archive_run` for each finished run among ``folders`` (others are skipped)."""
    import torch

    done = []
    for folder in folders:
        folder = Path(folder)
        if (folder / _CHECKPOINT).is_file():
            ckpt = torch.load(folder / _CHECKPOINT, map_location="cpu", weights_only=False)
            if ckpt["metrics"].get("finished"):
                done.append(archive_run(folder, runs_root, archive_root))
    return done


def archived_runs(archive_root: str | Path = ARCHIVE_ROOT) -> list[Path]:
    """The archived run folders (relative to ``archive_root``), sorted."""
    root = Path(archive_root)
    return sorted(p.parent.relative_to(root) for p in root.rglob(ARCHIVED))


def restore_archive(runs_root: str | Path | None = None,
                    archive_root: str | Path = ARCHIVE_ROOT) -> list[Path]:
    """Write every archived run that ``runs_root`` (default ``data/runs``) lacks (no
    ``checkpoint.pt``) into it: a checkpoint of the archived weights and metrics, and the
    archived JSON files. A run already in ``runs_root`` is left alone (it is what the
    tables of that folder were computed from). Returns the restored run folders."""
    from adt.training.runs import DEFAULT_RUNS_ROOT

    runs_root = Path(runs_root or DEFAULT_RUNS_ROOT)
    restored = []
    for relative in archived_runs(archive_root):
        source, folder = Path(archive_root) / relative, runs_root / relative
        if (folder / _CHECKPOINT).exists():
            continue
        kept = load_tensors(source / ARCHIVED)
        folder.mkdir(parents=True, exist_ok=True)
        for path in _jsons(source):
            shutil.copyfile(path, folder / path.name)
        save_torch({**kept, "optimizer": None, "scheduler": None, "rng": None},
                   folder / _CHECKPOINT)
        write_json(kept["metrics"], folder / _METRICS)
        restored.append(folder)
    return restored


# ----------------------------------------------------------------------------- the model zoo

@dataclass(frozen=True)
class ArchivedModel:
    """One committed run, as its ``metrics.json`` describes it (no weights read):
    ``relative`` is ``<profile folder>/<dataset>/<method>-seed<k>`` under ``root``;
    ``profile`` the named profile it was trained with (its folder adds ``-<hash>`` for a
    variant, e.g. the budget study's longer recipes); ``epochs`` the recipe's."""

    root: Path
    relative: Path
    profile: str
    method: str
    seed: int
    epochs: int | None
    dataset: str
    epsilon: float | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.relative

    @property
    def checkpoint(self) -> Path:
        """The run's ``run.pt``."""
        return self.folder / ARCHIVED

    @property
    def profile_folder(self) -> str:
        return self.relative.parts[0]

    def describe(self) -> str:
        """``quick-615a60/mnist5k/adt_exp-seed3 (profile 'quick', 16 epochs)``."""
        return f"{self.relative.as_posix()} (profile {self.profile!r}, {self.epochs} epochs)"

    def load_call(self) -> str:
        """The Python line that loads it (:func:`adt.load_model`)."""
        return (f"adt.load_model({self.profile!r}, {self.method!r}, seed={self.seed}, "
                f"epochs={self.epochs})")


def shown(path: str | Path) -> str:
    """``path`` relative to the repository root when inside it (``data/archive/...``)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _read_metrics(folder: Path) -> dict[str, Any]:
    try:
        blob = json.loads((folder / _METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or unreadable: the folder's name still tells
        return {}
    return blob if isinstance(blob, dict) else {}


def _archived_model(root: Path, relative: Path) -> ArchivedModel | None:
    """The record of the run at ``root / relative`` (None: not a run folder's layout)."""
    named = _RUN_FOLDER.match(relative.name)
    if len(relative.parts) != 3 or named is None:
        return None
    metrics = _read_metrics(root / relative)
    history = metrics.get("history") or []
    epochs = metrics.get("epochs", len(history) or None)
    epsilon = metrics.get("epsilon")
    return ArchivedModel(root, relative,
                         str(metrics.get("profile") or relative.parts[0].split("-")[0]),
                         str(metrics.get("method") or named["method"]),
                         int(metrics.get("seed", named["seed"])),
                         int(epochs) if epochs is not None else None,
                         str(metrics.get("dataset") or relative.parts[1]),
                         float(epsilon) if isinstance(epsilon, int | float) else None)


def archived_models(archive_root: str | Path = ARCHIVE_ROOT) -> list[ArchivedModel]:
    """Every committed run under ``archive_root`` (a folder holding ``run.pt``), read from
    its ``metrics.json`` only, sorted by profile, epochs, folder, dataset, method, seed."""
    root = Path(archive_root)
    found = (_archived_model(root, relative) for relative in archived_runs(root))
    return sorted((m for m in found if m is not None),
                  key=lambda m: (m.profile, m.epochs or 0, m.profile_folder, m.dataset,
                                 m.method, m.seed))


def _seeds(seeds: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def available_models(models: Iterable[ArchivedModel]) -> str:
    """The committed models in one line: by profile and epochs, each method's seeds."""
    groups: dict[tuple[str, int | None], dict[str, list[int]]] = {}
    for m in models:
        groups.setdefault((m.profile, m.epochs), {}).setdefault(m.method, []).append(m.seed)
    return "; ".join(
        f"{profile!r} at {epochs} epochs: " + ", ".join(
            f"{method} (seeds {_seeds(seeds)})" for method, seeds in sorted(methods.items()))
        for (profile, epochs), methods in groups.items()) or "none"


def find_archived(profile: str, method: str, seed: int = 0, epochs: int | None = None,
                  archive_root: str | Path = ARCHIVE_ROOT) -> ArchivedModel:
    """The committed run of ``profile`` (a profile's name, e.g. ``"quick"``, or a profile
    folder, e.g. ``"quick-615a60"``), ``method`` and ``seed`` trained for ``epochs``
    (None: the profile's own recipe, its folder without a hash, when committed, else the
    one match). FileNotFoundError listing what is committed when there is none."""
    models = archived_models(archive_root)
    matches = [m for m in models if profile in (m.profile, m.profile_folder)
               and m.method == method and m.seed == seed
               and (epochs is None or m.epochs == epochs)]
    own = [m for m in matches if m.profile_folder == m.profile]
    if len(matches) == 1 or (epochs is None and len(own) == 1):
        return matches[0] if len(matches) == 1 else own[0]
    wanted = (f"profile {profile!r}, method {method!r}, seed {seed}"
              + (f", {epochs} epochs" if epochs is not None else ""))
    if matches:
        raise FileNotFoundError(
            f"several committed models match {wanted}: " + "; ".join(m.describe() for m in
                                                                     matches)
            + "; pass epochs=... to pick one")
    raise FileNotFoundError(f"no committed model of {wanted} in {shown(archive_root)}; committed: "
                            f"{available_models(models)} (docs/models.md lists each)")
