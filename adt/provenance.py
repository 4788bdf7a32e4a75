"""Where outputs go and what produced them: repository root, output folders, git commit,
and ``MANIFEST.json``.

This module imports no torch, so the papermill launcher (:mod:`adt.pipeline`) stays
light; :mod:`adt.report` builds the notebooks' :class:`~adt.report.Context` on it.

Every figure and table is listed in its output folder's ``MANIFEST.json`` with the
notebook, the runs and the commit that produced it (:func:`record_artefact`); the
pipeline adds the batch's profile, device, commit and notebook timings
(:func:`record_batch`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adt.io import read_json, write_json

__all__ = ["REPO_ROOT", "MANIFEST", "PROFILE_NAMES", "COMMITTED_PROFILE", "TEMPORARY_PROFILES",
           "CUDA_PROFILES", "git_commit", "checkout_tag", "default_output_dir",
           "read_manifest", "manifest_artefacts", "record_artefact", "record_batch",
           "merge_manifests"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "MANIFEST.json"

#: The named profiles of ``adt.profiles`` (a test keeps the two lists equal).
PROFILE_NAMES = ("smoke", "quick", "fashion", "cifar", "paper")
#: The profile whose outputs are committed: ``figures/`` and the executed ``notebooks/``.
COMMITTED_PROFILE = "quick"
#: Profiles whose outputs go to a temporary folder, never into the repository.
TEMPORARY_PROFILES = ("smoke",)
#: Profiles whose default device is CUDA (a test keeps this equal to ``adt.profiles``).
CUDA_PROFILES = ("fashion", "cifar", "paper")


def git_commit(root: Path = REPO_ROOT) -> str:
    """The checkout's commit (``-dirty`` when code differs from it), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        # the pipeline rewrites notebooks/ and figures/ itself: only other changes make it dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!notebooks", ":!figures", ":!benchmarks"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def checkout_tag(root: Path = REPO_ROOT) -> str:
    """A short hash of the checkout's location: tells apart the temporary folders of two
    checkouts on one machine."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]


def default_output_dir(profile: str, temporary: bool = False) -> Path:
    """Where a profile's figures and tables go: ``figures/`` for the committed profile,
    ``figures/<profile>/`` for the others, a temporary folder of this checkout
    (``<tmp>/adt-<profile>-<checkout_tag>``) when ``temporary``."""
    if temporary:
        return Path(tempfile.gettempdir()) / f"adt-{profile}-{checkout_tag()}"
    return REPO_ROOT / "figures" if profile == COMMITTED_PROFILE else REPO_ROOT / "figures" / profile


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_manifest(output_dir: Path) -> dict[str, Any]:
    """``output_dir/MANIFEST.json`` (an empty manifest when there is none); a manifest that is
    not valid JSON or lists no ``artefacts`` raises ValueError naming the file."""
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return {"artefacts": {}}
    fix = ("restore it (git checkout -- FILE for figures/), or delete it and run the notebooks "
           "again (python -m adt.pipeline) to list every artefact")
    manifest = read_json(path, fix)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artefacts"), dict):
        raise ValueError(f"{path} holds no 'artefacts' mapping, so it is not a manifest of this "
                         f"artifact: {fix.replace('FILE', str(path))}")
    return manifest


def manifest_artefacts(output_dir: Path) -> dict[str, Any]:
    """The artefacts listed in ``output_dir/MANIFEST.json`` (empty when there is none)."""
    return read_manifest(output_dir)["artefacts"]


def record_artefact(output_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """List artefact ``name`` in the output folder's manifest, stamped with the commit and
    the time (an earlier entry of the same name is replaced)."""
    manifest = read_manifest(output_dir)
    manifest["artefacts"][name] = {**entry, "commit": git_commit(), "created": _now()}
    write_json(manifest, Path(output_dir) / MANIFEST)


def record_batch(output_dir: Path, **fields: Any) -> Path:
    """Add a pipeline batch's fields (profile, device, timings) and the commit to the
    manifest; returns its path."""
    path = Path(output_dir) / MANIFEST
    manifest = read_manifest(output_dir)
    manifest.update({**fields, "commit": git_commit()})
    write_json(manifest, path)
    return path


def merge_manifests(old: dict[str, Any], new: dict[str, Any],
                    notebooks: Sequence[str]) -> dict[str, Any]:
    """The manifest after a batch that ran ``notebooks`` (paths ``notebooks/<name>.ipynb``)
    and produced ``new``: ``new``'s artefacts and batch fields, plus every entry of ``old``
    made by a notebook outside the batch (entries naming no notebook are dropped as stale).
    The notebook timings of both are kept, this batch's winning."""
    ran = {f"notebooks/{name}.ipynb" for name in notebooks}
    kept = {name: entry for name, entry in old.get("artefacts", {}).items()
            if isinstance(entry, dict) and entry.get("notebook") and entry["notebook"] not in ran}
    merged = {**{k: v for k, v in old.items() if k != "artefacts"},
              **{k: v for k, v in new.items() if k != "artefacts"}}
    seconds = {**old.get("notebook_seconds", {}), **new.get("notebook_seconds", {})}
    if seconds:
        merged["notebook_seconds"] = seconds
    merged["artefacts"] = {**kept, **new.get("artefacts", {})}
    return merged
