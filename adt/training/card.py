"""The model card ``docs/models.md``: every committed model of ``data/archive/``, one row
each, built from the runs' JSON files and the SHA-256 of their ``run.pt`` only (no model is
loaded, torch is not imported).

It is written by the batch (``python -m adt.pipeline``; alone: ``python -m
adt.artifact.model_card``), by ``python -m adt.budget_study`` with each run it archives, and
checked by ``make check-fresh`` (:func:`stale_model_card`), so it follows the archive.

A row: the profile folder, method, seed and epochs of the run (its ``metrics.json``), its
clean accuracy and A_rob (the per-example worst case over every white-box attack of its
profile's protocol) from its stored table (``eval.json``, else the A_rob cascade
``eval_a_rob.json``) with the number of test images, what the authors' original AutoAttack
did to the A_rob survivors of its random sample (``eval_full_autoattack.json``, where
measured), and the file with its SHA-256.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adt.config.provenance import REPO_ROOT, file_hash
from adt.core.io import atomic_write, markdown_table, read_json
from adt.training.archive import ARCHIVE_ROOT, ArchivedModel, archived_models

__all__ = ["MODEL_CARD", "model_card", "write_model_card", "stale_model_card", "REGENERATE",
           "FULL_AUTOATTACK"]

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
