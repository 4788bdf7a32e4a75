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
  of each (:func:`adt.evaluation.stored.full_autoattack_survivors`), and the budget runs' white-box
  tables.

Longest jobs start first. A job that fails is reported and left to the notebook, which
then runs it itself.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.config.profiles import Profile
from adt.method.methods import LABELS, METHODS

__all__ = ["BUDGET_METHODS", "BUDGET_FACTOR", "TrainJob", "EvalJob", "training_jobs",
           "evaluation_jobs", "prepare"]

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
        """Relative cost: epochs x the inner maximisation's forward-backward passes."""
        s = self.profile.methods
        passes = {"standard": 1, "pgd_at": s.pgd_steps, "trades": s.trades_steps,
                  "adt_exp": s.adt_steps * s.adt_num_samples}.get(self.method, 3)
        return self.profile.recipe.epochs * (1 + passes)


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


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # the notebooks show the checks as data


def _run(profile: Profile, method: str, seed: int, runs_root: str, force: bool = False) -> Any:
    from adt.config.provenance import REPO_ROOT
    from adt.core.data import load_dataset
    from adt.training.loop import train

    data = load_dataset(profile.dataset, root=REPO_ROOT / "data", device="cpu")
    return train(profile, method, seed, data=data, device="cpu", runs_root=runs_root,
                 force_retrain=force, progress=False), data


def _train(job: TrainJob, runs_root: str, force: bool) -> str:
    started = time.perf_counter()
    _run(job.profile, job.method, job.seed, runs_root, force)
    return (f"trained {LABELS[job.method]} seed {job.seed}, {job.profile.recipe.epochs} "
            f"epochs ({time.perf_counter() - started:.0f} s)")


def _evaluate(job: EvalJob, runs_root: str, force: bool) -> str:
    from adt.evaluation.stored import evaluate_run, full_autoattack_survivors

    started = time.perf_counter()
    run, data = _run(job.profile, job.method, job.seed, runs_root)
    sources = None
    if job.black_box:
        sources = {LABELS[o]: _run(job.profile, o, job.seed, runs_root)[0].model
                   for o in job.methods if o != job.method}
    table = evaluate_run(run, data, sources=sources, black_box=job.black_box, force=force,
                         progress=False)
    if job.reference:
        full_autoattack_survivors(run, table, data, force=force, progress=False)
    return (f"evaluated {LABELS[job.method]} seed {job.seed}"
            f"{' (black-box rows)' if job.black_box else ''} "
            f"({time.perf_counter() - started:.0f} s)")


def prepare(profile: Profile, runs_root: str | Path, workers: int | None = None,
            force_retrain: bool = False, methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Train, then evaluate, every job of ``profile`` (of ``methods``) in ``workers``
    one-thread processes (default: the CPU count); returns the seconds of each stage.
    Prints a line per job."""
    workers = workers or os.cpu_count() or 1
    seconds = {}
    context = multiprocessing.get_context("spawn")
    for stage, jobs, fn in (("train", training_jobs(profile, methods), _train),
                            ("evaluate", evaluation_jobs(profile, methods), _evaluate)):
        started = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
            futures = {pool.submit(fn, job, str(runs_root), force_retrain): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    print(f"[adt.prepare] {future.result()}", flush=True)
                except Exception as err:  # the notebook runs it again and shows the error
                    print(f"[adt.prepare] {stage} {LABELS[job.method]} seed {job.seed} "
                          f"failed: {type(err).__name__}: {err}", flush=True)
        seconds[stage] = round(time.perf_counter() - started, 1)
    return seconds
