"""The locked environment and the portable run lock.

The lock files pin every package that produced the outputs, the Makefile installs from them
and checks the result, a batch records the versions; the run lock is ``filelock``'s (no
``fcntl`` of our own), one writer per run folder, the holder named."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from adt.config.provenance import LOCK_FILES, environment, file_hash
from adt.training.runs import LOCK, RunLock, RunLockedError, is_locked

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lock as lock_tool  # noqa: E402


def _names(path: Path) -> dict[str, str]:
    return lock_tool.read_lock(path)


def test_every_line_of_the_locks_is_an_exact_pin() -> None:
    for name in LOCK_FILES:
        lines = [line for line in (ROOT / name).read_text().splitlines()
                 if line and not line.startswith("#")]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", line) for line in lines)


def test_the_locks_cover_every_declared_dependency_and_the_attacks() -> None:
    pinned = {**_names(ROOT / LOCK_FILES[0]), **_names(ROOT / LOCK_FILES[1])}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"]
                                            .values() for d in extra)]
    for requirement in declared:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=\[ ]", requirement)[0]).lower()
        assert name in pinned, f"{name} is declared but not locked"
    torch = _names(ROOT / LOCK_FILES[1])
    assert torch["torch"] == "2.14.1" and torch["torchvision"] == "0.29.1"
    assert {"torchattacks", "pyautoattack", "filelock", "uv"} <= set(_names(ROOT / LOCK_FILES[0]))
    assert not any(lock_tool.TORCH_STACK.match(n) for n in _names(ROOT / LOCK_FILES[0]))


def test_the_makefile_installs_from_the_locks_and_checks_the_result() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH ?= -r $(TORCH_LOCK)" in makefile
    assert "$(TORCH) -r $(LOCK)" in makefile and "--no-deps -e ." in makefile
    assert "tools/lock.py check $(PY)" in makefile
    assert "$$(grep '^uv==' $(LOCK))" in makefile  # even the installer is the locked one


def test_this_environment_holds_the_locked_versions() -> None:
    assert lock_tool.check(sys.executable, torch=True) == 0


def test_a_batch_records_the_versions_and_the_locks() -> None:
    env = environment()
    assert env["packages"]["torchattacks"] == _names(ROOT / LOCK_FILES[0])["torchattacks"]
    assert env["packages"]["torch"].split("+")[0] == "2.14.1"
    assert env["locks"] == {name: file_hash(ROOT / name) for name in LOCK_FILES}


def test_the_lock_tool_refuses_a_bad_command_line() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py"), "freeze"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "tools/lock.py write" in done.stderr


def test_the_run_lock_is_filelocks_and_names_its_holder(tmp_path: Path) -> None:
    assert "fcntl" not in (ROOT / "adt" / "training" / "runs.py").read_text()
    assert "fcntl" not in (ROOT / "adt" / "training" / "sweep.py").read_text()
    folder = tmp_path / "run"
    assert not is_locked(folder)
    with RunLock(folder):
        assert is_locked(folder)
        assert (folder / LOCK).read_text() == str(os.getpid())
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"), \
                RunLock(folder):
            pass
        assert is_locked(folder)  # the refused second writer did not release it
    assert not is_locked(folder) and not (folder / LOCK).exists()  # removed on release
    with RunLock(folder):  # free again
        pass


def test_a_lock_file_replaced_while_waiting_is_not_taken(tmp_path: Path, monkeypatch) -> None:
    """A process that locks a file its holder has just removed must not count as holding the
    run (another may lock the new file): it tries again, on the file at the path."""
    import adt.training.runs as runs

    folder, real_stat, calls = tmp_path / "run", os.stat, []

    def stat(path, *args, **kwargs):
        if str(path).endswith(LOCK) and not calls:  # the first look: the file is gone
            calls.append(path)
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(runs.os, "stat", stat)
    with RunLock(folder):
        assert calls and is_locked(folder)
        assert (folder / LOCK).read_text() == str(os.getpid())
