"""The locked environment: write the lock files from a virtual environment, or check one.

    python tools/lock.py write VENV_PYTHON    # after a deliberate upgrade (make lock)
    python tools/lock.py check VENV_PYTHON [--torch]

Two files at the repository root pin every package (``name==version``) of the environment
that produced the committed outputs:

- ``requirements.lock``: everything but PyTorch's own stack; the same on every machine;
- ``requirements-torch.lock``: torch, torchvision and the wheels they bring (``nvidia-*``,
  ``cuda-*``, ``triton``): the Makefile's default ``TORCH``; a CUDA machine replaces it
  with its own pins (``make test TORCH="torch==2.11.0 torchvision==0.26.0"``).

``check`` compares the installed versions with the lock (with ``--torch``, the torch lock
too) and exits 1 naming every difference; the Makefile runs it after each install, so two
fresh installs that pass it hold the same versions. Only the standard library is used.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK, TORCH_LOCK = ROOT / "requirements.lock", ROOT / "requirements-torch.lock"
#: PyTorch's stack: the packages whose wheels depend on the machine (CUDA or not).
TORCH_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
#: Never pinned: the installer's own, created with the virtual environment.
SKIPPED = {"pip"}
HEADER = ("# Written by `python tools/lock.py write` (make lock) from the environment that "
          "produced the\n# committed outputs: {python} on {machine}. {what}\n")


def _name(requirement: str) -> str:
    """The normalised name of ``name==version`` (PEP 503)."""
    return re.sub(r"[-_.]+", "-", requirement.split("==")[0]).lower()


def installed(python: str) -> dict[str, str]:
    """The packages of ``python``'s environment (the editable ``adt`` left out): name ->
    version, from ``uv pip freeze`` (``pip freeze`` when uv is missing)."""
    uv = Path(python).parent / "uv"
    command = ([str(uv), "pip", "freeze", "--python", python, "--exclude-editable"]
               if uv.is_file() else [python, "-m", "pip", "freeze", "--exclude-editable"])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    pins = [line.strip() for line in out.splitlines() if "==" in line and "@" not in line]
    return {_name(p): p.split("==", 1)[1] for p in pins if _name(p) not in SKIPPED}


def read_lock(path: Path) -> dict[str, str]:
    """The pins of a lock file: name -> version."""
    pins = [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return {_name(p): p.split("==", 1)[1] for p in pins}


def write(python: str) -> None:
    """Write both lock files from ``python``'s environment."""
    probe = "import platform; print(platform.python_version(), platform.machine())"
    version, machine = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                      check=True).stdout.split()
    pins = installed(python)
    for path, torch, what in ((LOCK, False, "Every package but PyTorch's stack."),
                              (TORCH_LOCK, True, "PyTorch's stack (the Makefile's TORCH).")):
        lines = [f"{n}=={v}" for n, v in sorted(pins.items()) if bool(TORCH_STACK.match(n)) == torch]
        path.write_text(HEADER.format(python=f"Python {version}", machine=machine, what=what)
                        + "\n".join(lines) + "\n")
        print(f"wrote {path.name}: {len(lines)} packages")


def check(python: str, torch: bool) -> int:
    """0 when the environment holds the lock's versions; else 1, naming the differences."""
    wanted = {**read_lock(LOCK), **(read_lock(TORCH_LOCK) if torch else {})}
    have = installed(python)
    wrong = [f"{n}: locked {v}, installed {have.get(n, 'nothing')}"
             for n, v in sorted(wanted.items()) if have.get(n) != v]
    if wrong:
        print("the environment differs from the lock:\n  " + "\n  ".join(wrong)
              + "\nreinstall (rm -rf .venv && make test), or after a deliberate upgrade "
                "rewrite the lock (make lock)", file=sys.stderr)
        return 1
    print(f"the environment holds the locked versions ({len(wanted)} packages)")
    return 0


def main(argv: list[str]) -> int:
    """The command line (see the module's docstring)."""
    if len(argv) < 2 or argv[0] not in ("write", "check") or set(argv[2:]) - {"--torch"}:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "write":
        write(argv[1])
        return 0
    return check(argv[1], "--torch" in argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
