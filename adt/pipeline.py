"""Regenerate every table and figure: run the five notebooks in order with papermill.

    python -m adt.pipeline --profile quick --device auto      # what `make reproduce` runs

Executed notebooks are written in place (or to ``--executed-dir``), without papermill's
injected-parameters cell (see :func:`clean_executed`); artefacts go to
the profile's output folder and are listed in its ``MANIFEST.json``. Finished runs
in ``data/runs/`` are reused unless ``--force-retrain``. A failing cell stops the
batch with a message naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from adt.io import read_json
from adt.provenance import (
    MANIFEST,
    PROFILE_NAMES,
    REPO_ROOT,
    TEMPORARY_PROFILES,
    default_output_dir,
    record_batch,
)

__all__ = ["NOTEBOOKS", "run_pipeline", "PipelineError", "clean_executed"]

NOTEBOOKS = ("01_method", "02_adt_exp", "03_amortized", "04_evaluation", "05_figures")


class PipelineError(RuntimeError):
    """A notebook cell failed; the message names the notebook and the cell."""


def clean_executed(path: str | Path) -> None:
    """Make an executed notebook fit to commit and to run again under nbval.

    Papermill adds a cell with the injected parameters: it is dropped, so the notebook's
    own ``parameters`` cell (whose defaults read ``ADT_PROFILE`` etc.) rules when it runs
    again; the profile that produced the outputs stays in the metadata and in every
    figure's caption. Absolute paths and per-cell timings are removed from the metadata.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells
                if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for c in nb.cells:
        c.get("metadata", {}).pop("papermill", None)
        c.get("metadata", {}).pop("execution", None)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path", "start_time", "end_time", "duration"):
        meta.pop(key, None)
    meta.get("parameters", {}).pop("output_dir", None)
    nbformat.write(nb, path)


def run_pipeline(profile: str = "quick", device: str = "auto", output_dir: str | Path | None = None,
                 executed_dir: str | Path | None = None, force_retrain: bool = False,
                 notebooks: tuple[str, ...] = NOTEBOOKS, log_output: bool = False,
                 notebooks_dir: str | Path | None = None) -> Path:
    """Execute ``notebooks`` (names in ``notebooks_dir``, default ``notebooks/``) in order;
    return the path of the manifest they filled."""
    import papermill as pm

    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILE_NAMES)}")
    out = Path(output_dir) if output_dir else default_output_dir(profile,
                                                                 profile in TEMPORARY_PROFILES)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the manifest lists this batch's artefacts only
    source = Path(notebooks_dir) if notebooks_dir else REPO_ROOT / "notebooks"
    target = Path(executed_dir) if executed_dir else source
    target.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for name in notebooks:
        started = time.perf_counter()
        print(f"[adt.pipeline] {name} (profile {profile}, device {device})", flush=True)
        try:
            pm.execute_notebook(
                str(source / f"{name}.ipynb"), str(target / f"{name}.ipynb"),
                parameters={"profile": profile, "device": device, "output_dir": str(out),
                            "force_retrain": force_retrain},
                cwd=str(source), progress_bar=False, log_output=log_output)
            clean_executed(target / f"{name}.ipynb")
        except pm.PapermillExecutionError as err:
            raise PipelineError(f"{source.name}/{name}.ipynb failed in cell {err.cell_index} "
                                f"(execution count {err.exec_count}): {err.ename}: {err.evalue}. "
                                f"The executed notebook with the traceback is "
                                f"{target / f'{name}.ipynb'}") from err
        timings[name] = round(time.perf_counter() - started, 1)
    manifest_path = record_batch(out, profile=profile, device=device,
                                 notebook_seconds=timings)
    print(f"[adt.pipeline] {len(read_json(manifest_path)['artefacts'])} artefacts listed in "
          f"{manifest_path}")
    return manifest_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--executed-dir", default=None,
                        help="write executed notebooks here instead of in place")
    parser.add_argument("--force-retrain", action="store_true")
    parser.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), choices=NOTEBOOKS)
    args = parser.parse_args(argv)
    try:
        run_pipeline(args.profile, args.device, args.output_dir, args.executed_dir,
                     args.force_retrain, tuple(args.notebooks), log_output=True)
    except PipelineError as err:
        print(f"[adt.pipeline] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
