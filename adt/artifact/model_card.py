"""The committed archive as the batch reports it: the model card ``docs/models.md`` (every
committed model of ``data/archive/``, one row each), and what ``--retrain-chapters``
replaces of it (:func:`retrain_plan`).

The card is written by the batch (``python -m adt.pipeline``; alone: ``python -m
adt.artifact.model_card``) and checked by ``make check-fresh`` (:func:`stale_model_card`), so
it follows the archive as runs are added. It is built from the runs' JSON files and the
SHA-256 of their ``run.pt`` only: no model is loaded, torch is not imported.

A row: the profile folder, method, seed and epochs of the run (its ``metrics.json``), its
clean accuracy and A_rob (the per-example worst case over every white-box attack of its
profile's protocol) from its stored table (``eval.json``, else the A_rob cascade
``eval_a_rob.json``) with the number of test images, what the authors' original AutoAttack
did to the A_rob survivors of its random sample (``eval_full_autoattack.json``, where
measured), and the file with its SHA-256.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adt.config.provenance import REPO_ROOT, default_output_dir, file_hash, read_manifest
from adt.core.io import atomic_write, markdown_table, read_json
from adt.training.archive import ARCHIVE_ROOT, ArchivedModel, archived_models

__all__ = ["MODEL_CARD", "model_card", "write_model_card", "stale_model_card", "retrain_plan",
           "STUDY_RETRAIN", "RETRAIN_HELP"]

#: Where the card is, in the repository.
MODEL_CARD = REPO_ROOT / "docs" / "models.md"
#: The stored tables a row reads, in order of preference (the full protocol first).
TABLES = ("eval.json", "eval_a_rob.json")
FULL_AUTOATTACK = "eval_full_autoattack.json"
REGENERATE = "python -m adt.artifact.model_card"
COLUMNS = ("profile folder", "method", "seed", "epochs", "clean %", "A_rob %",
           "original AutoAttack", "test images", "file", "SHA-256")


def _table(folder: Path) -> dict[str, Any] | None:
    """The run's stored table (:data:`TABLES`), None when it has none."""
    path = next((folder / name for name in TABLES if (folder / name).is_file()), None)
    return None if path is None else read_json(path)


def _autoattack(folder: Path) -> str:
    """What the original AutoAttack did to the A_rob survivors of its sample, or a dash."""
    path = folder / FULL_AUTOATTACK
    if not path.is_file():
        return "-"
    blob = read_json(path)
    attacked = int(blob["n_examples"])
    held = round(float(blob["robust_accuracy"]) * attacked)
    return f"broke {attacked - held} of {attacked} A_rob survivors"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def _row(model: ArchivedModel, root: Path) -> list[str]:
    table = _table(model.folder) or {}
    accuracy = table.get("accuracy", {})
    try:
        shown = model.checkpoint.relative_to(root).as_posix()
    except ValueError:
        shown = model.checkpoint.as_posix()
    return [f"`{model.profile_folder}`", model.method, str(model.seed), str(model.epochs),
            _percent(accuracy.get("Clean")), _percent(table.get("robust_accuracy")),
            _autoattack(model.folder), str(table.get("n_examples", "-")), f"`{shown}`",
            f"`{file_hash(model.checkpoint)}`"]


def _architecture(model: ArchivedModel) -> str:
    metrics = read_json(model.folder / "metrics.json") if (
        model.folder / "metrics.json").is_file() else {}
    kwargs = ", ".join(f"{k}={v}" for k, v in (metrics.get("model_kwargs") or {}).items())
    return f"{metrics.get('model', '?')}({kwargs})"


def _threat_models(models: Sequence[ArchivedModel]) -> str:
    """The datasets, budgets and architectures of the rows, one bullet each."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for m in models:
        eps = "?" if m.epsilon is None else f"{m.epsilon:g}"
        seen.setdefault((m.dataset, eps, _architecture(m)), []).append(m.profile_folder)
    return "\n".join(
        f"- `{dataset}`, l_inf, eps = {eps}; model `{arch}` (profile folders "
        f"{', '.join(f'`{f}`' for f in sorted(set(folders)))})"
        for (dataset, eps, arch), folders in sorted(seen.items()))


def _usage(models: Sequence[ArchivedModel], root: Path) -> str:
    first = models[0]
    try:
        folder = first.folder.relative_to(root).as_posix()
    except ValueError:
        folder = first.folder.as_posix()
    return f"""Load one in a line of Python: the classifier in eval mode, read from the archive
directly (no restore step), its architecture and dataset from the run:

```python
import adt
model = {first.load_call()}
```

Evaluate one from the command line (dataset and protocol from the run's metadata; it prints
an estimate of the time first, then the table):

```bash
python -m adt.evaluate --checkpoint {folder} --examples 10 --attacks FGSM PGD-20
python -m adt.evaluate --checkpoint {folder} --protocol autoattack  # the authors' AutoAttack alone
```"""


def model_card(archive_root: str | Path = ARCHIVE_ROOT, root: Path = REPO_ROOT) -> str:
    """The text of ``docs/models.md`` for the archive at ``archive_root`` (paths shown
    relative to ``root``): deterministic, sorted as :func:`archived_models`."""
    models = archived_models(archive_root)
    intro = ("# Committed models\n\n<!-- generated from data/archive/ by "
             f"adt/artifact/model_card.py; do not edit: `{REGENERATE}` rewrites it and "
             "`make check-fresh` fails when it differs -->\n\n")
    if not models:
        return intro + "No model is committed in `data/archive/` yet.\n"
    rows = [_row(m, Path(root)) for m in models]
    return (intro + f"""Every trained run committed in `data/archive/`: {len(models)} models. Back to the
[README](../README.md); evaluating them: [docs/evaluation.md](evaluation.md).

Threat model and architecture:

{_threat_models(models)}

{_usage(models, Path(root))}

Columns: the run's profile folder (the profile's name, with `-<hash>` for a variant of its
recipe, e.g. the budget study's longer ones), method, seed and training epochs; clean
accuracy and A_rob (the per-example worst case over every white-box attack of the profile's
protocol: REPRODUCTION.md, *Evaluation protocol*) on the first test images of the
dataset, from the run's `eval.json` or its A_rob cascade `eval_a_rob.json`; what the
authors' original AutoAttack did to the A_rob survivors of the run's random sample
(`eval_full_autoattack.json`, where measured: any it broke means A_rob overstates the
robustness); the file and its SHA-256.

""" + markdown_table(COLUMNS, rows))


def write_model_card(path: Path = MODEL_CARD, archive_root: str | Path = ARCHIVE_ROOT,
                     root: Path = REPO_ROOT) -> bool:
    """Rewrite the card at ``path`` when it differs from :func:`model_card`; returns
    whether it changed."""
    text = model_card(archive_root, root)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write(path, lambda f: f.write(text.encode()))
    return True


def stale_model_card(path: Path = MODEL_CARD, archive_root: str | Path = ARCHIVE_ROOT,
                     root: Path = REPO_ROOT) -> list[str]:
    """Why the card at ``path`` is not that of the archive (empty: it is); what
    ``make check-fresh`` adds to its problems."""
    if not path.is_file():
        return [f"{path}: missing; write it with `{REGENERATE}`"]
    if path.read_text(encoding="utf-8") != model_card(archive_root, root):
        return [f"{path}: not the card of the committed archive (data/archive/ changed); "
                f"rewrite it with `{REGENERATE}`"]
    return []


# ----------------------------------------------------------------------------- retraining

#: How to retrain the budget study's runs, which ``--retrain-chapters`` leaves alone:
#: ``python -m adt.budget_study`` restores the archive into any ``--runs-root`` first, so it
#: needs an archive folder of its own (docs/reproduce.md, "Retraining").
STUDY_RETRAIN = ("python -m adt.budget_study --profile quick --runs-root data/runs-study "
                 "--archive-root data/archive-study (both new folders: every study run is "
                 "retrained and archived there, data/archive/ untouched)")
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
