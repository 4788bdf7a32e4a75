"""What every command line (``python -m adt.<name>``) shares, so that they behave alike.

- :func:`command_parser`: the program name ``python -m adt.<name>``, plain-text help (no
  reStructuredText markup, :func:`plain`) and every option's default shown;
- checked values (:func:`int_at_least`, :func:`positive_float`, :func:`device_name`): a bad
  value is a usage error (exit code 2) naming the value, what is allowed and what to give,
  before any work or output;
- the options with one meaning everywhere: ``--workers`` (:func:`add_workers`),
  ``--runs-root`` (:func:`add_runs_root`; :func:`check_writable_folder` before writing in
  it), ``--no-progress`` (:func:`add_progress`);
- :data:`USER_ERRORS`: the errors that mean a user's mistake found later (a bad override, a
  missing file): each command reports them in one line on stderr with exit code 2, never
  a traceback.

No torch here: the papermill launcher uses it.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["command_parser", "plain", "int_at_least", "positive_float", "device_name",
           "add_workers", "add_runs_root", "add_progress", "check_writable_folder",
           "USER_ERRORS"]

#: Errors that mean the input was wrong (a value, a path, a busy run), not the code.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, PermissionError)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's help ends with its default
    unless it says it already (flags are off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text.lower() or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS)):
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else "%(default)s"
        return f"{text} (default: {shown})"


def plain(text: str) -> str:
    """``text`` without reStructuredText markup: ``:func:`x``` becomes ``x`` (``~a.b.x``:
    ``x``), ````x```` becomes ``x`` and ``**x**`` becomes ``x``."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target

    text = re.sub(r":[a-z]+:`([^`]+)`", role, text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"\1", text)


def command_parser(name: str, description: str, epilog: str | None = None
                   ) -> argparse.ArgumentParser:
    """The parser of ``python -m adt.<name>``: plain-text ``description`` and ``epilog``,
    defaults shown."""
    return argparse.ArgumentParser(prog=f"python -m adt.{name}", description=plain(description),
                                   epilog=plain(epilog) if epilog else None,
                                   formatter_class=_HelpFormatter)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; give one of {minimum} or more") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}; give a whole number "
                                             f"of {minimum} or more")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0; give e.g. 300")
    return value


def device_name(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; give auto, cpu, cuda or "
                                     "cuda:N (e.g. cuda:0)")


def add_workers(parser: argparse.ArgumentParser, what: str) -> None:
    """``--workers N``: ``what`` (the help; must say what 0 means); None is one per core."""
    parser.add_argument("--workers", type=int_at_least(0), default=None, metavar="N",
                        help=f"{what} (default: one per core)")


def add_runs_root(parser: argparse.ArgumentParser, default: str = "data/runs") -> None:
    """``--runs-root DIR``: where the run folders are."""
    parser.add_argument("--runs-root", default=default, metavar="DIR",
                        help="the folder holding the run folders (<profile>/<dataset>/"
                             "<method>-seed<k>)")


def check_writable_folder(path: str | Path, option: str) -> Path:
    """``path`` if it is a folder this process can write in, or can create (its nearest
    existing parent is a folder it can write in); else ValueError naming ``option`` and the
    path. Probed by making and removing an empty folder there (access bits say nothing for
    root, nor on /proc or a read-only mount); nothing is left behind."""
    folder = Path(path).expanduser()
    existing = folder.absolute()
    while not os.path.lexists(existing):
        existing = existing.parent
    verb = "written" if existing == folder.absolute() else "created"
    if not existing.is_dir():
        raise ValueError(f"{option} {path} cannot be {verb}: {existing} exists and is not a "
                         f"folder; give a folder you can write in (e.g. {option} data/runs)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".adt-write-test.", dir=existing))
    except OSError as err:
        raise ValueError(f"{option} {path} cannot be {verb}: making a folder in {existing} "
                         f"failed ({type(err).__name__}: {err.strerror}); give a folder you "
                         f"can write in (e.g. {option} data/runs)") from None
    return folder


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (``args.progress``): no progress lines."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress lines (jobs done of total, elapsed, ETA); shown by "
                             "default: live on a terminal, a line a minute otherwise; "
                             "ADT_PROGRESS=0 turns them off too")
