"""The notebooks' outputs under the smoke profile, and the papermill pipeline's mechanics.

`make test` runs the six notebooks once, under nbval, in the same pytest session and
before this module (``ADT_PROFILE=smoke ADT_OUTPUT_DIR=<tmp> pytest ... notebooks/ tests/``):
the artefact checks read what that run left in ``$ADT_OUTPUT_DIR``. Run alone (no such
folder), the fixture runs the pipeline under smoke itself. The pipeline's own work
(papermill, cleaning the executed notebooks, the manifest's batch fields, errors) is
checked on tiny synthetic notebooks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import SESSION_STARTED, recording_notebook

from adt.artifact.pipeline import PipelineError, run_pipeline
from adt.artifact.plan import NOTEBOOKS
from adt.config.provenance import MANIFEST, PROFILE_NAMES, git_commit
from adt.core.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "figures" / "MANIFEST.json"
NOTEBOOK_PATHS = {f"notebooks/{name}.ipynb" for name in NOTEBOOKS}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _notebooks_of(manifest: dict) -> set[str]:
    return {entry.get("notebook") for entry in manifest["artefacts"].values()}


def nbval_output_dir() -> Path | None:
    """The output folder of this session's nbval run of the notebooks under smoke (`make
    test`), when its manifest lists artefacts of all six notebooks; else None."""
    out = os.environ.get("ADT_OUTPUT_DIR")
    if os.environ.get("ADT_PROFILE") != "smoke" or not out:
        return None
    manifest = Path(out) / MANIFEST
    if not manifest.is_file() or not NOTEBOOK_PATHS <= _notebooks_of(read_json(manifest)):
        return None
    return Path(out)


@dataclass
class Smoke:
    """The smoke outputs under test: the artefact folder and its manifest; ``executed``,
    the executed notebooks (only when the fixture ran the pipeline itself); and whether
    the committed figures/ and notebooks/ are as they were before the notebooks ran."""

    out: Path
    manifest: dict
    executed: Path | None
    figures_untouched: bool
    notebooks_untouched: bool = True


def _touched_since(folder: Path, started: float) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= started]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    out = nbval_output_dir()
    if out is not None:
        # the notebooks ran earlier in this session: nothing of figures/ may be newer
        return Smoke(out, read_json(out / MANIFEST), None,
                     not _touched_since(ROOT / "figures", SESSION_STARTED),
                     not _touched_since(ROOT / "notebooks", SESSION_STARTED))
    folder = tmp_path_factory.mktemp("pipeline")
    before = {name: _digest(ROOT / name) for name in ("figures", "notebooks")}
    # the defaults of `python -m adt.pipeline --profile smoke`, but the output folder: the
    # executed notebooks go to <output>/notebooks, never to the committed notebooks/
    manifest_path = run_pipeline("smoke", "cpu", output_dir=folder / "figures")
    return Smoke(folder / "figures", read_json(manifest_path), folder / "figures" / "notebooks",
                 _digest(ROOT / "figures") == before["figures"],
                 _digest(ROOT / "notebooks") == before["notebooks"])


# ----------------------------------------------------------------------------- smoke outputs


def test_every_notebook_ran_and_was_written(smoke: Smoke) -> None:
    assert _notebooks_of(smoke.manifest) == NOTEBOOK_PATHS  # each left its artefacts
    if smoke.executed is None:
        return  # nbval ran them (and fails on an error): no executed copies, no timings
    assert set(smoke.manifest["notebook_seconds"]) == set(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(smoke.executed / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], name


def test_every_manifest_artefact_exists_with_provenance(smoke: Smoke) -> None:
    artefacts = smoke.manifest["artefacts"]
    assert artefacts
    for name, entry in artefacts.items():
        for f in entry["files"]:
            assert (smoke.out / f).is_file(), (name, f)
        assert entry["notebook"].startswith("notebooks/0") and entry["notebook"].endswith(".ipynb")
        assert entry["profile"] == "smoke" and entry["commit"]
        assert "caption" in entry and "runs" in entry
    kinds = {e["kind"] for e in artefacts.values()}
    # the document: CLAIMS.md; the results: values a chapter stores for a later one to read
    assert kinds == {"figure", "table", "document", "result"}
    assert {f for e in artefacts.values() if e["kind"] == "result" for f in e["files"]} == {
        "results/res03_cost.json", "results/res03_generators.json", "results/res05_figures.json"}
    assert {f for e in artefacts.values() if e["kind"] == "document" for f in e["files"]} == {
        "CLAIMS.md"}
    for entry in artefacts.values():  # what make check-fresh compares with the tree
        assert set(entry["sha256"]) == set(entry["files"]) and entry["code"]["adt"]
    figure = next(e for e in artefacts.values() if e["kind"] == "figure")
    assert {Path(f).suffix for f in figure["files"]} == {".png", ".pdf"}


def test_smoke_regenerates_every_committed_artefact(smoke: Smoke) -> None:
    committed = read_json(COMMITTED)
    assert committed["profile"] == "quick"
    missing = set(committed["artefacts"]) - set(smoke.manifest["artefacts"])
    assert not missing, f"artefacts of figures/MANIFEST.json not produced under smoke: {missing}"


def test_smoke_leaves_the_committed_figures_alone(smoke: Smoke) -> None:
    assert smoke.figures_untouched


def test_smoke_leaves_the_committed_notebooks_alone(smoke: Smoke) -> None:
    assert smoke.notebooks_untouched


def _caption_names(caption: str, seeds: list[int], n_examples: int | None) -> list[str]:
    """What a caption fails to name of its manifest entry: its seeds and its image count."""
    missing = []
    seed_texts = ([f"seed {seeds[0]}", f"seeds {seeds}"] if len(seeds) == 1
                  else [f"seeds {seeds}", f"seeds {', '.join(map(str, seeds))}"])
    if not any(t in caption for t in seed_texts):
        missing.append(f"seeds {seeds}")
    if n_examples is not None and not any(
            t in caption for t in (f"{n_examples} test", f"{n_examples} images",
                                   f"{n_examples:,} test", f"first {n_examples}")):
        missing.append(f"{n_examples} images")
    return missing


@pytest.mark.parametrize("which", ["smoke", "committed"])
def test_captions_name_the_seeds_and_images_of_their_manifest_entry(smoke: Smoke,
                                                                    which: str) -> None:
    """Every caption of an artefact made from runs names the seeds of those runs and the
    number of test images the manifest records for it."""
    manifest = smoke.manifest if which == "smoke" else read_json(COMMITTED)
    problems = {name: _caption_names(e["caption"], e["seeds"], e.get("n_examples"))
                for name, e in manifest["artefacts"].items() if e.get("runs")}
    assert not {k: v for k, v in problems.items() if v}, problems


def test_smoke_claims_give_no_finding(smoke: Smoke) -> None:
    """Under smoke (one epoch, one seed) the gates leave no supported and no not-reproduced
    verdict: every claim of CLAIMS.md is inconclusive or not testable here."""
    text = (smoke.out / "CLAIMS.md").read_text()
    verdicts = [row.split(" | ")[3].strip("* ") for row in text.splitlines()
                if row.startswith("| ") and " | **" in row]
    assert len(verdicts) >= 20, verdicts
    # the cost claims are counted at the paper's configuration, the same on every profile
    verdicts = [row.split(" | ")[3].strip("* ") for row in text.splitlines()
                if row.startswith("| ") and " | **" in row and "paper's configuration" not in row]
    assert all(v.startswith(("inconclusive", "not testable here")) for v in verdicts), verdicts


def test_runs_of_smoke_stay_in_the_temporary_folder(smoke: Smoke) -> None:
    runs = {r for e in smoke.manifest["artefacts"].values() for r in e["runs"]}
    assert runs and all(r.startswith("<output>/runs/") for r in runs), runs
    assert list((smoke.out / "runs" / "smoke").glob("*/*-seed0/metrics.json"))


# ----------------------------------------------------------------------------- the pipeline


def test_the_pipeline_executes_cleans_and_records(tmp_path: Path) -> None:
    for name in ("a", "b"):
        notebook = recording_notebook(name, "print('ran with', profile, device, force_retrain)")
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
    sources = {name: (tmp_path / f"{name}.ipynb").read_bytes() for name in ("a", "b")}
    out, ran = tmp_path / "out", tmp_path / "ran"
    write_json({"artefacts": {"stale": {"files": []}}}, out / MANIFEST)  # an earlier batch
    manifest_path = run_pipeline("smoke", "cpu", output_dir=out, executed_dir=ran,
                                 notebooks=("a", "b"), notebooks_dir=tmp_path)
    assert manifest_path == out / MANIFEST
    manifest = read_json(manifest_path)
    # the batch: profile, device, commit, one timing per notebook; this batch's artefacts only
    assert manifest["profile"] == "smoke" and manifest["device"] == "cpu"
    assert manifest["commit"].removesuffix("-dirty") == git_commit().removesuffix("-dirty")
    assert set(manifest["notebook_seconds"]) == {"a", "b"}
    assert all(t >= 0 for t in manifest["notebook_seconds"].values())
    assert set(manifest["artefacts"]) == {"a", "b"}
    for name in ("a", "b"):
        # the injected parameters ruled the run
        assert manifest["artefacts"][name]["profile"] == "smoke"
        assert (out / f"{name}.txt").read_text() == "smoke cpu"
        # the sources are untouched; the executed copies are clean
        assert (tmp_path / f"{name}.ipynb").read_bytes() == sources[name]
        nb = nbformat.read(ran / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert len(code) == 3 and "parameters" in code[0].metadata.get("tags", [])
        assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code)
        assert all(c.execution_count for c in code), "every code cell ran"
        assert not any({"papermill", "execution"} & set(c.metadata) for c in code)
        outputs = json.dumps([c.get("outputs", []) for c in code])
        assert '"output_type": "error"' not in outputs and "ran with smoke cpu False" in outputs
        meta = nb.metadata["papermill"]
        assert not {"input_path", "output_path", "start_time", "end_time", "duration"} & set(meta)
        assert meta["parameters"] == {"profile": "smoke", "device": "cpu",
                                      "force_retrain": False}
        assert str(tmp_path) not in json.dumps(nb), "no machine paths in the executed notebook"


def test_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope") as info:
        run_pipeline("nope", "cpu", output_dir=tmp_path / "out", executed_dir=tmp_path / "ran")
    for name in PROFILE_NAMES:
        assert name in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ran").exists()


def test_a_failing_cell_stops_the_batch_and_names_notebook_and_cell(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("profile = 'smoke'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise RuntimeError('deliberate failure')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "broken.ipynb")
    nbformat.write(nb, tmp_path / "after.ipynb")
    with pytest.raises(PipelineError) as info:
        run_pipeline("smoke", "cpu", output_dir=tmp_path / "out", executed_dir=tmp_path / "ran",
                     notebooks=("broken", "after"), notebooks_dir=tmp_path)
    message = str(info.value)
    assert "broken.ipynb" in message and "deliberate failure" in message
    assert "cell 3" in message or "execution count" in message
    assert not (tmp_path / "ran" / "after.ipynb").exists()
    json.dumps(message)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_executed_and_clean(name: str) -> None:
    """Committed executed (quick) with no errors, no injected parameters and no machine paths,
    and with the papermill `parameters` cell every notebook starts with."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for key in ("profile", "dataset", "seeds", "device", "output_dir", "force_retrain"):
        assert f"\n{key} = " in "\n" + code[0].source, key
    assert all(c.execution_count for c in code), "every code cell ran"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code)
    outputs = json.dumps([c.get("outputs", []) for c in code])
    assert '"output_type": "error"' not in outputs
    # flags are data in the tables, not warning text; nothing was written to stderr
    assert "GradientMaskingWarning" not in outputs and "Warning:" not in outputs
    assert not [o for c in code for o in c.get("outputs", [])
                if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    for machine_path in ("/work/", "/home/", "/tmp/", "/root/", "site-packages"):
        assert machine_path not in outputs, machine_path
    assert nb.metadata.get("papermill", {}).get("parameters", {}).get("profile") == "quick"


def test_the_notebooks_and_the_tests_of_their_outputs_are_one_work_unit() -> None:
    """Under `make test` (pytest-xdist) one worker runs the notebooks' cells in order and then
    every test that reads their outputs (tests/conftest.py): each test taking the ``smoke``
    fixture, and no other, shares the notebooks' unit."""
    import inspect

    from conftest import NOTEBOOKS_UNIT, work_unit

    cells = [f"notebooks/{name}.ipynb::Cell {k}" for name in NOTEBOOKS for k in (0, 7)]
    cells += [f"notebooks/{name}::ipynb::Cell 3" for name in NOTEBOOKS]  # as pytest 9 shows it
    assert {work_unit(c) for c in cells} == {NOTEBOOKS_UNIT}
    tests = {name: f for name, f in globals().items()
             if name.startswith("test_") and inspect.isfunction(f)}
    readers = {n for n, f in tests.items() if "smoke" in inspect.signature(f).parameters}
    assert readers and readers != set(tests)
    for name in tests:
        unit = work_unit(f"tests/test_pipeline.py::{name}[x]")
        assert (unit == NOTEBOOKS_UNIT) == (name in readers), name
    assert work_unit("tests/test_data.py::test_a[1]") == "tests/test_data.py::test_a[1]"
