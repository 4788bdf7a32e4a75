"""What ``--retrain-chapters`` replaces of the committed archive (:func:`retrain_plan`), and
``python -m adt.artifact.model_card``, which rewrites the model card (:mod:`adt.training.card`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from adt.config.provenance import default_output_dir, read_manifest
from adt.core.io import read_json
from adt.training.archive import ARCHIVE_ROOT, archived_models
from adt.training.card import (
    FULL_AUTOATTACK,
    MODEL_CARD,
    model_card,
    stale_model_card,
    write_model_card,
)

__all__ = ["MODEL_CARD", "model_card", "write_model_card", "stale_model_card", "retrain_plan",
           "STUDY_RETRAIN", "RETRAIN_HELP"]


#: How to retrain the budget study's runs, which ``--retrain-chapters`` leaves alone:
#: ``python -m adt.budget_study`` restores the archive into any ``--runs-root`` first, so it
#: needs an archive folder of its own (docs/reproduce.md, "Retraining").
STUDY_RETRAIN = ("python -m adt.budget_study --profile quick --runs-root data/runs-study "
                 "--archive-root data/archive-study (both new folders: every study run is "
                 "retrained and archived there, data/archive/ untouched; docs/reproduce.md, "
                 "Retraining)")
RETRAIN_HELP = ("retrain the chapters' runs (every method x seed of the profile, and chapter "
                "6's budget check: 20 under quick), not the budget study's others (docs/"
                "reproduce.md, Retraining, says how to retrain those); prints the hours it "
                "expects first")


def _measured_seconds(folder: Path, tables: Sequence[str] = ("eval.json", FULL_AUTOATTACK)
                      ) -> tuple[float | None, float | None]:
    """A committed run's training seconds (``metrics.json``) and evaluation seconds (its
    stored ``tables``), as measured when it was made; None where not recorded."""
    metrics = folder / "metrics.json"
    train = read_json(metrics).get("wall_time_s") if metrics.is_file() else None
    tables = [folder / name for name in tables if (folder / name).is_file()]
    evaluate = sum(read_json(t)["timing"]["total_s"] for t in tables) if tables else None
    return train, evaluate


def retrain_plan(profile: str, workers: int | None = None) -> list[str]:
    """What ``--retrain-chapters`` retrains for ``profile`` and how long it should take, as
    lines to print before it starts: the chapters' runs (:mod:`adt.artifact.prepare`'s
    jobs), the budget study's committed runs it leaves alone, and an estimate in hours: the
    committed runs' own measured training and evaluation seconds (the last batch's rate per
    unit of cost where a run is not committed) shared by ``workers`` one-thread processes
    (None: one per core; below 2 the notebooks do the work, counted as one process), then
    the notebooks' last times. Imports torch (the jobs' costs)."""
    from adt.artifact.batch_progress import prepare_prior
    from adt.artifact.prepare import evaluation_jobs, training_jobs
    from adt.config.profiles import get_profile
    from adt.training.runs import run_dir

    prof, workers = get_profile(profile), (os.cpu_count() or 1) if workers is None else workers
    jobs, manifest = training_jobs(prof), read_manifest(default_output_dir(profile))
    prior = prepare_prior(profile, manifest)
    evaluation_costs = {run_dir(j.profile, j.method, j.seed, "."): j.cost
                        for j in evaluation_jobs(prof)}
    train = evaluate = 0.0
    for job in jobs:
        trained, evaluated = _measured_seconds(run_dir(job.profile, job.method, job.seed,
                                                       ARCHIVE_ROOT))
        train += job.cost * prior.get("train", 0) if trained is None else trained
        evaluate += (evaluation_costs.get(run_dir(job.profile, job.method, job.seed, "."), 1.0)
                     * prior.get("evaluate", 0) if evaluated is None else evaluated)
    chapters = {run_dir(j.profile, j.method, j.seed, ".") for j in jobs}
    others = [m for m in archived_models() if m.profile == profile
              and Path(".", m.relative) not in chapters]
    notebooks = sum(manifest.get("notebook_seconds", {}).values())
    processes = workers if workers >= 2 else 1
    hours = ((train + evaluate) / processes + notebooks) / 3600
    study = sum(t or 0.0 for m in others for t in _measured_seconds(
        m.folder, ("eval.json", "eval_a_rob.json"))) / processes
    return [f"[adt.pipeline] --retrain-chapters: retraining the chapters' {len(jobs)} runs of "
            f"{profile!r} (every method x seed of the profile, and chapter 6's budget check), "
            f"not the budget study's {len(others)} other committed runs (chapter 6 reads those "
            "from data/runs/ as they are; this option does not restore them from "
            f"data/archive/); to retrain the study (about {study / 3600:.1f} h more by its runs' "
            f"measured times): {STUDY_RETRAIN}",
            f"[adt.pipeline] expected: about {hours:.1f} h (an estimate from the committed "
            f"runs' measured times: training {train / 3600:.1f} h and evaluating "
            f"{evaluate / 3600:.1f} h of one-thread work shared by {processes} process(es), "
            f"then the notebooks, {notebooks / 60:.0f} min last time)"]


if __name__ == "__main__":  # python -m adt.artifact.model_card: rewrite docs/models.md
    changed = write_model_card()
    print(f"{MODEL_CARD}: {'rewritten from' if changed else 'already that of'} data/archive/")
    sys.exit(0)
