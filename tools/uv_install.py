"""Install packages into a virtual environment with uv, under pip's own index settings.

    python tools/uv_install.py VENV_PYTHON PACKAGE_OR_OPTION...

uv unpacks and compiles in parallel: the whole environment of ``make`` (torch with its CUDA
libraries, jupyter, ...) installs in about 1.5 minutes on the 2-core machine, against about
4.5 minutes with pip. uv does not read pip's configuration, so the index settings pip would
use here (``pip config list``: files and ``PIP_*`` variables, the variables winning) are
passed to it as options: the index, the extra indexes, the find-links and the constraints.
pip's way of choosing among indexes (the best version from any of them) is kept. Exits with
uv's status; the Makefile falls back to pip when it is not 0.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

#: pip's setting -> uv's option; each value of a setting may hold several items
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint"}


def pip_settings(python: str) -> dict[str, list[str]]:
    """pip's effective index settings for ``python``'s pip, from ``pip config list``."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, check=False).stdout
    found: dict[str, dict[str, list[str]]] = {"file": {}, "env": {}}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        name = key.rpartition(".")[2]
        if not sep or name not in OPTIONS:
            continue
        items = shlex.split(value)
        items = [part for item in items for part in item.split()]
        found["env" if key.startswith(":env:") else "file"][name] = items
    return {**found["file"], **found["env"]}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    python, packages = argv[0], argv[1:]
    uv = Path(python).parent / "uv"
    if not uv.is_file():
        print(f"no uv at {uv}", file=sys.stderr)
        return 1
    options = [arg for name, values in pip_settings(python).items() for value in values
               for arg in (OPTIONS[name], value)]
    command = [str(uv), "pip", "install", "--quiet", "--python", python, "--compile-bytecode",
               "--index-strategy", "unsafe-best-match", *options, *packages]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
