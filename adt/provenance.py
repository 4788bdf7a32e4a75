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
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from adt.io import read_json, write_json

__all__ = ["REPO_ROOT", "MANIFEST", "PROFILE_NAMES", "COMMITTED_PROFILE", "TEMPORARY_PROFILES",
           "git_commit", "default_output_dir", "manifest_artefacts", "record_artefact",
           "record_batch"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "MANIFEST.json"

#: The named profiles of ``adt.profiles`` (a test keeps the two lists equal).
PROFILE_NAMES = ("smoke", "quick", "fashion", "paper")
#: The profile whose outputs are committed: ``figures/`` and the executed ``notebooks/``.
COMMITTED_PROFILE = "quick"
#: Profiles whose outputs go to a temporary folder, never into the repository.
TEMPORARY_PROFILES = ("smoke",)


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


def default_output_dir(profile: str, temporary: bool = False) -> Path:
    """Where a profile's figures and tables go: ``figures/`` for the committed profile,
    ``figures/<profile>/`` for the others, a temporary folder when ``temporary``."""
    if temporary:
        return Path(tempfile.gettempdir()) / f"adt-{profile}"
    return REPO_ROOT / "figures" if profile == COMMITTED_PROFILE else REPO_ROOT / "figures" / profile


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def manifest_artefacts(output_dir: Path) -> dict[str, Any]:
    """The artefacts listed in ``output_dir/MANIFEST.json`` (empty when there is none)."""
    path = Path(output_dir) / MANIFEST
    return read_json(path)["artefacts"] if path.exists() else {}


def record_artefact(output_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """List artefact ``name`` in the output folder's manifest, stamped with the commit and
    the time (an earlier entry of the same name is replaced)."""
    path = Path(output_dir) / MANIFEST
    manifest = read_json(path) if path.exists() else {"artefacts": {}}
    manifest["artefacts"][name] = {**entry, "commit": git_commit(), "created": _now()}
    write_json(manifest, path)


def record_batch(output_dir: Path, **fields: Any) -> Path:
    """Add a pipeline batch's fields (profile, device, timings) and the commit to the
    manifest; returns its path."""
    path = Path(output_dir) / MANIFEST
    manifest: dict[str, Any] = read_json(path) if path.exists() else {"artefacts": {}}
    manifest.update({**fields, "commit": git_commit()})
    write_json(manifest, path)
    return path
