"""The package's layering, read from the source: which subpackage may import which.

The subpackages of ``adt`` read as the paper's pipeline, from the bottom up::

    core        argument checks, files, runtime, datasets, models, losses and the l_inf ball
    method | attack    side by side: the tanh-Gaussian, the inner maximisers, the methods by
                       name | the attack functions, a table's row, the protocol's catalogue
    config      profiles (named settings), provenance (output folders, manifest; no torch)
    training    Algorithm 1, run folders and checkpoints, resume, DDP, sweeps
    evaluation  protocol, robustness table and its checks, engine, stored tables
    study | artifact   side by side: statistics, gates, claims, analyses, figures, tuning |
                       the notebooks' context, the papermill batch, benchmarks

A module may import its own subpackage and the ones below, never one above nor its
neighbour on the same level. The top-level modules (``adt/train.py`` ...) are the command
lines' shims, above everything, and ``adt/__init__.py`` imports nothing eagerly.

Imports are collected with ``ast`` from every ``adt/**/*.py``, at module level and inside
functions; the layering leaves out imports under ``if TYPE_CHECKING:`` (annotations only),
the cycle check counts them too. Also: the papermill launcher stays free of torch, the
profile names have one source, and no file points at documents that are not in the
repository.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from adt.config.profiles import PROFILES
from adt.config.provenance import (
    COMMITTED_PROFILE,
    CUDA_PROFILES,
    PROFILE_NAMES,
    TEMPORARY_PROFILES,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adt"

#: The subpackages from the bottom up; a set holds neighbours on one level.
LAYERS: tuple[frozenset[str], ...] = tuple(map(frozenset, (
    {"core"}, {"method", "attack"}, {"config"}, {"training"}, {"evaluation"}, {"study", "artifact"})))
SUBPACKAGES = frozenset().union(*LAYERS)
#: The command lines documented as ``python -m adt.<name>``: top-level shims.
SHIMS = {"train", "evaluate", "pipeline", "sweep", "bench", "tune", "prepare", "budget_study"}


def _level(subpackage: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if subpackage in layer)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_of(name: str) -> str:
    """``adt.<subpackage>.<module>`` (or ``adt.<module>`` at the top) of a dotted name
    below ``adt``, without the ``adt.`` prefix."""
    parts = name.split(".")
    depth = 2 if parts[0] in SUBPACKAGES else 1
    return ".".join(parts[:depth])


def _adt_imports(tree: ast.AST, package: str = "adt", *, type_checking: bool = False,
                 here: str = "") -> set[str]:
    """The ``adt`` modules (``core.data``, ``train``, ...) imported anywhere in ``tree``:
    ``import adt.x.y``, ``from adt.x.y import ...``, ``from adt.x import y``, relative
    imports from the module ``here``; imports under TYPE_CHECKING only if ``type_checking``."""
    found: set[str] = set()

    def add(parts: list[str], names: list[str]) -> None:
        if len(parts) >= 2 and parts[1] not in SUBPACKAGES:
            found.add(parts[1])
        elif len(parts) >= 3:
            found.add(".".join(parts[1:3]))
        else:  # "from adt import x" or "from adt.sub import x": x is a module or a name
            for name in names:
                found.add(_module_of(".".join([*parts[1:], name])))

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    add(parts, [])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level:  # relative: "from . import x", "from .x import y"
                base = [package, *here.split(".")[:-node.level]] if here else [package]
                parts = [*base, *parts]
            if parts and parts[0] == package:
                add(parts, [alias.name for alias in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def _graph(type_checking: bool = False, functions: bool = True) -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _name(path)
        tree = ast.parse(path.read_text(), str(path))
        if not functions:  # module level only
            tree = ast.Module(body=[n for n in tree.body if not isinstance(
                n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)], type_ignores=[])
        graph[name] = _adt_imports(tree, type_checking=type_checking, here=name) - {name}
    return graph


GRAPH = _graph()
FULL_GRAPH = _graph(type_checking=True)  # with the imports for annotations only


def _subpackage(module: str) -> str | None:
    first = module.split(".")[0]
    return first if first in SUBPACKAGES else None


def _importers(module: str) -> set[str]:
    return {m for m, deps in GRAPH.items() if module in deps}


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = '''
import adt.core.data
import torch
from adt.core.models import SmallCNN
from adt.method import inner, explicit as ex
from adt import train
from . import io
from .primitives import project
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from adt.evaluation.table import RobustnessTable
else:
    from adt.evaluation.sanity import report
def f():
    from adt.training.loop import train
    import adt.evaluation.attacks.sub
'''
    seen = _adt_imports(ast.parse(source), here="core.data")
    assert seen == {"core.data", "core.models", "method.inner", "method.explicit", "train",
                    "core.io", "core.primitives", "evaluation.sanity", "training.loop",
                    "evaluation.attacks"}, seen
    assert "evaluation.table" in _adt_imports(ast.parse(source), type_checking=True)
    assert {"method.inner", "training.runs", "training.modules"} <= GRAPH["training.loop"]


def test_every_module_lives_in_a_layer_or_is_a_shim() -> None:
    for module in GRAPH:
        sub = _subpackage(module)
        assert sub is not None or module in SHIMS | {"__init__"}, (
            f"adt/{module.replace('.', '/')}.py is in no layer; put it in one of "
            f"{sorted(SUBPACKAGES)}")
    named = {"core.data", "core.models", "core.primitives", "core.runtime", "core.io",
             "method.distributions", "method.inner", "method.explicit", "method.amortized",
             "method.methods", "config.profiles", "config.provenance", "training.loop",
             "training.runs", "training.modules", "training.distributed", "training.sweep",
             "attack.functions", "attack.spec", "attack.catalogue", "evaluation.protocol",
             "evaluation.checks",
             "evaluation.sanity", "evaluation.table", "evaluation.engine", "evaluation.stored",
             "evaluation.cli", "evaluation.checkpoints", "study.stats", "study.verdicts",
             "study.evidence", "study.gates", "study.claims", "study.analysis", "study.plots",
             "study.tune", "artifact.report", "artifact.plan", "artifact.pipeline",
             "artifact.prepare", "artifact.conditioning", "artifact.costs", "artifact.bench", *SHIMS}
    assert named <= set(GRAPH), named - set(GRAPH)


def test_no_subpackage_imports_one_above_it_or_beside_it() -> None:
    offenders = []
    for module, deps in GRAPH.items():
        sub = _subpackage(module)
        if sub is None:
            continue
        for dep in deps:
            other = _subpackage(dep)
            if other is None:
                offenders.append(f"{module} -> {dep} (a top-level shim)")
            elif other != sub and _level(other) >= _level(sub):
                offenders.append(f"{module} -> {dep}")
    assert not offenders, offenders


def test_the_shims_are_command_lines_only() -> None:
    for shim in SHIMS:
        deps = GRAPH[shim]
        assert len(deps) == 1 and _subpackage(next(iter(deps))) is not None, (shim, deps)
        text = (PACKAGE / f"{shim}.py").read_text()
        assert 'if __name__ == "__main__":' in text and len(text.splitlines()) <= 12, shim
    assert GRAPH["__init__"] == set()  # importing adt loads nothing else of adt


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_inner_maximisers_and_attacks_are_independent() -> None:
    maximisers = {"method.inner", "method.explicit", "method.amortized"}
    attacks = {"attack.functions", "attack.spec", "attack.catalogue"}
    assert not attacks & set().union(*(GRAPH[m] for m in maximisers))
    assert not set().union(*(GRAPH[a] for a in attacks)) & maximisers
    assert not GRAPH["study.analysis"] & (maximisers | attacks)
    assert "method.inner" in GRAPH["training.loop"]


def test_data_parallel_training_sits_below_the_trainer() -> None:
    assert "training.distributed" in GRAPH["training.loop"]
    assert GRAPH["training.distributed"] <= {"method.inner"}, GRAPH["training.distributed"]


def test_evaluation_never_imports_the_trainer() -> None:
    for module, deps in GRAPH.items():
        if _subpackage(module) == "evaluation":
            assert not deps & {"training.loop", "training.modules"}, (module, deps)
    # the engine evaluates any classifier: it knows nothing of runs
    assert not {d for d in GRAPH["evaluation.engine"] if _subpackage(d) == "training"}


def test_checkpoints_are_read_below_the_evaluation() -> None:
    allowed = {"core.data", "core.models", "training.runs", "training.archive"}
    assert GRAPH["evaluation.checkpoints"] <= allowed, GRAPH["evaluation.checkpoints"]
    assert "evaluation.checkpoints" in GRAPH["evaluation.cli"]
    importers = _importers("evaluation.checkpoints")
    assert {_subpackage(m) for m in importers} <= {"evaluation", "artifact"}, importers


def test_the_sanity_checks_and_the_table_form_no_circle() -> None:
    assert "evaluation.table" in FULL_GRAPH["evaluation.sanity"]
    assert FULL_GRAPH["evaluation.table"] & {"evaluation.sanity"} == set()
    assert "evaluation.checks" in GRAPH["evaluation.table"]


def test_methods_profiles_and_the_launcher() -> None:
    assert "config.profiles" not in GRAPH["method.methods"]
    assert "method.methods" in GRAPH["config.profiles"]
    launcher = _graph(functions=False)
    assert launcher["artifact.pipeline"] <= {"core.io", "config.provenance", "artifact.plan"}, (
        launcher["artifact.pipeline"])
    assert GRAPH["artifact.plan"] <= {"config.provenance"}
    assert GRAPH["config.provenance"] <= {"core.io"}
    for top in ("artifact.report", "artifact.pipeline"):
        assert _importers(top) <= SHIMS, (top, _importers(top))


@pytest.mark.parametrize("graph", [GRAPH, FULL_GRAPH], ids=["imports", "with TYPE_CHECKING"])
def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " -> ".join((*path[path.index(module):], module))
            pytest.fail(f"import cycle: {cycle}")
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


@pytest.mark.parametrize("module", ["adt", "adt.pipeline", "adt.artifact.pipeline",
                                    "adt.config.provenance"])
def test_the_launcher_imports_no_torch(module: str) -> None:
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_profile_names_have_one_source() -> None:
    assert PROFILE_NAMES == tuple(PROFILES)
    assert TEMPORARY_PROFILES == tuple(n for n, p in PROFILES.items() if p.temporary_output)
    assert COMMITTED_PROFILE in PROFILES and COMMITTED_PROFILE not in TEMPORARY_PROFILES
    # the launcher checks the device of these profiles without importing adt.config.profiles
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


def test_documents_name_module_files_that_exist() -> None:
    import re

    for doc in ("README.md", "REPRODUCTION.md", "Makefile"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        missing = sorted({p for p in re.findall(r"\badt/[\w/]+\.py\b", text)
                          if not (ROOT / p).is_file()})
        assert not missing, (doc, missing)
        commands = set(re.findall(r"-m adt\.(\w+)", text))
        assert commands <= SHIMS, (doc, commands - SHIMS)  # each a shim of adt/
