"""The batch of ``python -m adt.pipeline`` checked before anything is touched: the profile,
the device (CUDA when asked for), the notebook names and the output folder's manifest, and
where the results go (:func:`plan_pipeline`, a :class:`PipelinePlan`). Imports no torch
(it asks torch about CUDA only when CUDA is asked for). The execution is
:mod:`adt.artifact.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adt.config.provenance import (
    COMMITTED_PROFILE,
    CUDA_PROFILES,
    MANIFEST,
    PROFILE_NAMES,
    REPO_ROOT,
    TEMPORARY_PROFILES,
    default_output_dir,
    read_manifest,
)

__all__ = ["NOTEBOOKS", "DEVICES", "PipelinePlan", "plan_pipeline", "check_device",
           "COMMITTED_NOTEBOOKS", "COMMITTED_FIGURES"]

NOTEBOOKS = ("01_method", "02_adt_exp", "03_amortized", "04_evaluation", "05_figures",
             "06_claims")
DEVICES = ("auto", "cpu", "cuda")
COMMITTED_NOTEBOOKS = REPO_ROOT / "notebooks"
COMMITTED_FIGURES = REPO_ROOT / "figures"


def _cuda_available() -> bool:
    """Whether torch sees a GPU (torch is imported here only, when CUDA is asked for)."""
    import torch

    return bool(torch.cuda.is_available())


def check_device(device: str, profile: str) -> None:
    """``device`` is one of :data:`DEVICES`, and CUDA (asked for, or the profile's default
    under ``auto``) is available."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    wanted = device if device != "auto" else ("cuda" if profile in CUDA_PROFILES else "auto")
    if wanted == "cuda" and not _cuda_available():
        why = "--device cuda" if device == "cuda" else f"profile {profile!r} trains on CUDA"
        raise ValueError(f"{why}, but CUDA is not available on this machine; run on a GPU "
                         "machine, or pass --device cpu (slow for this profile) or a CPU "
                         f"profile ({COMMITTED_PROFILE!r}). Nothing was touched")


@dataclass(frozen=True)
class PipelinePlan:
    """A checked batch: what runs, and where its results go once it has succeeded."""

    profile: str
    device: str
    notebooks: tuple[str, ...]
    source: Path  # the notebooks to execute
    target: Path  # where the executed notebooks go
    output: Path  # the artefacts' folder (MANIFEST.json)

    @property
    def runs_in_output(self) -> bool:
        """Whether the notebooks keep their runs in ``<output>/runs`` (temporary profiles)."""
        return self.profile in TEMPORARY_PROFILES


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def plan_pipeline(profile: str = COMMITTED_PROFILE, device: str = "auto",
                  output_dir: str | Path | None = None, executed_dir: str | Path | None = None,
                  notebooks: tuple[str, ...] = NOTEBOOKS,
                  notebooks_dir: str | Path | None = None) -> PipelinePlan:
    """Check a batch before anything is touched (profile, device, notebook names, the
    output folder's manifest) and say where its results go; raises ValueError naming the
    problem."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILE_NAMES)}")
    check_device(device, profile)
    source = Path(notebooks_dir) if notebooks_dir else COMMITTED_NOTEBOOKS
    notebooks = tuple(notebooks)
    if not notebooks:
        raise ValueError(f"no notebooks to run; name some of {', '.join(NOTEBOOKS)}")
    unknown = [n for n in notebooks if (notebooks_dir is None and n not in NOTEBOOKS)
               or not (source / f"{n}.ipynb").is_file()]
    if unknown:
        known = NOTEBOOKS if notebooks_dir is None else sorted(
            p.stem for p in source.glob("*.ipynb"))
        raise ValueError(f"unknown notebook(s) {unknown} in {source}; allowed: "
                         f"{', '.join(known) or 'none'}")
    output = Path(output_dir) if output_dir else default_output_dir(
        profile, profile in TEMPORARY_PROFILES)
    if executed_dir:
        target = Path(executed_dir)
    else:
        target = source if profile == COMMITTED_PROFILE else output / "notebooks"
    if profile != COMMITTED_PROFILE:
        for path, what, option in ((target, "notebooks", "--executed-dir"),
                                   (output, "figures", "--output-dir")):
            if _same(path, COMMITTED_NOTEBOOKS if what == "notebooks" else COMMITTED_FIGURES):
                raise ValueError(f"profile {profile!r} may not write the committed {what} "
                                 f"({path}); only {COMMITTED_PROFILE!r} does. Give another "
                                 f"{option}")
    stored = read_manifest(output).get("profile")
    if stored not in (None, profile):
        raise ValueError(f"{output / MANIFEST} lists artefacts of profile {stored!r}, not "
                         f"{profile!r}; give another --output-dir (default for {profile!r}: "
                         f"{default_output_dir(profile, profile in TEMPORARY_PROFILES)})")
    return PipelinePlan(profile, device, notebooks, source, target, output)
