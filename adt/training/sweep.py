"""The sweep launcher: every (method, seed) of a profile, spread over GPUs, resumed.

    python -m adt.sweep --profile paper --seeds 0 1 2 --gpus 0,1,2,3              # 1 GPU a run
    python -m adt.sweep --profile paper --gpus 0,1,2,3,4,5,6,7 --gpus-per-run 4  # torchrun
    python -m adt.sweep --profile paper --dry-run                     # status and commands
    python -m adt.sweep --profile paper --gpus-per-run 4 --slurm sweep.sbatch   # array job

Each unfinished run (no ``finished`` in its run folder's ``metrics.json``) is started as
``python -m adt.train`` (or ``torchrun --standalone --nproc_per_node=N -m adt.train``) on the
next free group of GPUs; a run with a checkpoint resumes from it (:mod:`adt.training.runs`). A
status table (state, epoch, ETA, from the run folders) is printed as runs start and end,
and every ``--every`` seconds; each run's output goes to ``<profile folder>/logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adt.config.profiles import PROFILES, Profile, get_profile
from adt.core.commands import (
    USER_ERRORS,
    add_runs_root,
    command_parser,
    int_at_least,
    positive_float,
)
from adt.method.methods import METHODS, REGISTRY
from adt.training.loop import parse_overrides
from adt.training.runs import DEFAULT_RUNS_ROOT, METRICS, is_locked, profile_folder, run_dir

__all__ = ["Job", "RunStatus", "run_status", "status_table", "train_command", "gpu_groups",
           "SLURM_TIME_FORMATS", "check_slurm_time", "slurm_script", "sweep", "main"]

_PY = "__python__"  # stands for this interpreter in commands; shown as `python`


@dataclass(frozen=True)
class Job:
    """One run of the sweep."""

    method: str
    seed: int


@dataclass(frozen=True)
class RunStatus:
    """What a run folder says about a run."""

    job: Job
    state: str  # finished, running, partial (a checkpoint, nobody training), not started
    epoch: int
    epochs: int
    eta_s: float | None  # the remaining epochs at the mean epoch time so far


def run_status(profile: Profile, job: Job, runs_root: str | Path) -> RunStatus:
    """The run's state, epochs done and ETA, read from its folder (never from the GPU)."""
    folder = run_dir(profile, job.method, job.seed, runs_root)
    epochs = profile.recipe.epochs
    history: list[dict] = []
    finished = False
    try:
        metrics = json.loads((folder / METRICS).read_text())
        history, finished = metrics.get("history", []), bool(metrics.get("finished"))
    except (OSError, ValueError):
        pass
    done = history[-1]["epoch"] if history else 0
    eta = None
    if history and not finished:
        per_epoch = sum(r["train_time_s"] + r["eval_time_s"] for r in history) / len(history)
        eta = per_epoch * (epochs - done)
    state = ("finished" if finished else "running" if is_locked(folder)
             else "partial" if history else "not started")
    return RunStatus(job, state, done, epochs, eta)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


def status_table(statuses: Sequence[RunStatus], notes: dict[Job, str] | None = None) -> str:
    """The status of every run as a fixed-width table (``notes``: e.g. failed runs)."""
    notes = notes or {}
    rows = [("method", "seed", "state", "epoch", "ETA")]
    rows += [(s.job.method, str(s.job.seed), notes.get(s.job, s.state),
              f"{s.epoch}/{s.epochs}", _duration(s.eta_s)) for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    done = sum(s.state == "finished" for s in statuses)
    return "\n".join([*lines, f"{done}/{len(statuses)} finished"])


def gpu_groups(gpus: Sequence[str], per_run: int) -> list[tuple[str, ...]]:
    """The GPUs in groups of ``per_run`` (one group per concurrent run)."""
    if per_run < 1:
        raise ValueError(f"--gpus-per-run {per_run} must be >= 1")
    if len(gpus) < per_run or len(gpus) % per_run:
        raise ValueError(f"{len(gpus)} GPU(s) ({','.join(gpus)}) cannot be split into groups of "
                         f"{per_run} (--gpus-per-run): give a multiple of {per_run} GPUs")
    return [tuple(gpus[i:i + per_run]) for i in range(0, len(gpus), per_run)]


def train_command(profile_name: str, job: Job, runs_root: str | Path, nproc: int = 1,
                  extra: Sequence[str] = ()) -> list[str]:
    """The argv that trains ``job`` (``torchrun`` over ``nproc`` processes when > 1)."""
    launcher = [_PY, "-m", "adt.train"] if nproc == 1 else \
        [_PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "adt.train"]
    return [*launcher, "--profile", profile_name, "--method", job.method, "--seed",
            str(job.seed), "--runs-root", str(runs_root), "--no-progress", *extra]


def shown(argv: Sequence[str]) -> str:
    """A command as a user would type it (``python``, ``torchrun``)."""
    text = shlex.join(argv)
    return text.replace(f"{_PY} -m torch.distributed.run", "torchrun").replace(_PY, "python")


def _real(argv: Sequence[str]) -> list[str]:
    return [sys.executable if a == _PY else a for a in argv]


#: The time limits ``sbatch --time`` accepts.
SLURM_TIME_FORMATS = ("minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
                      "days-hours:minutes", "days-hours:minutes:seconds")
_SLURM_TIME = re.compile(r"[0-9]+(?::[0-9]+){0,2}|[0-9]+-[0-9]+(?::[0-9]+){0,2}")


def check_slurm_time(text: str) -> str:
    """``text`` if it is a time limit of ``sbatch --time`` (:data:`SLURM_TIME_FORMATS`),
    else ValueError saying what to give."""
    if not isinstance(text, str) or not _SLURM_TIME.fullmatch(text):
        raise ValueError(f"{text!r} is not a Slurm time limit; give one of "
                         f"{', '.join(SLURM_TIME_FORMATS)} (e.g. 24:00:00 or 2-00:00:00)")
    return text


def _slurm_time(text: str) -> str:
    """An argparse type: :func:`check_slurm_time`."""
    try:
        return check_slurm_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def slurm_script(profile_name: str, jobs: Sequence[Job], runs_root: str | Path, nproc: int,
                 extra: Sequence[str] = (), workdir: Path | None = None,
                 time_limit: str = "24:00:00") -> str:
    """An sbatch array job: task ``i`` trains ``jobs[i]`` on ``nproc`` GPUs of one node
    (resuming its checkpoint when there is one; ``--requeue`` makes a preempted task
    continue where it stopped). ``time_limit``: the tasks' ``--time``
    (:func:`check_slurm_time`)."""
    check_slurm_time(time_limit)
    if not jobs:
        raise ValueError("every run of the sweep is finished: no array job to write")
    workdir = Path(workdir or Path.cwd()).resolve()
    logs = workdir / runs_root / "slurm"  # absolute: sbatch opens it before the script runs
    table = "\n".join(f'  "{j.method} {j.seed}"' for j in jobs)
    command = shown(train_command(profile_name, Job("__METHOD__", "__SEED__"),  # type: ignore
                                  runs_root, nproc, extra))
    command = command.replace("__METHOD__", '"$METHOD"').replace("__SEED__", '"$SEED"')
    return f"""#!/bin/bash
# adt sweep: profile {profile_name}, {len(jobs)} unfinished run(s), {nproc} GPU(s) each.
# Written by python -m adt.sweep --slurm; submit with sbatch (from any folder).
#SBATCH --job-name=adt-{profile_name}
#SBATCH --array=0-{len(jobs) - 1}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:{nproc}
#SBATCH --cpus-per-task={4 * nproc}
#SBATCH --time={time_limit}
#SBATCH --requeue
#SBATCH --output={logs}/%A_%a.log
set -euo pipefail
cd {shlex.quote(str(workdir))}
mkdir -p {shlex.quote(str(logs))}
JOBS=(
{table}
)
read -r METHOD SEED <<< "${{JOBS[$SLURM_ARRAY_TASK_ID]}}"
{command}
"""


def sweep(profile: Profile, jobs: Sequence[Job], runs_root: Path,
          groups: Sequence[tuple[str, ...]], extra: Sequence[str] = (), every: float = 300,
          poll: float = 5.0, out=sys.stdout) -> int:
    """Train every unfinished job, one per GPU group at a time; returns how many failed."""
    todo = [j for j in jobs
            if run_status(profile, j, runs_root).state not in ("finished", "running")]
    logs = Path(runs_root) / profile_folder(profile) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    free, running, notes = list(groups), {}, {}
    last_table = 0.0

    def table() -> None:
        print(status_table([run_status(profile, j, runs_root) for j in jobs], notes), file=out,
              flush=True)

    while todo or running:
        while todo and free:
            job, group = todo.pop(0), free.pop(0)
            env = {**os.environ}
            if group != ("cpu",):
                env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
            argv = _real(train_command(profile.name, job, runs_root, len(group), extra))
            log = open(logs / f"{job.method}-seed{job.seed}.log", "a")  # noqa: SIM115
            running[job] = (subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT),
                            group, log)
            notes[job] = f"running on {'GPU ' + ','.join(group) if group != ('cpu',) else 'cpu'}"
            print(f"started {job.method} seed {job.seed}: {shown(argv)}", file=out, flush=True)
        time.sleep(poll)
        changed = False
        for job, (proc, group, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            free.append(group)
            del running[job]
            changed = True
            notes[job] = "finished" if proc.returncode == 0 else \
                f"failed (exit {proc.returncode}, see {logs / f'{job.method}-seed{job.seed}.log'})"
        if changed or time.monotonic() - last_table > every:
            table()
            last_table = time.monotonic()
    return sum(n.startswith("failed") for n in notes.values())


def _gpu_list(text: str) -> str:
    """An argparse type: ``cpu`` or comma-separated GPU ids (0,1,...)."""
    if text == "cpu" or all(part.isdigit() for part in text.split(",")):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a GPU list; give comma-separated GPU ids "
                                     "such as 0,1,2,3, or cpu")


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "sweep", __doc__.split("\n\n")[0],
        epilog="Overrides (FIELD=VALUE) are passed to every `python -m adt.train`; see its "
               "--help. A run that is training already (its folder is locked) is left alone.")
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose runs are trained")
    parser.add_argument("--methods", nargs="+", choices=list(REGISTRY), default=list(METHODS),
                        help="the methods to train")
    parser.add_argument("--seeds", nargs="+", type=int_at_least(0), default=None,
                        help="the seeds to train (default: the profile's seeds)")
    parser.add_argument("--gpus", type=_gpu_list, default=None,
                        help="comma-separated GPU ids, e.g. 0,1,2,3 (default: every visible "
                             "GPU), or `cpu` to train one run at a time on the CPU")
    parser.add_argument("--gpus-per-run", type=int_at_least(1), default=1,
                        help="GPUs per run; above 1 each run is started with torchrun")
    add_runs_root(parser, str(DEFAULT_RUNS_ROOT))
    parser.add_argument("--data-root", default="data",
                        help="where the dataset files are, passed to adt.train")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the status table and the commands; start nothing")
    parser.add_argument("--slurm", metavar="FILE", default=None,
                        help="write an sbatch array-job script for the unfinished runs; start "
                             "nothing (default: no script)")
    parser.add_argument("--slurm-time", type=_slurm_time, default="24:00:00",
                        help="the array tasks' time limit (sbatch --time): minutes, "
                             "minutes:seconds, hours:minutes:seconds, days-hours, "
                             "days-hours:minutes or days-hours:minutes:seconds")
    parser.add_argument("--every", type=positive_float, default=300,
                        help="seconds between status tables while running")
    parser.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                        help="profile fields to change, e.g. recipe.epochs=2")
    return parser


def _visible_gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _groups(args: argparse.Namespace) -> list[tuple[str, ...]]:
    """The GPU groups of the command line, checked (ValueError saying what to give)."""
    if args.gpus == "cpu":
        return [("cpu",)]
    gpus = args.gpus.split(",") if args.gpus else _visible_gpus()
    if not gpus and not args.dry_run and not args.slurm:
        raise ValueError("no GPU visible: pass --gpus 0,1,... or --gpus cpu")
    return gpu_groups(gpus or [str(i) for i in range(args.gpus_per_run)], args.gpus_per_run)


def main(argv: Sequence[str] | None = None, out=sys.stdout) -> int:
    """The sweep (``python -m adt.sweep --help``); returns the number of failed runs. Every
    input is checked before the status table is printed."""
    args = _parser().parse_args(argv)
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    groups = _groups(args)
    seeds = args.seeds if args.seeds is not None else list(profile.seeds)
    jobs = [Job(m, s) for m in args.methods for s in seeds]
    extra = [*(["--data-root", args.data_root] if args.data_root != "data" else []),
             *args.overrides]
    statuses = [run_status(profile, j, args.runs_root) for j in jobs]
    todo = [s.job for s in statuses if s.state not in ("finished", "running")]
    print(status_table(statuses), file=out)
    if args.slurm:
        Path(args.slurm).write_text(slurm_script(profile.name, todo, args.runs_root,
                                                 args.gpus_per_run, extra,
                                                 time_limit=args.slurm_time))
        (Path(args.runs_root) / "slurm").mkdir(parents=True, exist_ok=True)
        print(f"wrote {args.slurm}: an array of {len(todo)} task(s); submit with "
              f"`sbatch {args.slurm}`", file=out)
        return 0
    if groups == [("cpu",)]:
        extra = [*extra, "--device", "cpu"]
    if args.dry_run:
        print(f"\n{len(todo)} run(s) to train, {len(groups)} at a time "
              f"({args.gpus_per_run} GPU(s) each); in order, on the next free group:", file=out)
        for i, job in enumerate(todo):
            group = groups[i % len(groups)]
            prefix = "" if group == ("cpu",) else f"CUDA_VISIBLE_DEVICES={','.join(group)} "
            print(prefix + shown(train_command(profile.name, job, args.runs_root,
                                               len(group), extra)), file=out)
        return 0
    return sweep(profile, jobs, Path(args.runs_root), groups, extra, args.every,
                 out=out)


def command_line(argv: list[str] | None = None) -> int:
    """``python -m adt.sweep``: :func:`main`'s result as the exit status (1 when it is not
    0), a bad input reported in one line (exit 2)."""
    try:
        return 1 if main(argv) else 0
    except USER_ERRORS as err:
        print(f"python -m adt.sweep: error: {err}", file=sys.stderr)
        return 2
