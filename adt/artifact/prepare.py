"""Training and evaluating a profile's runs in worker processes before the notebooks read them.

A SmallCNN step at batch 64 keeps one core busy but not two: on a CPU, ``workers``
processes of one thread each train (and attack) ``workers`` models at once, faster than
one process of ``workers`` threads does them one after another. The notebooks then find
every run finished and every table stored, and reuse them (:func:`adt.training.loop.train`,
:func:`adt.evaluation.stored.evaluate_run`): what they compute is unchanged. Only the thread count
of a run differs, which moves last bits of its weights (README, "What reproducible means
here").

The jobs are those the chapters ask for, in the same form, so the stored results match:

- training: every method x seed of the profile, and the budget check's runs of chapter 6
  (:data:`BUDGET_METHODS`, the first seed, :meth:`Profile.with_budget` ``(2)``);
- evaluation: :meth:`adt.artifact.report.Context.evaluate`'s tables (black-box rows for the first
  seed, sources in :data:`adt.method.methods.METHODS` order), the original-AutoAttack reference
  of each (:func:`adt.evaluation.stored.full_autoattack_survivors`), and the white-box tables of the
  budget runs.

Longest jobs start first. A job that fails is reported and left to the notebook, which
then runs it itself; the command line then ends with exit code 1 (its runs root is checked
for writing before any job, exit code 2).

``--conditioning`` runs ledger row b's experiment instead (:func:`prepare_conditioning`):
the amortised methods with the other generator input on every seed, kept as the record
that chapter 3 reads (:mod:`adt.artifact.conditioning`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.artifact.conditioning import AM_METHODS, conditioning_variant
from adt.config.profiles import Profile
from adt.core.runtime import one_thread_worker
from adt.method.methods import LABELS, METHODS

__all__ = ["BUDGET_METHODS", "BUDGET_FACTOR", "TrainJob", "EvalJob", "training_jobs",
           "evaluation_jobs", "conditioning_jobs", "prepare", "prepare_conditioning",
           "JobsFailedError",
           "main"]

#: The methods and the factor of chapter 6's budget check (the "stable under budget" gate).
BUDGET_METHODS = ("pgd_at", "adt_exp")
BUDGET_FACTOR = 2


@dataclass(frozen=True)
class TrainJob:
    """One run to train."""

    profile: Profile
    method: str
    seed: int

    @property
    def cost(self) -> float:
        """Relative cost: epochs x the maximiser's classifier passes per image."""
        from adt.core.data import DATASETS
        from adt.method.methods import build_maximizer

        p = self.profile
        maximizer = build_maximizer(self.method, p.methods, DATASETS[p.dataset], p.train_epsilon)
        return p.recipe.epochs * maximizer.passes_per_image


@dataclass(frozen=True)
class EvalJob:
    """One run to evaluate: white-box, or with the black-box rows from the same seed's
    other models (``black_box``); with its original-AutoAttack reference (``reference``)."""

    profile: Profile
    method: str
    seed: int
    black_box: bool
    reference: bool
    methods: tuple[str, ...] = METHODS  # the black-box sources: the others of these

    @property
    def cost(self) -> float:
        """Relative cost (for the ETA): a white-box table 1; the black-box rows (transfer
        attacks from the other models) and the original-AutoAttack reference 1 more each."""
        return 1.0 + self.black_box + self.reference


def training_jobs(profile: Profile, methods: Sequence[str] = METHODS) -> list[TrainJob]:
    """Every run the chapters train (of ``methods``), longest first."""
    jobs = [TrainJob(profile, m, s) for m in methods for s in profile.seeds]
    long = profile.with_budget(BUDGET_FACTOR)
    jobs += [TrainJob(long, m, profile.seeds[0]) for m in BUDGET_METHODS if m in methods]
    return sorted(jobs, key=lambda j: -j.cost)


def evaluation_jobs(profile: Profile, methods: Sequence[str] = METHODS) -> list[EvalJob]:
    """Every table the chapters read (of ``methods``): black-box ones (the first seed)
    first."""
    first = profile.seeds[0]
    reference = profile.eval.full_autoattack_reference
    jobs = [EvalJob(profile, m, s, s == first, reference, tuple(methods)) for m in methods
            for s in profile.seeds]
    long = profile.with_budget(BUDGET_FACTOR)
    jobs += [EvalJob(long, m, first, False, False, tuple(methods)) for m in BUDGET_METHODS
             if m in methods]
    return sorted(jobs, key=lambda j: (not j.black_box, j.method != "adt_exp"))


def conditioning_jobs(profile: Profile) -> tuple[list[TrainJob], list[EvalJob]]:
    """Ledger row b's experiment: the amortised runs of ``profile`` and of its
    :func:`~adt.artifact.conditioning.conditioning_variant` on every seed, and the variants'
    white-box tables."""
    variant = conditioning_variant(profile)
    train = [TrainJob(p, m, s) for p in (profile, variant) for m in AM_METHODS
             for s in profile.seeds]
    evaluate = [EvalJob(variant, m, s, False, False) for m in AM_METHODS for s in profile.seeds]
    return sorted(train, key=lambda j: -j.cost), evaluate



def _data(profile: Profile) -> Any:
    from adt.config.provenance import REPO_ROOT
    from adt.core.data import load_dataset

    return load_dataset(profile.dataset, root=REPO_ROOT / "data", device="cpu")


def _finished(profile: Profile, method: str, seed: int, runs_root: str) -> Any:
    """A trained run, read without its lock: two workers may read the same source model."""
    from adt.training.modules import load_run

    return load_run(profile, method, seed, device="cpu", runs_root=runs_root)


def _train(job: TrainJob, runs_root: str, force: bool) -> str:
    from adt.training.loop import train

    started = time.perf_counter()
    train(job.profile, job.method, job.seed, data=_data(job.profile), device="cpu",
          runs_root=runs_root, force_retrain=force, progress=False)
    return (f"trained {LABELS[job.method]} seed {job.seed}, {job.profile.recipe.epochs} "
            f"epochs ({time.perf_counter() - started:.0f} s)")


def _evaluate(job: EvalJob, runs_root: str, force: bool) -> str:
    from adt.evaluation.stored import evaluate_run, full_autoattack_survivors

    started = time.perf_counter()
    run, data = _finished(job.profile, job.method, job.seed, runs_root), _data(job.profile)
    sources = None
    if job.black_box:
        sources = {LABELS[o]: _finished(job.profile, o, job.seed, runs_root).model
                   for o in job.methods if o != job.method}
    table = evaluate_run(run, data, sources=sources, black_box=job.black_box, force=force,
                         progress=False)
    if job.reference:
        full_autoattack_survivors(run, table, data, force=force, progress=False)
    return (f"evaluated {LABELS[job.method]} seed {job.seed}, {job.profile.recipe.epochs} "
            f"epochs{' (black-box rows)' if job.black_box else ''} "
            f"({time.perf_counter() - started:.0f} s)")


def prepare(profile: Profile, runs_root: str | Path, workers: int | None = None,
            force_retrain: bool = False, methods: Sequence[str] = METHODS,
            progress: bool = True, prior: dict[str, float] | None = None,
            rates: dict[str, float] | None = None,
            failed: list[str] | None = None) -> dict[str, float]:
    """Train, then evaluate, every job of ``profile`` (of ``methods``) in ``workers``
    one-thread processes (None: the CPU count; 0: in this process); returns the seconds of
    each stage. Prints a line per job and the progress (:func:`_run_stages`: ``progress``,
    ``prior``, ``rates``; the line of each failed job is appended to ``failed`` when
    given). The archived runs (``data/archive/``) that ``runs_root`` lacks are restored
    first, unless ``force_retrain``: a fresh clone trains none of them."""
    if not force_retrain and not profile.temporary_output:
        from adt.training.archive import restore_archive

        restored = restore_archive(runs_root)
        if restored:
            print(f"[adt.prepare] restored {len(restored)} archived run(s) from data/archive",
                  flush=True)
    return _run_stages((("train", training_jobs(profile, methods), _train),
                        ("evaluate", evaluation_jobs(profile, methods), _evaluate)),
                       runs_root, workers, force_retrain, progress, prior, rates, failed)


class JobsFailedError(RuntimeError):
    """Jobs of :func:`prepare_conditioning` failed, so it wrote no record."""


def prepare_conditioning(profile: Profile, runs_root: str | Path, workers: int | None = None,
                         force_retrain: bool = False, path: Path | None = None,
                         progress: bool = True) -> Path:
    """Run :func:`conditioning_jobs` in ``workers`` one-thread processes and write the record
    to ``path`` (default :func:`adt.artifact.conditioning.record_path`); returns the path.
    A failed job raises :class:`JobsFailedError` (no record: it needs every run)."""
    from adt.artifact.conditioning import make_record, record_path
    from adt.core.io import write_json
    from adt.evaluation.stored import evaluate_run

    train_jobs, eval_jobs = conditioning_jobs(profile)
    failed: list[str] = []
    _run_stages((("train", train_jobs, _train), ("evaluate", eval_jobs, _evaluate)), runs_root,
                workers, force_retrain, progress, failed=failed)
    if failed:
        raise JobsFailedError(f"{len(failed)} job(s) failed, so no record was written; the "
                              f"first: {failed[0]}")
    variant, data = conditioning_variant(profile), _data(profile)
    own = [_finished(profile, m, s, str(runs_root)) for m in AM_METHODS for s in profile.seeds]
    others = [_finished(variant, m, s, str(runs_root)) for m in AM_METHODS for s in profile.seeds]
    tables = [evaluate_run(r, data, black_box=False, progress=False) for r in others]
    column = tables[0].lookup("pgd", steps=min(profile.eval.pgd_steps))
    return write_json(make_record(profile, own, others, tables, column),
                      path or record_path(profile))


def _run_stages(stages: Sequence[tuple[str, list[Any], Any]], runs_root: str | Path,
                workers: int | None, force_retrain: bool, progress: bool = True,
                prior: dict[str, float] | None = None,
                rates: dict[str, float] | None = None,
                failed: list[str] | None = None) -> dict[str, float]:
    """Run each stage's jobs (``fn(job, runs_root, force_retrain)`` returning a line) in
    ``workers`` one-thread processes (None: one per core; 0: none, one after another in this
    process); returns the seconds of each stage. A job that raises is reported in its line
    and the others go on; that line is appended to ``failed`` when given.

    A line per finished job says which it was, k of N and the ETA; while jobs run, a status
    line (jobs done of total, elapsed, ETA) is live on a terminal and printed every minute
    otherwise (:class:`adt.core.progress.Reporter`; ``progress=False`` or ``ADT_PROGRESS=0``:
    none). The ETA starts from ``prior`` (seconds per unit of a job's ``cost``, by stage,
    measured by an earlier batch) and follows the finished jobs; their measured values are
    put into ``rates`` when given."""
    from adt.core.progress import JobProgress, Reporter, duration

    workers = (os.cpu_count() or 1) if workers is None else workers
    seconds: dict[str, float] = {}
    reporter = Reporter("[adt.prepare]", progress)
    for stage, jobs, fn in stages:
        started = time.perf_counter()
        tracker = JobProgress([getattr(job, "cost", 1.0) for job in jobs], max(workers, 1),
                              (prior or {}).get(stage))

        def line(stage: str = stage, tracker: JobProgress = tracker) -> str:
            return f"{stage}: {tracker.line()}"

        reporter.status(line(), force=True)
        reporter.start_ticker(line)
        try:
            for index, text, err in _outcomes(jobs, fn, str(runs_root), force_retrain, workers,
                                              tracker):
                job = jobs[index]
                if err is not None:  # the notebook runs it again and shows the error
                    text = (f"{stage} {LABELS[job.method]} seed {job.seed} failed: "
                            f"{type(err).__name__}: {err}")
                    if failed is not None:
                        failed.append(text)
                reporter.event(f"{tracker.done}/{tracker.total} {text}; ETA "
                               f"{duration(tracker.eta())}")
                reporter.status(line(), force=True)
        finally:
            reporter.close()
        seconds[stage] = round(time.perf_counter() - started, 1)
        if rates is not None and tracker.seconds_per_cost() is not None:
            rates[stage] = round(tracker.seconds_per_cost(), 3)
    return seconds


def _outcomes(jobs: Sequence[Any], fn: Any, runs_root: str, force: bool, workers: int,
              tracker: Any) -> Iterator[tuple[int, str | None, Exception | None]]:
    """``(index, line, None)`` or ``(index, None, error)`` per job as it finishes, the
    tracker told when each starts and ends."""
    if workers == 0:
        for index, job in enumerate(jobs):
            tracker.start(index)
            try:
                text, err = fn(job, runs_root, force), None
            except Exception as error:
                text, err = None, error
            tracker.finish(index)
            yield index, text, err
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=one_thread_worker) as pool:
        futures = {pool.submit(fn, job, runs_root, force): i for i, job in enumerate(jobs)}
        waiting = list(range(len(jobs)))
        for _ in range(min(workers, len(jobs))):  # a worker takes the next job as one ends
            tracker.start(waiting.pop(0))
        for future in as_completed(futures):
            index = futures[future]
            tracker.finish(index)
            if waiting:
                tracker.start(waiting.pop(0))
            try:
                yield index, future.result(), None
            except Exception as error:
                yield index, None, error


def _parser() -> argparse.ArgumentParser:
    from adt.config.profiles import PROFILES
    from adt.core.commands import add_progress, add_runs_root, add_workers, command_parser

    parser = command_parser("prepare", __doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose runs are trained and evaluated")
    add_workers(parser, "train and evaluate the runs in this many one-thread processes; 0: "
                        "no worker processes, the jobs run one after another in this process")
    parser.add_argument("--measure", action="store_true",
                        help="measure the speed-up of one-thread workers (writes "
                             "benchmarks/workers-<profile>.json) instead of preparing the runs")
    parser.add_argument("--conditioning", action="store_true",
                        help="run ledger row b's experiment (the amortised methods with the "
                             "other generator input, every seed; ~11 min on 2 cores at quick) "
                             "and write benchmarks/conditioning-<profile>.json for chapter 3")
    add_runs_root(parser)
    add_progress(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adt.prepare``: bad input (a runs root that cannot be written included)
    ends in a usage error (exit code 2) before any work; exit code 1 when a job failed."""
    from adt.config.profiles import get_profile
    from adt.core.commands import USER_ERRORS, check_writable_folder

    parser = _parser()
    args = parser.parse_args(argv)
    if args.measure and args.workers == 0:
        parser.error("--measure compares worker processes: give --workers 1 or more (or "
                     "leave it out: one per core)")
    if not args.measure:
        try:
            check_writable_folder(args.runs_root, "--runs-root")
        except ValueError as err:
            parser.error(str(err))
    try:
        return _run(args, get_profile(args.profile))
    except USER_ERRORS as err:
        print(f"python -m adt.prepare: error: {err}", file=sys.stderr)
        return 2
    except JobsFailedError as err:
        print(f"python -m adt.prepare: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, profile: Profile) -> int:
    """The work of :func:`main`, its input checked: the exit code."""
    from adt.core.io import write_json

    if args.conditioning:
        path = prepare_conditioning(profile, args.runs_root, args.workers,
                                    progress=args.progress)
        print(f"wrote {path}")
        return 0
    if args.measure:
        from adt.artifact.throughput import worker_throughput

        result = worker_throughput(profile, workers=args.workers)
        print(f"{result['method']}: one process on {result['workers']} threads "
              + ", ".join(f"{v:.0f}" for v in result["one_process_images_per_s"])
              + f" images/s; {result['workers']} one-thread processes "
              + ", ".join(f"{v:.0f}" for v in result["workers_images_per_s"])
              + " images/s; speed-up " + ", ".join(f"{v:.2f}x" for v in result["speedup"]))
        out = write_json(result, Path("benchmarks") / f"workers-{profile.name}.json")
        print(f"wrote {out}")
        return 0
    failed: list[str] = []
    print(prepare(profile, args.runs_root, args.workers, progress=args.progress, failed=failed))
    if failed:
        print(f"python -m adt.prepare: {len(failed)} job(s) failed (their lines above say "
              f"why); the first: {failed[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
