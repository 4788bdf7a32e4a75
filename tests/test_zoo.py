"""The committed models (``data/archive/``) as a model zoo, on the committed archive itself.

Every ``run.pt`` loads with torch's weights-only unpickler and no restore step
(``adt.load_checkpoint``, ``adt.load_model`` by name, ``adt.load_run``), ``python -m
adt.evaluate`` takes a committed run (file or folder) with its dataset and protocol from the
run's metadata and writes nothing into the archive, and ``docs/models.md`` lists every
committed model with its numbers and SHA-256, checked by ``make check-fresh``. Nothing is
trained; each test takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adt
from adt.artifact import model_card
from adt.config.provenance import REPO_ROOT, file_hash
from adt.evaluation import cli
from adt.evaluation.checkpoints import load_checkpoint
from adt.training.archive import (
    ARCHIVE_ROOT,
    ArchivedModel,
    archived_models,
    archived_runs,
    find_archived,
)
from adt.training.modules import load_run

MODELS = archived_models()
pytestmark = pytest.mark.skipif(not MODELS, reason="no committed run in data/archive/")


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


def _example(epochs: int | None = None) -> ArchivedModel:
    """A committed model (of ``epochs`` when given): the first of the sorted list."""
    return next(m for m in MODELS if epochs is None or m.epochs == epochs)


# --- every committed model loads safely ------------------------------------------------------

def test_every_committed_run_pt_loads_weights_only_with_its_identity() -> None:
    assert len(MODELS) == len(archived_runs())  # every run.pt has its record
    for model in MODELS:
        loaded = load_checkpoint(model.checkpoint)
        assert loaded.layout == "run" and not loaded.model.training
        assert {k: loaded.meta[k] for k in ("profile", "method", "seed", "dataset", "epochs")} == {
            "profile": model.profile, "method": model.method, "seed": model.seed,
            "dataset": model.dataset, "epochs": model.epochs}, model.describe()


def test_a_run_folder_and_its_run_pt_give_the_same_classifier() -> None:
    model = _example()
    by_folder, by_file = load_checkpoint(model.folder), load_checkpoint(model.checkpoint)
    assert by_folder.path == model.checkpoint
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(by_folder.model(x), by_file.model(x))


def test_load_model_by_name_reads_the_archive_directly() -> None:
    for epochs in sorted({m.epochs for m in MODELS}):
        wanted = _example(epochs)
        model = adt.load_model(wanted.profile, wanted.method, seed=wanted.seed, epochs=epochs)
        assert isinstance(model, torch.nn.Module) and not model.training
        reference = load_checkpoint(wanted.checkpoint).model
        x = torch.rand(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(model(x), reference(x))
    # the profile's own recipe when epochs is left out; a profile folder names one too
    own = find_archived("quick", "adt_exp", 0)
    assert own.profile_folder == "quick"
    longer = [m for m in MODELS if m.profile_folder != m.profile]
    if longer:
        assert find_archived(longer[0].profile_folder, longer[0].method,
                             longer[0].seed) == longer[0]


def test_a_model_not_committed_is_refused_with_the_list_of_those_that_are() -> None:
    with pytest.raises(FileNotFoundError) as info:
        adt.load_model("quick", "adt_exp", seed=99)
    message = str(info.value)
    assert "no committed model of profile 'quick', method 'adt_exp', seed 99" in message
    assert "'quick' at 8 epochs: adt_exp (seeds 0-" in message and "docs/models.md" in message
    assert "\n" not in message and "\x1b" not in message


def test_load_run_reads_a_committed_run_without_restoring_it(tmp_path: Path) -> None:
    empty = tmp_path / "runs"
    run = load_run("quick", "adt_exp", 0, device="cpu", runs_root=empty)
    assert run.finished and not run.model.training
    assert run.path == ARCHIVE_ROOT / "quick" / "mnist5k" / "adt_exp-seed0"
    assert not empty.exists()  # nothing restored
    same = load_run("quick", "adt_exp", 0, device="cpu", runs_root=ARCHIVE_ROOT)
    assert torch.equal(same.model.features[0].weight, run.model.features[0].weight)
    with pytest.raises(FileNotFoundError, match=r"none committed in data/archive/quick/mnist5k"
                                                r"/adt_exp-seed99.*adt.load_model"):
        load_run("quick", "adt_exp", 99, device="cpu", runs_root=empty)


def test_a_checkpoint_holding_other_objects_is_refused_in_one_plain_line(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "argparse.Namespace" in message and "torch.save(model.state_dict(), path)" in message
    assert "\x1b" not in message and "\n" not in message


# --- the command line on committed runs ------------------------------------------------------

def test_the_command_line_infers_dataset_and_protocol_and_leaves_the_archive_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _example()
    before = _snapshot(ARCHIVE_ROOT)
    for target in (model.folder, model.checkpoint):
        out = tmp_path / f"{target.name}.json"
        code = cli.main(["--checkpoint", str(target), "--examples", "4", "--attacks", "FGSM",
                         "--no-sanity", "--output", str(out), "--no-progress", "--device",
                         "cpu"])
        assert code == 0
        printed = capsys.readouterr().out
        assert f"{model.dataset}, epsilon 0.3, protocol '{model.profile}' (from the run's " \
               "metadata: dataset, protocol)" in printed
        assert "estimated time: about" in printed and "an estimate" in printed
        blob = json.loads(out.read_text())
        assert blob["meta"]["dataset"] == model.dataset and blob["n_examples"] == 4
        assert blob["meta"]["run_method"] == model.method
    assert _snapshot(ARCHIVE_ROOT) == before  # the default output is not in the archive
    assert cli._default_output(model.checkpoint).is_relative_to(cli.EVALUATIONS)


def test_python_m_adt_evaluate_on_a_committed_run_from_another_folder(tmp_path: Path) -> None:
    """As on a fresh clone: no restore step, no data/runs; run from an unrelated folder."""
    model = _example()
    env = {**os.environ, "ADT_PROGRESS": "0", "PYTHONPATH": str(REPO_ROOT),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "adt.evaluate", "--checkpoint",
                           str(model.checkpoint), "--examples", "10", "--attacks", "FGSM",
                           "PGD-20", "--output", str(tmp_path / "t.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| PGD-20 | white | 10 |" in done.stdout and "estimated time" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # nothing else written


def test_bad_output_is_refused_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    model = _example()
    for output, expected in (("/proc/x.json", "--output /proc/x.json cannot be written"),
                             (str(REPO_ROOT), "is a folder; give a file name")):
        with pytest.raises(SystemExit) as info:
            cli.main(["--checkpoint", str(model.folder), "--output", output])
        assert info.value.code == 2
        out, err = capsys.readouterr()
        assert out == "" and expected in err and "Traceback" not in err


def test_the_autoattack_protocol_is_the_original_autoattack_alone() -> None:
    loaded = load_checkpoint(_example().checkpoint)
    plan = cli.plan_evaluation(loaded, protocol="autoattack", output="/tmp/unused.json")
    assert [s.name for s in plan.specs] == ["Clean", "Original AutoAttack (pyautoattack)"]
    assert not plan.sanity and plan.checks is None and plan.settings.n_examples == 200
    data = adt.load_dataset(plan.dataset)
    estimate = cli.estimate_evaluation(plan, data)
    assert estimate.seconds > 0 and estimate.batch == 200
    own = cli.plan_evaluation(loaded, output="/tmp/unused.json")
    assert own.protocol == "quick" and own.inferred == ("dataset", "protocol") and own.sanity


# --- the model card ----------------------------------------------------------------------------

def test_the_model_card_lists_every_committed_model_sorted_with_its_numbers() -> None:
    text = model_card.model_card()
    assert text == model_card.model_card()  # deterministic
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(MODELS)
    for model, row in zip(MODELS, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:4] == [f"`{model.profile_folder}`", model.method, str(model.seed),
                             str(model.epochs)]
        assert cells[8] == f"`{model.checkpoint.relative_to(REPO_ROOT).as_posix()}`"
        assert cells[9] == f"`{file_hash(model.checkpoint)}`"
        clean, a_rob = float(cells[4]), float(cells[5])
        assert 0 <= a_rob <= clean <= 100 and int(cells[7]) > 0
        if (model.folder / "eval_full_autoattack.json").is_file():
            assert cells[6].startswith("broke ")
    assert "l_inf, eps = 0.3" in text and "adt.load_model(" in text
    assert "python -m adt.evaluate --checkpoint data/archive/" in text


def test_the_committed_card_is_that_of_the_committed_archive() -> None:
    """What `make check-fresh` checks: rewrite it with `python -m adt.artifact.model_card`."""
    assert model_card.stale_model_card() == [], model_card.stale_model_card()


def test_a_changed_archive_makes_the_card_stale_and_rewriting_it_fixes_that(
        tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    for model in MODELS[:2]:
        shutil.copytree(model.folder, archive / model.relative)
    card = tmp_path / "models.md"
    assert model_card.stale_model_card(card, archive, tmp_path)[0].endswith(
        "missing; write it with `python -m adt.artifact.model_card`")
    assert model_card.write_model_card(card, archive, tmp_path)
    assert not model_card.write_model_card(card, archive, tmp_path)  # fresh: unchanged
    assert model_card.stale_model_card(card, archive, tmp_path) == []
    shutil.copytree(MODELS[2].folder, archive / MODELS[2].relative)  # a run is committed
    assert "data/archive/ changed" in model_card.stale_model_card(card, archive, tmp_path)[0]
    assert "2 models" in card.read_text() and "| `" in card.read_text()


def test_check_fresh_reports_a_stale_card(monkeypatch, capsys) -> None:
    from adt.artifact import pipeline, readme

    monkeypatch.setattr(pipeline, "check_fresh", lambda *args, **kwargs: [])
    monkeypatch.setattr(readme, "stale_blocks", lambda *args, **kwargs: [])
    monkeypatch.setattr(model_card, "stale_model_card", lambda *args, **kwargs: ["card: stale"])
    assert pipeline.main(["--check-fresh"]) == 1
    assert "[adt.pipeline] stale: card: stale" in capsys.readouterr().out
    monkeypatch.setattr(model_card, "stale_model_card", lambda *args, **kwargs: [])
    assert pipeline.main(["--check-fresh"]) == 0
