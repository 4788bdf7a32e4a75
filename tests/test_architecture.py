"""The package's layering, read from the source: which module may import which.

Imports are collected with ``ast`` from every ``adt/*.py``, at module level and inside
functions (imports under ``if TYPE_CHECKING:`` are for annotations only and are left
out of the graph). Also: the papermill launcher stays free of torch, the profile names
have one source, and no file points at documents that are not in the repository.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from adt.profiles import PROFILES
from adt.provenance import COMMITTED_PROFILE, CUDA_PROFILES, PROFILE_NAMES, TEMPORARY_PROFILES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adt"

#: Modules that build on no other layer: they import only each other.
BOTTOM = {"_checks", "io", "provenance", "runtime", "data", "models", "distributions",
          "primitives", "stats"}
#: The evaluation modules: they work on any classifier, never on the trainer.
EVALUATION = {"protocol", "sanity", "table", "evaluate"}
#: Reading checkpoints of any origin: files and models only, never attacks or training.
CHECKPOINTS = {"data", "models", "runs"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _adt_imports(tree: ast.AST, package: str = "adt") -> set[str]:
    """The ``adt`` modules imported anywhere in ``tree`` (``import adt.x``, ``from adt.x
    import ...``, ``from adt import x``, relative imports), except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level:  # relative: "from . import x", "from .x import y"
                parts = [package, *parts]
            if parts and parts[0] == package:
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        graph[path.stem] = _adt_imports(ast.parse(path.read_text(), str(path))) - {path.stem}
    return graph


GRAPH = _graph()


def _importers(module: str) -> set[str]:
    return {m for m, deps in GRAPH.items() if module in deps}


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = '''
import adt.data
import torch
from adt.models import SmallCNN
from adt import inner, runtime as rt
from . import io
from .primitives import project
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from adt.table import RobustnessTable
else:
    from adt.sanity import report
def f():
    from adt.train import train
    import adt.attacks.sub
'''
    assert _adt_imports(ast.parse(source)) == {"data", "models", "inner", "runtime", "io",
                                               "primitives", "sanity", "train", "attacks"}
    assert {"inner", "runs"} <= GRAPH["train"]  # and reads the package itself


def test_every_named_module_exists() -> None:
    named = BOTTOM | EVALUATION | {"inner", "attacks", "analysis", "train", "methods",
                                   "profiles", "runs", "report", "pipeline", "plots", "bench",
                                   "checkpoints", "distributed"}
    assert named <= set(GRAPH), named - set(GRAPH)


def test_the_bottom_layer_imports_only_the_bottom_layer() -> None:
    for module in sorted(BOTTOM):
        assert GRAPH[module] <= BOTTOM, (module, GRAPH[module] - BOTTOM)


def test_inner_maximisers_and_attacks_are_independent() -> None:
    assert "attacks" not in GRAPH["inner"] and "inner" not in GRAPH["attacks"]
    assert not GRAPH["analysis"] & {"inner", "attacks"}, GRAPH["analysis"]
    assert "inner" in GRAPH["train"]


def test_data_parallel_training_sits_below_the_trainer() -> None:
    assert "distributed" in GRAPH["train"] and "train" not in GRAPH["distributed"]
    assert GRAPH["distributed"] <= BOTTOM | {"inner"}, GRAPH["distributed"]


def test_evaluation_never_imports_the_trainer() -> None:
    for module in sorted(EVALUATION):
        assert "train" not in GRAPH[module], module


def test_checkpoints_are_read_below_the_evaluation() -> None:
    assert GRAPH["checkpoints"] <= CHECKPOINTS, GRAPH["checkpoints"] - CHECKPOINTS
    assert "checkpoints" in GRAPH["evaluate"]
    assert _importers("checkpoints") <= EVALUATION | {"report"}, _importers("checkpoints")


def test_methods_profiles_and_the_launcher() -> None:
    assert "profiles" not in GRAPH["methods"]
    assert "methods" in GRAPH["profiles"]
    # at import time the launcher loads only io and provenance (no torch); the CPU stage of
    # adt.prepare is imported inside the function that runs it
    top_level = _adt_imports(ast.Module(body=[
        node for node in ast.parse((PACKAGE / "pipeline.py").read_text()).body
        if isinstance(node, ast.Import | ast.ImportFrom)], type_ignores=[]))
    assert top_level <= {"io", "provenance"}, top_level
    assert GRAPH["pipeline"] - top_level <= {"prepare", "profiles", "runtime"}, GRAPH["pipeline"]
    assert GRAPH["provenance"] <= {"io"}
    assert GRAPH["__init__"] == set()  # importing adt.pipeline loads nothing else of adt
    for top in ("report", "pipeline"):
        assert _importers(top) == set(), (top, _importers(top))


def test_no_import_cycles() -> None:
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " -> ".join((*path[path.index(module):], module))
            pytest.fail(f"import cycle: {cycle}")
        if module in done:
            return
        for dep in sorted(GRAPH.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, ())


@pytest.mark.parametrize("module", ["adt.pipeline", "adt.provenance"])
def test_the_launcher_imports_no_torch(module: str) -> None:
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_profile_names_have_one_source() -> None:
    assert PROFILE_NAMES == tuple(PROFILES)
    assert TEMPORARY_PROFILES == tuple(n for n, p in PROFILES.items() if p.temporary_output)
    assert COMMITTED_PROFILE in PROFILES and COMMITTED_PROFILE not in TEMPORARY_PROFILES
    # the launcher checks the device of these profiles without importing adt.profiles
    assert CUDA_PROFILES == tuple(n for n, p in PROFILES.items() if p.device == "cuda")


def test_no_file_points_at_documents_outside_the_repository() -> None:
    # built from parts, so that this file does not name them itself
    forbidden = ["REFERENCE" + ".md", "DESIGN" + ".md", ".." + "/shared"]
    scope = ["adt", "tests", "notebooks", "README.md", "Makefile", "REPRODUCTION.md",
             "data/README.md"]
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                                 "--", *scope], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed if name and (ROOT / name).is_file()]
    assert any(f.name == "README.md" for f in files) and any(f.suffix == ".py" for f in files)
    offenders = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # not a text file
        offenders += [f"{path.relative_to(ROOT)}: {s}" for s in forbidden if s in text]
    assert not offenders, offenders
