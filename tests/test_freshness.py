"""`make check-fresh`: the committed outputs must be those of the code in the tree; and the
batch's other checks before any work (its folders, what ``--retrain-chapters`` retrains)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from adt.config import provenance
from adt.config.provenance import check_fresh, code_hashes, file_hash, notebook_code_hash


def notebook(path: Path, code: str, output: str = "") -> None:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# title"]},
             {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]},
              "source": ["profile = 'x'"], "outputs": [], "execution_count": 1},
             {"cell_type": "code", "metadata": {}, "source": [code],
              "outputs": [{"output_type": "stream", "name": "stdout", "text": [output]}],
              "execution_count": 2}]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))


def tree(root: Path) -> Path:
    """A miniature checkout: adt/, notebooks/01_a.ipynb, figures/ with one fresh artefact."""
    (root / "adt").mkdir(parents=True)
    (root / "adt" / "core.py").write_text("X = 1\n")
    (root / "notebooks").mkdir()
    notebook(root / "notebooks" / "01_a.ipynb", "print(1)", "1")
    figures = root / "figures"
    figures.mkdir()
    (figures / "fig.png").write_bytes(b"png")
    manifest = {"code": code_hashes(root / "notebooks", ["01_a"], root=root,
                                    executed_dir=root / "notebooks"),
                "artefacts": {"fig": {
                    "files": ["fig.png"], "notebook": "notebooks/01_a.ipynb",
                    "sha256": {"fig.png": file_hash(figures / "fig.png")},
                    "code": {"adt": provenance.package_hash(root),
                             "notebook": notebook_code_hash(root / "notebooks" / "01_a.ipynb")}}}}
    (figures / "MANIFEST.json").write_text(json.dumps(manifest))
    return root


def test_a_freshly_generated_tree_passes(tmp_path):
    assert check_fresh(root=tree(tmp_path)) == []


def test_outputs_and_injected_cells_do_not_change_a_notebooks_code_hash(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    notebook(a, "print(1)", "1")
    notebook(b, "print(1)", "a different output")
    assert notebook_code_hash(a) == notebook_code_hash(b)
    notebook(b, "print(2)", "1")
    assert notebook_code_hash(a) != notebook_code_hash(b)


def test_a_change_to_the_package_makes_everything_stale(tmp_path):
    root = tree(tmp_path)
    (root / "adt" / "core.py").write_text("X = 2\n")
    problems = check_fresh(root=root)
    assert any("MANIFEST.json" in p and "adt/" in p for p in problems)
    assert any(p.startswith("fig: made by another adt/") for p in problems)


def test_a_changed_code_cell_is_named(tmp_path):
    root = tree(tmp_path)
    notebook(root / "notebooks" / "01_a.ipynb", "print('changed')", "1")
    problems = check_fresh(root=root)
    assert any("01_a.ipynb: its code cells changed" in p for p in problems)
    assert any("made by other code cells" in p for p in problems)


def test_a_notebook_with_other_outputs_is_named(tmp_path):
    root = tree(tmp_path)
    notebook(root / "notebooks" / "01_a.ipynb", "print(1)", "an output of another run")
    assert check_fresh(root=root) == [f"{root / 'notebooks' / '01_a.ipynb'}: its outputs are not "
                                      "those the recorded batch wrote"]


def test_a_replaced_or_missing_figure_is_named(tmp_path):
    root = tree(tmp_path)
    (root / "figures" / "fig.png").write_bytes(b"another png")
    assert any("not the file the notebook wrote" in p for p in check_fresh(root=root))
    (root / "figures" / "fig.png").unlink()
    assert any("is missing" in p for p in check_fresh(root=root))


def test_an_unexecuted_notebook_is_named(tmp_path):
    root = tree(tmp_path)
    shutil.copy(root / "notebooks" / "01_a.ipynb", root / "notebooks" / "02_b.ipynb")
    assert check_fresh(root=root) == [f"{root / 'notebooks' / '02_b.ipynb'}: not executed by "
                                      "the recorded batch"]


def test_clean_executed_drops_the_injected_cell_renumbers_and_drops_widget_state(tmp_path):
    import nbformat

    from adt.artifact.pipeline import clean_executed

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("profile = 'quick'", metadata={"tags": ["parameters"]},
                                  execution_count=1),
        nbformat.v4.new_code_cell("profile = 'smoke'",
                                  metadata={"tags": ["injected-parameters"]}, execution_count=2),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("1 + 1", execution_count=3, outputs=[
            nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    clean_executed(path)
    cleaned = nbformat.read(path, as_version=4)
    code = [c for c in cleaned.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["profile = 'quick'", "1 + 1"]
    assert [c.execution_count for c in code] == [1, 2]
    assert code[1].outputs[0]["execution_count"] == 2
    assert "widgets" not in cleaned.metadata


def test_an_orphan_is_named_with_what_to_do_and_the_check_fails(tmp_path, capsys, monkeypatch):
    import functools

    from adt.artifact import model_card, pipeline, readme

    root = tree(tmp_path)
    monkeypatch.setattr(pipeline, "check_fresh", functools.partial(check_fresh, root=root))
    # the repository's own README blocks and model card are checked elsewhere
    monkeypatch.setattr(readme, "stale_blocks", lambda *args, **kwargs: [])
    monkeypatch.setattr(model_card, "stale_model_card", lambda *args, **kwargs: [])
    assert pipeline.main(["--check-fresh"]) == 0
    (root / "figures" / "tables").mkdir()
    orphan = root / "figures" / "tables" / "tab04_old.md"
    orphan.write_text("| a |\n")
    problems = check_fresh(root=root)
    assert len(problems) == 1
    assert problems[0].startswith(f"{orphan}: an orphan")
    assert "delete it, or regenerate with `make reproduce`" in problems[0]
    assert pipeline.main(["--check-fresh"]) == 1
    out = capsys.readouterr().out
    assert f"{orphan}: an orphan" in out and "delete it" in out


def test_listed_files_and_the_manifest_are_not_orphans(tmp_path):
    root = tree(tmp_path)
    figures = root / "figures"
    assert provenance.orphans(figures) == []  # fig.png is listed; MANIFEST.json is the manifest
    (figures / "fig.pdf").write_bytes(b"pdf")
    assert provenance.orphans(figures) == [figures / "fig.pdf"]


def test_a_table_and_a_document_listed_in_the_manifest_are_not_orphans(tmp_path):
    root = tree(tmp_path)
    figures = root / "figures"
    (figures / "tables").mkdir()
    (figures / "tables" / "tab.csv").write_text("a\n1\n")
    (figures / "CLAIMS.md").write_text("# claims\n")
    manifest = json.loads((figures / "MANIFEST.json").read_text())
    manifest["artefacts"]["tab"] = {"files": ["tables/tab.csv"]}
    manifest["artefacts"]["CLAIMS"] = {"files": ["CLAIMS.md"]}
    (figures / "MANIFEST.json").write_text(json.dumps(manifest))
    assert provenance.orphans(figures) == []


def test_a_profile_subfolder_with_its_own_manifest_is_its_own_scope(tmp_path):
    root = tree(tmp_path)
    fashion = root / "figures" / "fashion"
    (fashion / "notebooks").mkdir(parents=True)
    (fashion / "fig.png").write_bytes(b"png")
    (fashion / "notebooks" / "01_a.ipynb").write_text("{}")
    (fashion / "MANIFEST.json").write_text(json.dumps({
        "code": {"executed": {"01_a": "x"}},
        "artefacts": {"fig": {"files": ["fig.png"]}}}))
    assert check_fresh(root=root) == []
    # checked on its own, its executed notebooks (<output>/notebooks) are accounted for ...
    assert provenance.orphans(fashion) == []
    # ... and its orphans are named there
    (fashion / "stray.csv").write_text("a\n")
    assert provenance.orphans(fashion) == [fashion / "stray.csv"]
    assert check_fresh(root=root) == []


def test_a_subfolder_without_a_manifest_is_searched(tmp_path):
    root = tree(tmp_path)
    stray = root / "figures" / "cifar" / "fig.png"
    stray.parent.mkdir()
    stray.write_bytes(b"png")
    assert provenance.orphans(root / "figures") == [stray]


def test_runs_an_artefact_lists_in_the_output_folder_are_not_orphans(tmp_path):
    out = tmp_path / "out"
    (out / "runs" / "r1").mkdir(parents=True)
    (out / "runs" / "r1" / "history.json").write_text("{}")
    (out / "runs" / "r2").mkdir()
    (out / "runs" / "r2" / "history.json").write_text("{}")
    (out / "fig.png").write_bytes(b"png")
    (out / "MANIFEST.json").write_text(json.dumps({"artefacts": {"fig": {
        "files": ["fig.png"], "runs": ["<output>/runs/r1", "data/runs/elsewhere"]}}}))
    assert provenance.orphans(out) == [out / "runs" / "r2" / "history.json"]


# --- the batch's other checks before any work -------------------------------------------------

def _pipeline_error(argv: list[str], capsys) -> str:
    from adt.artifact import pipeline

    assert pipeline.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("python -m adt.pipeline: error: ")
    return err


def test_unwritable_and_missing_folders_are_refused_before_any_work(tmp_path, capsys,
                                                                   monkeypatch):
    from adt.artifact import pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("the batch started")

    monkeypatch.setattr(pipeline, "_sigint_raises", no_work)
    assert "--output-dir /proc/nope cannot be written" in _pipeline_error(
        ["--output-dir", "/proc/nope"], capsys)
    assert "--executed-dir /proc/x cannot be written" in _pipeline_error(
        ["--executed-dir", "/proc/x"], capsys)
    assert "--notebooks-dir /nonexistent does not exist" in _pipeline_error(
        ["--notebooks-dir", "/nonexistent"], capsys)
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in _pipeline_error(
        ["--notebooks-dir", str(tmp_path / "file")], capsys)
    assert "cannot be written" in _pipeline_error(
        ["--output-dir", str(tmp_path / "file" / "out")], capsys)
    pipeline.check_paths(tmp_path / "new" / "out", tmp_path, None)  # creatable: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probes left nothing


def test_retrain_chapters_says_what_it_retrains_and_how_long_before_it_starts() -> None:
    from adt.artifact.model_card import RETRAIN_HELP, retrain_plan
    from adt.artifact.pipeline import _parser

    lines = retrain_plan("quick", 2)
    assert len(lines) == 2 and all(line.startswith("[adt.pipeline] ") for line in lines)
    assert "retraining the chapters' 20 runs of 'quick'" in lines[0]
    assert "not the budget study's" in lines[0] and "--archive-root" in lines[0]
    assert "docs/reproduce.md" in lines[0]
    assert "expected: about" in lines[1] and " h (an estimate" in lines[1]
    one = retrain_plan("quick", 0)[1]  # the notebooks do the work: one process
    assert "shared by 1 process(es)" in one
    action = next(a for a in _parser()._actions if a.dest == "force_retrain")
    assert action.option_strings == ["--retrain-chapters", "--force-retrain"]
    assert action.help == RETRAIN_HELP and "not the budget study's" in RETRAIN_HELP
