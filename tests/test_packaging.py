"""The two dependency lists (pyproject.toml, environment.yml) agree, and the set-up is wired."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs |= set(extra)
    return reqs


def _environment_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*- pip:\s*$", line))
    reqs = set()
    for line in lines[start + 1:]:
        match = re.match(r"\s{6,}- (.+?)\s*$", line)
        if match:
            reqs.add(match.group(1))
        elif line.strip() and not line.strip().startswith("#"):
            break
    return reqs - {"-e ."}


def test_environment_yml_mirrors_pyproject():
    assert _environment_pip_requirements() == _pyproject_requirements()


def test_environment_yml_pins_python_through_conda():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*- python=3\.\d+", text, re.M)


def test_required_packages_are_declared():
    names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in _pyproject_requirements()}
    for needed in ("torch", "torchvision", "jupyter", "papermill", "matplotlib", "seaborn",
                   "nbval", "torchattacks", "mlxtend", "pytest", "ruff"):
        assert needed in names, needed


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^reproduce:", makefile, re.M)
