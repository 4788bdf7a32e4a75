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
                   "nbval", "torchattacks", "mlxtend", "pytest", "pytest-xdist", "ruff"):
        assert needed in names, needed


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^reproduce:", makefile, re.M)


def _make_test_with_a_stand_in_python(tmp_path: Path, pytest_status: int) -> tuple[int, str]:
    """``make test`` with PY a stand-in that logs each command and answers pytest with
    ``pytest_status`` (ruff: 0), the install stamp given as up to date."""
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        import pytest

        pytest.skip("no make on this machine")
    tmp_path.mkdir(parents=True, exist_ok=True)
    log, stamp, python = tmp_path / "calls.log", tmp_path / "stamp", tmp_path / "python"
    python.write_text("#!/usr/bin/env bash\n"
                      f'echo "$@" >> {log}\n'
                      f'if [ "$2" = pytest ]; then exit {pytest_status}; fi\n')
    python.chmod(0o755)
    stamp.touch()
    os.utime(stamp, (4e9, 4e9))  # newer than every prerequisite: nothing is installed
    done = subprocess.run(["make", "-s", "test", f"PY={python}", f"STAMP={stamp}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, log.read_text() if log.is_file() else ""


def test_make_test_runs_pytest_on_every_core_and_fails_when_pytest_fails(tmp_path):
    status, calls = _make_test_with_a_stand_in_python(tmp_path / "pass", 0)
    runs = [line for line in calls.splitlines() if line.startswith("-m pytest")]
    assert status == 0 and len(runs) == 2, calls
    assert "notebooks/ tests/" in runs[0] and "--nbval-lax" in runs[0]
    assert all("-n logical" in run and "--durations=15" in run for run in runs)
    for failing in (1, 2, 5):  # tests failed, interrupted, none collected
        status, calls = _make_test_with_a_stand_in_python(tmp_path / str(failing), failing)
        assert status != 0, calls
