"""The front page and its documents: the README's own-model example trains, its results block
is the committed outputs' (``adt.artifact.readme``), and every link of the documents resolves."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from adt.artifact.readme import (
    BLOCKS,
    Cell,
    gates_block,
    insert_block,
    markers,
    parse_cell,
    results_block,
    stale_block,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "CONTRIBUTING.md", ROOT / "REPRODUCTION.md",
             *sorted((ROOT / "docs").glob("*.md"))]


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _python_block(section: str) -> str:
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has no python code block"
    return match.group(1)


def test_the_readmes_own_model_example_trains() -> None:
    import torch

    code = _python_block(_section(README.read_text(encoding="utf-8"),
                                  "ADT in your own training loop"))
    assert 10 <= len(code.strip().splitlines()) <= 18, "the example stays short"
    head, loop = code.split("\nfor ", 1)  # run the set-up, keep the weights, then the loop
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(head, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, torch.nn.Module) and not hasattr(model, "profile")
    before = [p.detach().clone() for p in model.parameters()]
    exec(compile("for " + loop, "README.md", "exec"), namespace)
    assert type(namespace["maximizer"]).__name__ == "ExplicitADT"
    assert math.isfinite(namespace["stats"]["loss"].item())
    moved = [(p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True)]
    assert all(m > 0 for m in moved), f"every parameter trains: {moved}"
    table = namespace["table"]
    assert 0.0 <= table.robust_accuracy <= 1.0


# --- the generated blocks --------------------------------------------------------------------

CAPTION = ("Table 4.1: white-box robustness · profile `toy` · dataset `d` · model `m` · "
           "seeds [0, 1] · 50 test examples · A_rob: the worst case")


def _figures(folder: Path, a_rob_b: str = "71.0 ± 1.0 [69.0, 73.5]",
             table: str = "tables/tab04_whitebox.csv") -> Path:
    path = folder / table
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("model,Clean,A_rob,A_rob + full AA (x)\n"
                    'Alpha,"97.5 ± 1.3 [94.7, 99.3]","85.3 ± 2.3 [80.0, 90.2]",83.3\n'
                    f'Beta,"98.0 ± 0.9 [95.5, 99.5]","{a_rob_b}",70.8\n', encoding="utf-8")
    path.with_suffix(".md").write_text(CAPTION + "\n\n| table |\n", encoding="utf-8")
    (folder / "CLAIMS.md").write_text("# Claims\n\nVerdicts: 1 supported, 2 inconclusive.\n",
                                      encoding="utf-8")
    return folder


def test_parse_cell() -> None:
    assert parse_cell("85.3 ± 2.3 [80.0, 90.2]") == Cell("85.3", "2.3", "80.0", "90.2")
    assert parse_cell("-8.7 ± 1.0 [-14.8, -3.2]").low == "-14.8"
    with pytest.raises(ValueError, match=r"tab\.csv: the cell '85.3' is not 'mean ± sd"):
        parse_cell("85.3", "tab.csv")


def test_results_block_states_each_method_and_the_verdicts(tmp_path: Path) -> None:
    block = results_block(_figures(tmp_path / "figures"), relative_to=tmp_path)
    assert "| Alpha | **85.3** [80.0, 90.2] | 97.5 |" in block
    assert "| Beta | **71.0** [69.0, 73.5] | 98.0 |" in block
    assert "Highest mean A_rob: Alpha (85.3)" in block
    assert "profile `toy`, dataset `d`, model `m`, seeds [0, 1], 50 test examples" in block
    assert "Verdicts: 1 supported, 2 inconclusive." in block
    assert "[CLAIMS.md](figures/CLAIMS.md)" in block
    assert "(figures/tables/tab04_whitebox.md)" in block
    assert "83.3" not in block  # the reference column is not A_rob


def test_results_block_reads_another_table(tmp_path: Path) -> None:
    figures = _figures(tmp_path, "90.0 ± 1.0 [88.0, 92.0]", table="tables/study.csv")
    block = results_block(figures, Path("tables/study.csv"), relative_to=tmp_path)
    assert "Highest mean A_rob: Beta (90.0)" in block and "(tables/study.md)" in block
    with pytest.raises(FileNotFoundError, match="tab04_whitebox.csv is missing"):
        results_block(tmp_path)  # the default table is not there


def test_results_block_names_a_bad_cell(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Beta, A_rob: the cell '71.0' is not"):
        results_block(_figures(tmp_path, a_rob_b="71.0"))


def test_insert_block_replaces_what_lies_between_the_markers() -> None:
    start, end = markers()
    text = f"# Title\n\n{start}\nold\n{end}\n\nrest\n"
    new = insert_block(text, "new block\n")
    assert new == f"# Title\n\n{start}\nnew block\n{end}\n\nrest\n"
    assert insert_block(new, "new block") == new  # idempotent
    with pytest.raises(ValueError, match=r"README.md: .*<!-- results:start -->.*"
                                         r"missing: <!-- results:end -->"):
        insert_block(f"# Title\n{start}\n", "x")
    with pytest.raises(ValueError, match="REPRODUCTION.md: .*<!-- gates:start -->"):
        insert_block("no markers", "x", "gates", "REPRODUCTION.md")


def test_stale_block_says_when_and_why_the_block_differs(tmp_path: Path) -> None:
    figures = _figures(tmp_path / "figures")
    start, end = markers()
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n{start}\n{end}\n", encoding="utf-8")
    assert "differs" in stale_block(readme, figures)
    readme.write_text(insert_block(readme.read_text(encoding="utf-8"),
                                   results_block(figures, relative_to=tmp_path)), encoding="utf-8")
    assert stale_block(readme, figures) is None
    _figures(figures, a_rob_b="72.0 ± 1.0 [69.0, 73.5]")  # the outputs move on
    message = stale_block(readme, figures)
    assert message and "README.md: its results block differs" in message and "72.0" in message
    readme.write_text("# T\n", encoding="utf-8")
    assert "no <!-- results:start --> ... <!-- results:end --> block" in stale_block(readme,
                                                                                      figures)
    (figures / "CLAIMS.md").unlink()
    readme.write_text(f"{start}\n{end}\n", encoding="utf-8")
    assert "cannot be made" in stale_block(readme, figures)


def test_gates_block_counts_passes_and_names_failures() -> None:
    import csv

    block = gates_block(ROOT / "figures", relative_to=ROOT)
    with (ROOT / "figures/tables/tab06_gates.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for gate in {r["gate"] for r in rows}:
        n = sum(r["gate"] == gate for r in rows)
        failed = [r for r in rows if r["gate"] == gate and r["result"] != "pass"]
        line = next(line for line in block.splitlines() if line.startswith(f"| `{gate}` |"))
        if n > 1:
            assert f"{n - len(failed)} of {n} pass" in line
            assert all(f"{r['model']} ({r['value']})" in line for r in failed)
        else:
            row = next(r for r in rows if r["gate"] == gate)
            assert f"| {row['result']}: {row['value']} (" in line
    reasons = block.split("| verdict: the gate or reason that decides it | claims |")[1]
    claims = (ROOT / "figures/CLAIMS.md").read_text(encoding="utf-8")
    line = re.search(r"^Verdicts: (.*)$", claims, re.M).group(1)
    total = sum(int(n) for n in re.findall(r"(\d+) [a-z]", line))  # "1 supported, 3 ..."
    counts = re.findall(r"^\| [^|]+ \| (\d+) of (\d+) \|$", reasons, re.M)
    assert counts and {int(of) for _, of in counts} == {total}
    assert sum(int(n) for n, _ in counts) == total  # every claim counted once


def test_gates_block_names_the_gate_behind_each_verdict(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/tab06_gates.csv").write_text(
        "gate,model,value,threshold,result,detail\n"
        "g1,A seed 0,0.1,<= 1,pass,ok\ng1,A seed 1,2,<= 1,FAIL,too big\n"
        "g2,B,0.9,>= 0.5,pass,fine\n", encoding="utf-8")
    (tmp_path / "CLAIMS.md").write_text(
        "# C\n\nVerdicts: x.\n\n| claim | verdict |\n| --- | --- |\n"
        "| c1 | **supported** |\n| c2 | **not testable here: g1 (A) = 2 (needs <= 1)** |\n"
        "| c3 | **inconclusive: one seed** |\n| c4 | **inconclusive: one seed** |\n\n"
        "| gate | model |\n| --- | --- |\n| g1 | A |\n", encoding="utf-8")
    block = gates_block(tmp_path, relative_to=tmp_path)
    assert "| `g1` | 1 of 2 pass; fail: A seed 1 (2) |" in block
    assert "| `g2` | pass: 0.9 (fine) |" in block
    for row in ("| supported | 1 of 4 |", "| not testable here: g1 | 1 of 4 |",
                "| inconclusive: one seed | 2 of 4 |"):
        assert row in block
    assert "(tables/tab06_gates.md)" in block and "(CLAIMS.md)" in block


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_the_committed_documents_show_the_committed_outputs(name: str) -> None:
    document = ROOT / BLOCKS[name][1]
    assert stale_block(document, ROOT / "figures", name) is None


# --- the front page and the documents ----------------------------------------------------------

def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_of_the_documents_resolves(document: Path) -> None:
    broken = []
    for link in _links(document):
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(link)
    assert not broken, broken


def test_the_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160, "the README is a front page"
    assert "https://arxiv.org/abs/2002.05999" in text
    assert "https://github.com/dongyp13/Adversarial-Distributional-Training" in text
    assert "make reproduce" in text and "make test" in text
    timing = (ROOT / "docs" / "reproduce.md").read_text(encoding="utf-8")
    for marker in ("<!-- timing -->", "<!-- study-timing -->"):
        assert marker in timing  # the lead's measurements go there: their one home
    assert "docs/reproduce.md" in text  # and the README links it
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _links(README)}
    docs = {p.resolve() for p in (ROOT / "docs").glob("*.md")} | {ROOT / "CONTRIBUTING.md"}
    assert docs <= linked, sorted(p.name for p in docs - linked)  # every doc is reachable


def test_license_and_citation() -> None:
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    yaml = pytest.importorskip("yaml")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    paper = citation["preferred-citation"]
    assert paper["title"] == "Adversarial Distributional Training for Robust Deep Learning"
    assert paper["year"] == 2020 and paper["url"] == "https://arxiv.org/abs/2002.05999"
    assert [a["family-names"] for a in paper["authors"]] == ["Dong", "Deng", "Pang", "Su", "Zhu"]
    assert citation["license"] == "MIT" and citation["cff-version"] == "1.2.0"


def test_write_blocks_and_stale_blocks_cover_every_document(tmp_path: Path) -> None:
    from adt.artifact.readme import stale_blocks, write_blocks

    figures = _figures(tmp_path / "figures")
    (figures / "tables/tab06_gates.csv").write_text(
        "gate,model,value,threshold,result,detail\ng,A,1,>= 1,pass,ok\n", encoding="utf-8")
    (figures / "CLAIMS.md").write_text("Verdicts: 1 supported.\n\n| claim | verdict |\n"
                                       "| --- | --- |\n| c | **supported** |\n", encoding="utf-8")
    for table in ("tab06_gate_audit", "tab06_gate_changes"):
        (figures / f"tables/{table}.md").write_text(f"Table {table}\n\n| gate |\n| --- |\n| g |\n",
                                                   encoding="utf-8")
    documents: dict[str, str] = {}
    for name, (_, document) in BLOCKS.items():  # a document may hold several blocks
        start, end = markers(name)
        documents[document] = documents.get(document, f"# {document}\n") + f"{start}\n{end}\n"
    for document, text in documents.items():
        (tmp_path / document).write_text(text, encoding="utf-8")
    assert len(stale_blocks(tmp_path)) == len(BLOCKS)
    assert sorted(p.name for p in write_blocks(tmp_path)) == sorted(d for _, d in BLOCKS.values())
    assert stale_blocks(tmp_path) == [] and write_blocks(tmp_path) == []  # nothing left to do
    assert "[CLAIMS.md](figures/CLAIMS.md)" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_the_blocks_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, adt.artifact.readme; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_results_block_lists_the_headline_claims(tmp_path: Path) -> None:
    from adt.artifact.readme import results_block

    figures = tmp_path / "figures"
    (figures / "tables").mkdir(parents=True)
    (figures / "tables" / "tab04_whitebox.csv").write_text(
        "model,Clean,A_rob\nAT (PGD),\"97.5 ± 1.3 [94.7, 99.3]\",\"85.3 ± 2.3 [80.0, 90.2]\"\n")
    (figures / "CLAIMS.md").write_text(
        "Verdicts: 1 inconclusive.\n\n| claim (paper) | test | effect [95% interval] | verdict |\n"
        "| --- | --- | --- | --- |\n| ADT_EXP is more robust than AT (PGD) in the worst case "
        "(A_rob, Table 1) | A_rob, budget study: 8 seeds | -5.0 points [-9.0, -1.0] | "
        "**inconclusive: budget-sensitive** |\n| ADT_EXP costs about k times AT | FLOPs | x4.30 "
        "| **supported** |\n")
    block = results_block(figures)
    assert "| ADT_EXP is more robust than AT (PGD) | A_rob, budget study: 8 seeds |" in block
    assert "**inconclusive: budget-sensitive**" in block and "costs about" not in block


def _layout_modules(text: str) -> set[str]:
    """The modules of ``adt/`` that docs/layout.md's tree names, as paths ``adt/x/y.py``:
    a line ``  name/`` opens a subpackage, ``    name.py`` names a module of the open one
    (or of ``adt/`` itself at the first level); the shims' line names several."""
    block = re.search(r"```\n(adt/.*?)```", text, re.S)
    assert block, "docs/layout.md has no tree of adt/"
    names, package = set(), None
    for line in block.group(1).splitlines()[1:]:
        if line and not line.startswith(" "):
            break  # the next top-level folder: adt/ ends
        if (match := re.match(r"^  (\w+)/\s", line + " ")):
            package = match.group(1)
        elif (match := re.match(r"^    ([\w]+\.py)\b", line)) and package:
            names.add(f"adt/{package}/{match.group(1)}")
        elif re.match(r"^  \w+\.py\b", line):
            names |= {f"adt/{n}" for n in re.findall(r"\b(\w+\.py)\b", line)}
    return names


def test_the_layout_names_every_module_and_no_module_that_is_gone() -> None:
    names = _layout_modules((ROOT / "docs" / "layout.md").read_text(encoding="utf-8"))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "adt").rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "adt"}
    assert sorted(modules - names) == [], "docs/layout.md does not name these modules"
    assert sorted(names - modules) == [], "docs/layout.md names modules that are gone"
