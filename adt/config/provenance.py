"""Where outputs go and what produced them: repository root, output folders, git commit,
and ``MANIFEST.json``.

This module imports no torch, so the papermill launcher (:mod:`adt.artifact.pipeline`) stays
light; :mod:`adt.artifact.report` builds the notebooks' :class:`~adt.artifact.report.Context` on it.

Every figure and table is listed in its output folder's ``MANIFEST.json`` with the
notebook, the runs and the commit that produced it (:func:`record_artefact`); the
pipeline adds the batch's profile, device, commit and notebook timings
(:func:`record_batch`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adt.core.io import read_json, write_json

__all__ = ["REPO_ROOT", "MANIFEST", "PROFILE_NAMES", "COMMITTED_PROFILE", "TEMPORARY_PROFILES",
           "CUDA_PROFILES", "git_commit", "checkout_tag", "default_output_dir",
           "read_manifest", "manifest_artefacts", "record_artefact", "record_batch",
           "merge_manifests", "code_hashes", "notebook_code_hash", "file_hash",
           "check_fresh", "orphans", "environment", "LOCK_FILES", "RECORDED_PACKAGES"]

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "MANIFEST.json"
#: The lock files pinning every package (``tools/lock.py``; ``make`` installs them).
LOCK_FILES = ("requirements.lock", "requirements-torch.lock")
#: The packages whose versions a batch records by name (the rest: through the lock's hash).
RECORDED_PACKAGES = ("torch", "torchvision", "torchattacks", "pyautoattack", "numpy", "scipy",
                     "scikit-learn", "matplotlib", "seaborn", "mlxtend", "tqdm", "filelock",
                     "papermill", "nbclient", "ipykernel")

#: The named profiles of ``adt.config.profiles`` (a test keeps the two lists equal).
PROFILE_NAMES = ("smoke", "quick", "fmnist", "fashion", "cifar", "paper")
#: The profile whose outputs are committed: ``figures/`` and the executed ``notebooks/``.
COMMITTED_PROFILE = "quick"
#: Profiles whose outputs go to a temporary folder, never into the repository.
TEMPORARY_PROFILES = ("smoke",)
#: Profiles whose default device is CUDA (a test keeps this equal to ``adt.config.profiles``).
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


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_hash(root: Path = REPO_ROOT) -> str:
    """sha256 over every ``adt/**/*.py`` of the checkout (relative path and bytes, sorted):
    the code every figure, table and executed notebook depends on."""
    h = hashlib.sha256()
    for path in sorted((Path(root) / "adt").rglob("*.py")):
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def notebook_code_hash(path: Path) -> str:
    """sha256 of a notebook's code cells (their sources, in order), leaving out the cell
    papermill injects (tag ``injected-parameters``): the same for a notebook and its
    executed copy."""
    cells = json.loads(Path(path).read_text()).get("cells", [])
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c.get("cell_type") == "code"
               and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def code_hashes(notebooks_dir: Path, names: Sequence[str] = (), root: Path = REPO_ROOT,
                executed_dir: Path | None = None) -> dict[str, Any]:
    """The hash of ``adt/`` and of the code cells of each notebook named (``NN_name``) in
    ``notebooks_dir``; with ``executed_dir``, also the sha256 of each executed copy there
    (what the batch writes back, outputs included)."""
    hashes: dict[str, Any] = {
        "adt": package_hash(root),
        "notebooks": {name: notebook_code_hash(Path(notebooks_dir) / f"{name}.ipynb")
                      for name in names}}
    if executed_dir is not None:
        hashes["executed"] = {name: file_hash(Path(executed_dir) / f"{name}.ipynb")
                              for name in names}
    return hashes


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
    code = {"adt": package_hash()}
    notebook = entry.get("notebook")
    if notebook and (REPO_ROOT / notebook).is_file():
        code["notebook"] = notebook_code_hash(REPO_ROOT / notebook)
    files = {f: file_hash(Path(output_dir) / f) for f in entry.get("files", [])
             if (Path(output_dir) / f).is_file()}
    manifest["artefacts"][name] = {**entry, "sha256": files, "code": code,
                                   "commit": git_commit(), "created": _now()}
    write_json(manifest, Path(output_dir) / MANIFEST)


def environment(root: Path = REPO_ROOT) -> dict[str, Any]:
    """What a batch ran on: Python, the platform, the installed versions of
    :data:`RECORDED_PACKAGES` and the SHA-256 of each lock file (the Makefile's install
    checks that every package holds the lock's version: ``tools/lock.py check``)."""
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
            "packages": {name: version(name) for name in RECORDED_PACKAGES},
            "locks": {name: file_hash(Path(root) / name) if (Path(root) / name).is_file()
                      else None for name in LOCK_FILES}}


def record_batch(output_dir: Path, **fields: Any) -> Path:
    """Add a pipeline batch's fields (profile, device, timings) and the commit to the
    manifest; returns its path."""
    path = Path(output_dir) / MANIFEST
    manifest = read_manifest(output_dir)
    manifest.update({**fields, "commit": git_commit()})
    write_json(manifest, path)
    return path


def check_fresh(output_dir: Path | None = None, notebooks_dir: Path | None = None,
                root: Path = REPO_ROOT) -> list[str]:
    """Why the committed outputs were not produced by the code in the tree (empty: fresh).

    Fresh means: every artefact of ``output_dir/MANIFEST.json`` was made with today's
    ``adt/`` and today's code cells of its notebook, its files are the very files it wrote;
    every notebook of ``notebooks_dir`` was executed by the batch the manifest records, with
    the code cells it holds now; and ``output_dir`` holds no orphan, a file that no artefact
    lists (see :func:`orphans`)."""
    root = Path(root)
    output_dir = Path(output_dir) if output_dir else root / "figures"
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else root / "notebooks"
    problems: list[str] = []
    manifest = read_manifest(output_dir)
    current = package_hash(root)
    batch = manifest.get("code", {})
    if batch.get("adt") != current:
        problems.append(f"{output_dir / MANIFEST}: the batch ran another adt/ than the tree's "
                        "(run `make reproduce`)")
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        recorded = batch.get("notebooks", {}).get(path.stem)
        if recorded is None:
            problems.append(f"{path}: not executed by the recorded batch")
        elif recorded != notebook_code_hash(path):
            problems.append(f"{path}: its code cells changed since it was executed")
        elif batch.get("executed", {}).get(path.stem) != file_hash(path):
            problems.append(f"{path}: its outputs are not those the recorded batch wrote")
    for name, entry in sorted(manifest["artefacts"].items()):
        code = entry.get("code", {})
        if code.get("adt") != current:
            problems.append(f"{name}: made by another adt/ than the tree's")
        notebook = root / entry.get("notebook", "?")
        if not notebook.is_file():
            problems.append(f"{name}: its notebook {entry.get('notebook')} is gone")
        elif code.get("notebook") != notebook_code_hash(notebook):
            problems.append(f"{name}: made by other code cells of {entry.get('notebook')}")
        for file in entry.get("files", []):
            path = output_dir / file
            if not path.is_file():
                problems.append(f"{name}: {path} is missing")
            elif entry.get("sha256", {}).get(file) != file_hash(path):
                problems.append(f"{name}: {path} is not the file the notebook wrote")
    for path in orphans(output_dir, manifest, notebooks_dir):
        problems.append(f"{path}: an orphan, listed by no artefact of {output_dir / MANIFEST} "
                        "(left by an older batch or put there by hand): delete it, or regenerate "
                        "with `make reproduce` if a notebook should still write it")
    return problems


def orphans(output_dir: Path, manifest: dict[str, Any] | None = None,
            notebooks_dir: Path | None = None) -> list[Path]:
    """The files under ``output_dir`` (recursively, ``tables/`` included) that its manifest
    does not account for, sorted.

    Accounted for: ``MANIFEST.json`` itself; every file an artefact lists (``files``,
    relative to ``output_dir``: figures, ``tables/``, ``CLAIMS.md``); the executed notebooks
    the batch records (``code.executed``/``code.notebooks``) when they lie in ``output_dir``
    (``<output>/notebooks/`` of the non-committed profiles, or ``notebooks_dir``); the runs
    an artefact lists as ``<output>/...`` (temporary profiles keep them there).

    A subfolder holding its own ``MANIFEST.json`` (``figures/fashion/``, ``figures/cifar/``,
    ``figures/paper/``: another profile's outputs) is another scope and is skipped whole;
    check it with ``--output-dir`` pointing at it."""
    output_dir = Path(output_dir)
    if manifest is None:
        manifest = read_manifest(output_dir)
    artefacts = manifest.get("artefacts", {})
    listed = {output_dir / MANIFEST}
    run_dirs: list[Path] = []
    for entry in artefacts.values():
        if not isinstance(entry, dict):
            continue
        listed.update(output_dir / f for f in entry.get("files", []))
        run_dirs.extend(output_dir / r.removeprefix("<output>/") for r in entry.get("runs", [])
                        if isinstance(r, str) and r.startswith("<output>/"))
    batch = manifest.get("code", {})
    executed = {*batch.get("notebooks", {}), *batch.get("executed", {})}
    folders = {output_dir / "notebooks"} | ({Path(notebooks_dir)} if notebooks_dir else set())
    listed.update(folder / f"{name}.ipynb" for folder in folders for name in executed)
    listed = {os.path.abspath(p) for p in listed}
    run_dirs_norm = [os.path.abspath(d) for d in run_dirs]
    found: list[Path] = []
    for folder, dirs, files in os.walk(output_dir):
        here = Path(folder)
        # another profile's scope: its own manifest, checked on its own
        dirs[:] = sorted(d for d in dirs if not (here / d / MANIFEST).is_file())
        for file in files:
            path = here / file
            norm = os.path.abspath(path)
            if norm in listed or any(norm.startswith(d + os.sep) for d in run_dirs_norm):
                continue
            found.append(path)
    return sorted(found)


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
    if "code" in new:  # the code hashes of the notebooks outside the batch stay
        old_notebooks = {name: h for name, h in old.get("code", {}).get("notebooks", {}).items()
                         if f"notebooks/{name}.ipynb" not in ran}
        old_executed = {name: h for name, h in old.get("code", {}).get("executed", {}).items()
                        if f"notebooks/{name}.ipynb" not in ran}
        merged["code"] = {**new["code"],
                          "notebooks": {**old_notebooks, **new["code"].get("notebooks", {})},
                          "executed": {**old_executed, **new["code"].get("executed", {})}}
    merged["artefacts"] = {**kept, **new.get("artefacts", {})}
    return merged
