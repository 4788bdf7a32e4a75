"""Every command line treats bad input alike, and their helps agree.

Each command is called in-process (its ``main``/``command_line``) from an empty temporary
folder: a bad value must end in exit code 2 with a one-line message naming the value and
what to give, print nothing on stdout (no work, no status table first), leave the folder
empty and never show a traceback. One subprocess checks the same through ``python -m``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from adt.artifact import bench, pipeline, prepare
from adt.evaluation import cli as evaluate
from adt.study import campaign, tune
from adt.training import loop, sweep

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": loop.command_line, "evaluate": evaluate.main, "sweep": sweep.command_line,
    "pipeline": pipeline.main, "prepare": prepare.main, "tune": tune.main, "bench": bench.main,
    "budget_study": campaign.main,
}

BAD = [
    ("sweep", ["--profile", "quick", "--seeds", "-1", "--dry-run"], "-1 must be >= 0"),
    ("sweep", ["--gpus-per-run", "0", "--dry-run"], "0 must be >= 1"),
    ("sweep", ["--gpus", "0,1", "--gpus-per-run", "3", "--dry-run"], "groups of 3"),
    ("sweep", ["--gpus", "a,b", "--dry-run"], "'a,b' is not a GPU list"),
    ("sweep", ["--every", "0", "--dry-run"], "'0' is not a number > 0"),
    ("sweep", ["--dry-run", "recipe.nope=1"], "unknown recipe field"),
    ("tune", ["--profile", "nope"], "invalid choice: 'nope'"),
    ("tune", ["--validation-examples", "0"], "0 must be >= 1"),
    ("tune", ["--device", "gpu"], "'gpu' is not a device"),
    ("prepare", ["--workers", "-1"], "-1 must be >= 0"),
    ("prepare", ["--measure", "--workers", "0"], "--measure compares worker processes"),
    ("prepare", ["--profile", "nope"], "invalid choice: 'nope'"),
    ("pipeline", ["--workers", "-1"], "-1 must be >= 0"),
    ("pipeline", ["--profile", "nope"], "invalid choice: 'nope'"),
    ("pipeline", ["--notebooks", "05_figure", "--output-dir", "{tmp}/out"], "05_figures"),
    ("evaluate", ["--checkpoint", "{tmp}/README.md"], "is not a PyTorch checkpoint"),
    ("evaluate", ["--checkpoint", "{tmp}/missing.pt"], "does not exist"),
    ("evaluate", ["--checkpoint", "x.pt", "--examples", "0"], "0 must be >= 1"),
    ("train", ["--method", "standard", "--seed", "-1"], "-1 must be >= 0"),
    ("train", ["--method", "standard", "--device", "gpu"], "'gpu' is not a device"),
    ("train", ["--method", "nope"], "invalid choice: 'nope'"),
    ("train", ["--method", "standard", "recipe.nope=1"], "unknown recipe field"),
    ("bench", ["--steps", "0"], "0 must be >= 1"),
    ("bench", ["--profile", "nope"], "invalid choice: 'nope'"),
    ("budget_study", ["--workers", "-1"], "-1 must be >= 0"),
    ("budget_study", ["--profile", "nope"], "invalid choice: 'nope'"),
    ("budget_study", ["--profile", "smoke"], "no study design for profile 'smoke'"),
    ("budget_study", ["--design", "--source", "notacommit"], "notacommit"),
    # a value that is well formed but cannot work: refused before any work too
    ("sweep", ["--slurm-time", "bogus", "--dry-run"], "'bogus' is not a Slurm time limit"),
    ("prepare", ["--runs-root", "/proc/nope", "--workers", "0"],
     "--runs-root /proc/nope cannot be created"),
    ("evaluate", ["--output", "/proc/x.json", "--checkpoint", "{tmp}/model.pt"], "/proc/x.json"),
    ("pipeline", ["--output-dir", "/proc/nope"], "/proc/nope"),
    ("pipeline", ["--notebooks-dir", "/nonexistent"], "/nonexistent"),
    # `tune --profile smoke` itself now runs (its default holds out a quarter of 256 images)
    ("tune", ["--profile", "smoke", "--validation-examples", "1000"], "leaves no training image"),
]


class _WorkStarted(BaseException):
    """Raised by a trip wire: a command began its work (no ``except Exception`` stops it)."""


def _trip(*args: object, **kwargs: object) -> None:
    raise _WorkStarted("the command started its work before refusing its input")


#: Where the commands' work starts: training, the batch's stages and notebooks, restoring
#: the archive, the study, the sweep. A check that is missing fails the test here instead of
#: training on this machine.
TRIP_WIRES = [("adt.training.loop", "_train_locked"), ("adt.artifact.pipeline", "_prepare"),
              ("adt.artifact.pipeline", "_execute"), ("adt.artifact.prepare", "_run_stages"),
              ("adt.training.archive", "restore_archive"), ("adt.study.campaign", "run_study"),
              ("adt.study.campaign", "make_design"), ("adt.training.sweep", "sweep")]


def _exit_code(command: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return command(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


@pytest.mark.parametrize(("name", "argv", "expected"), BAD,
                         ids=[f"{n}:{' '.join(a)}" for n, a, _ in BAD])
def test_bad_input_is_a_usage_error_before_any_work(name: str, argv: list[str], expected: str,
                                                    tmp_path: Path, monkeypatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    torch.save({}, tmp_path / "model.pt")  # a checkpoint file, whatever it holds
    for module, function in TRIP_WIRES:
        monkeypatch.setattr(importlib.import_module(module), function, _trip)
    argv = [a.format(tmp=tmp_path) for a in argv]
    if name in ("sweep", "tune", "prepare", "train", "budget_study") and \
            "--runs-root" not in argv:
        argv += ["--runs-root", str(work / "runs")]
    code = _exit_code(COMMANDS[name], argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert expected in err and f"python -m adt.{name}: error:" in err
    assert "Traceback" not in out + err
    assert out == ""  # nothing done, not even a status table
    assert list(work.iterdir()) == []  # nothing written


def test_a_bad_value_through_python_m_is_exit_code_2_without_traceback() -> None:
    env = {**os.environ, "ADT_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-m", "adt.sweep", "--profile", "quick", "--seeds",
                           "-1", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "argument --seeds: -1 must be >= 0" in done.stderr
    assert "Traceback" not in done.stderr


def _parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a command builds (caught as it starts parsing)."""
    seen: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        COMMANDS[name]([])
    return seen[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_names_the_program_shows_defaults_and_is_plain_text(name: str,
                                                                       monkeypatch) -> None:
    parser = _parser(name, monkeypatch)
    assert parser.prog == f"python -m adt.{name}"
    text = parser.format_help()
    for markup in (":func:", ":class:", ":mod:", "``"):
        assert markup not in text, f"{name}'s help shows {markup}"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        if action.nargs != 0 and not action.required:  # flags are off unless given
            shown = formatter._get_help_string(action)
            assert "default" in shown.lower(), f"{name} {action.option_strings[0]}: no default"


def test_the_same_option_means_the_same_everywhere(monkeypatch) -> None:
    helps: dict[str, dict[str, argparse.Action]] = {}
    for name in COMMANDS:
        parser = _parser(name, monkeypatch)
        for action in parser._actions:
            for option in action.option_strings:
                helps.setdefault(option, {})[name] = action
    for option in ("--runs-root", "--no-progress"):
        assert len({a.help for a in helps[option].values()}) == 1, option
    assert {"pipeline", "prepare"} <= set(helps["--workers"])
    for action in helps["--workers"].values():  # 0: no worker processes, in both
        assert "0: no worker processes" in action.help and action.default is None
    for name in ("train", "sweep", "pipeline", "prepare", "tune", "bench"):
        assert helps["--profile"][name].default == "quick"
        assert not helps["--profile"][name].required
