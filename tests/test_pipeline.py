"""The papermill pipeline under the smoke profile: every artefact appears, with provenance."""

import hashlib
import json
from pathlib import Path

import nbformat
import pytest

from adt.io import read_json
from adt.pipeline import NOTEBOOKS, PipelineError, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "figures" / "MANIFEST.json"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    before = _digest(ROOT / "figures")
    manifest_path = run_pipeline("smoke", "cpu", output_dir=out / "figures",
                                 executed_dir=out / "notebooks")
    return out, read_json(manifest_path), before


def test_every_notebook_ran_and_was_written(smoke):
    out, manifest, _ = smoke
    assert set(manifest["notebook_seconds"]) == set(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], name


def test_every_manifest_artefact_exists_with_provenance(smoke):
    out, manifest, _ = smoke
    artefacts = manifest["artefacts"]
    assert artefacts
    for name, entry in artefacts.items():
        for f in entry["files"]:
            assert (out / "figures" / f).is_file(), (name, f)
        assert entry["notebook"].startswith("notebooks/0") and entry["notebook"].endswith(".ipynb")
        assert entry["profile"] == "smoke" and entry["commit"]
        assert "caption" in entry and "runs" in entry
    kinds = {e["kind"] for e in artefacts.values()}
    assert kinds == {"figure", "table"}
    figure = next(e for e in artefacts.values() if e["kind"] == "figure")
    assert {Path(f).suffix for f in figure["files"]} == {".png", ".pdf"}


def test_smoke_regenerates_every_committed_artefact(smoke):
    _, manifest, _ = smoke
    committed = read_json(COMMITTED)
    assert committed["profile"] == "quick"
    missing = set(committed["artefacts"]) - set(manifest["artefacts"])
    assert not missing, f"artefacts of figures/MANIFEST.json not produced under smoke: {missing}"


def test_smoke_leaves_the_committed_figures_alone(smoke):
    _, _, before = smoke
    assert _digest(ROOT / "figures") == before


def test_runs_of_smoke_stay_in_the_temporary_folder(smoke):
    out, manifest, _ = smoke
    runs = {r for e in manifest["artefacts"].values() for r in e["runs"]}
    assert runs and all(r.startswith("<output>/runs/") for r in runs), runs
    assert list((out / "figures" / "runs" / "smoke").glob("*/*-seed0/metrics.json"))


def test_a_failing_cell_stops_the_batch_and_names_notebook_and_cell(tmp_path):
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
def test_committed_notebooks_are_executed_and_clean(name):
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
    for machine_path in ("/work/", "/home/", "/tmp/", "/root/", "site-packages"):
        assert machine_path not in outputs, machine_path
    assert nb.metadata.get("papermill", {}).get("parameters", {}).get("profile") == "quick"
