"""Finished runs kept in git: the committed archive under ``data/archive/``.

``data/runs/`` is the working store (checkpoints with optimiser and RNG states, git-ignored).
A finished run is archived as what its results need and nothing else: ``run.pt`` (the
classifier's and the maximiser's weights in float32, exactly as trained, the run's
identity, epoch and metrics; the amortised methods' generators without their optimisers'
moments) and its JSON files (``metrics.json``, the stored tables ``eval*.json``).
:func:`restore_archive` writes them back into a runs folder where a run is missing, so a
fresh clone reuses every archived run instead of training it: the same weights, so the
same tables (:func:`adt.evaluation.stored.run_fingerprint` matches) on any CPU.

An archived run cannot be resumed (no optimiser state); it is finished by construction.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from adt.config.provenance import REPO_ROOT
from adt.core.io import save_torch, write_json
from adt.training.runs import CHECKPOINT, DEFAULT_RUNS_ROOT, METRICS, read_checkpoint

__all__ = ["ARCHIVE_ROOT", "ARCHIVED", "archive_run", "archive_runs", "restore_archive",
           "archived_runs"]

ARCHIVE_ROOT = REPO_ROOT / "data" / "archive"
ARCHIVED = "run.pt"
_KEPT = ("format", "identity", "epoch", "model", "maximizer", "metrics")


#: Maximiser parts that only training uses (ADT_IMP-AM's encoder, 12 times the quick
#: classifier: its NLL is logged in the metrics; no table, figure or sample reads it again).
#: Archived without them, a run restores them freshly built (``partial_maximizer``).
TRAINING_ONLY = ("encoder.",)


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


def archive_run(folder: str | Path, runs_root: str | Path = DEFAULT_RUNS_ROOT,
                archive_root: str | Path = ARCHIVE_ROOT, *, maximizer: bool = True) -> Path:
    """Archive the finished run in ``folder`` (under ``runs_root``) at the same relative
    path under ``archive_root``; returns the archived folder. The weights are rewritten
    only when they changed, the JSON files always (an evaluation may have been added).
    ``maximizer=False`` keeps the classifier alone (ADT_IMP-AM's encoder is 12 times the
    classifier): for runs that only their tables read; restored, their maximiser is
    untrained."""
    folder, runs_root = Path(folder), Path(runs_root)
    target = Path(archive_root) / folder.resolve().relative_to(runs_root.resolve())
    ckpt = read_checkpoint(folder / CHECKPOINT, torch.device("cpu"))
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


def archive_runs(folders: Iterable[str | Path], runs_root: str | Path = DEFAULT_RUNS_ROOT,
                 archive_root: str | Path = ARCHIVE_ROOT) -> list[Path]:
    """:func:`archive_run` for each finished run among ``folders`` (others are skipped)."""
    done = []
    for folder in folders:
        folder = Path(folder)
        if (folder / CHECKPOINT).is_file():
            ckpt = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
            if ckpt["metrics"].get("finished"):
                done.append(archive_run(folder, runs_root, archive_root))
    return done


def archived_runs(archive_root: str | Path = ARCHIVE_ROOT) -> list[Path]:
    """The archived run folders (relative to ``archive_root``), sorted."""
    root = Path(archive_root)
    return sorted(p.parent.relative_to(root) for p in root.rglob(ARCHIVED))


def restore_archive(runs_root: str | Path = DEFAULT_RUNS_ROOT,
                    archive_root: str | Path = ARCHIVE_ROOT) -> list[Path]:
    """Write every archived run that ``runs_root`` lacks (no ``checkpoint.pt``) into it:
    a checkpoint of the archived weights and metrics, and the archived JSON files. A run
    already in ``runs_root`` is left alone (it is what the tables of that folder were
    computed from). Returns the restored run folders."""
    restored = []
    for relative in archived_runs(archive_root):
        source, folder = Path(archive_root) / relative, Path(runs_root) / relative
        if (folder / CHECKPOINT).exists():
            continue
        kept = torch.load(source / ARCHIVED, map_location="cpu", weights_only=False)
        folder.mkdir(parents=True, exist_ok=True)
        for path in _jsons(source):
            shutil.copyfile(path, folder / path.name)
        save_torch({**kept, "optimizer": None, "scheduler": None, "rng": None},
                   folder / CHECKPOINT)
        write_json(kept["metrics"], folder / METRICS)
        restored.append(folder)
    return restored
