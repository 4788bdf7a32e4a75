"""The budget study: the headline A_rob claims on enough seeds, at the recipe's budget and twice it.

The claims "ADT_EXP / ADT_EXP-AM / ADT_IMP-AM is more robust than PGD-AT / TRADES in the
worst case" are tested on the seeds the design record asks for
(``benchmarks/study-design-<profile>.json``, written by ``--design`` from the committed
per-seed results before any study run: :mod:`adt.study.power`), each method trained at
the profile's budget and at twice it (:meth:`Profile.with_budget`; the same seeds at both,
so the budget effect is paired), and each run evaluated by the A_rob cascade on the
profile's test images (:func:`adt.evaluation.stored.evaluate_a_rob`). The runs are the
profile's own: the study's first seeds at the recipe's budget are the very runs the
chapters use.

Jobs run in one-thread worker processes (as :mod:`adt.artifact.prepare`); a run is
evaluated as soon as it is trained, then archived (:mod:`adt.training.archive`) and, with
``--commit``, committed, so a study that spans sessions and machines loses at most the runs
in flight. ``python -m adt.budget_study --profile quick`` runs it; it reuses every finished run.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.config.profiles import Profile
from adt.config.provenance import REPO_ROOT
from adt.core.runtime import one_thread_worker
from adt.method.methods import LABELS

__all__ = ["BASELINES", "ADT_METHODS", "STUDY_METHODS", "HEADLINE_PAIRS", "BUDGETS",
           "design_path", "make_design", "load_design", "needs_extension", "study_budgets", "study_profiles", "StudyJob",
           "study_jobs", "run_study", "main"]

BASELINES = ("pgd_at", "trades")
ADT_METHODS = ("adt_exp", "adt_exp_am", "adt_imp_am")
STUDY_METHODS = BASELINES + ADT_METHODS
#: (ADT method, baseline): the six headline A_rob claims
HEADLINE_PAIRS = tuple((a, b) for a in ADT_METHODS for b in BASELINES)
#: the recipe's budget and twice it
BUDGETS = (1, 2)
#: the claims whose pooled variance sets the seed count: ADT_EXP's two (they share its runs)
PLANNING_PAIRS = (("adt_exp", "pgd_at"), ("adt_exp", "trades"))


def design_path(profile: Profile) -> Path:
    return REPO_ROOT / "benchmarks" / f"study-design-{profile.name}.json"


def _min_agreement(claims_md: str, pairs: Sequence[tuple[str, str]]) -> float:
    """The smallest per-example agreement of the ``distinct_models`` gate rows of CLAIMS.md
    between the models of ``pairs`` (either direction)."""
    wanted = {frozenset((LABELS[a], LABELS[b])) for a, b in pairs}
    values = []
    for line in claims_md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == "distinct_models" and " -> " in cells[1]:
            if frozenset(cells[1].split(" -> ")) in wanted:
                values.append(float(cells[2]))
    if not values:
        raise ValueError("no distinct_models row for the headline pairs in CLAIMS.md")
    return min(values)


def _git_show(commit: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True).stdout


def make_design(profile: Profile, commit: str = "HEAD", effect: float = 5.0) -> dict[str, Any]:
    """The design record from the outputs committed at ``commit``: chapter 4's per-seed
    A_rob (notebooks/04_evaluation.ipynb) and the per-example agreement of the headline
    pairs (figures/CLAIMS.md, the distinct_models gate), through
    :func:`adt.study.power.design`."""
    import json

    from adt.config.provenance import git_commit
    from adt.study.power import design, per_seed_a_rob_from_notebook

    notebook = json.loads(_git_show(commit, "notebooks/04_evaluation.ipynb"))
    claims = _git_show(commit, "figures/CLAIMS.md")
    by_label = per_seed_a_rob_from_notebook(notebook)
    per_seed = {m: by_label[LABELS[m]] for m in STUDY_METHODS}
    discordance = 1.0 - _min_agreement(claims, HEADLINE_PAIRS)
    record = design(per_seed, HEADLINE_PAIRS, PLANNING_PAIRS, effect=effect,
                    n_images=profile.eval.n_examples, discordance=discordance)
    source = subprocess.run(["git", "rev-parse", commit], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    record.update(profile=profile.name, budgets=list(BUDGETS), methods=list(STUDY_METHODS),
                  source={"commit": source, "per_seed": "notebooks/04_evaluation.ipynb",
                          "discordance": "figures/CLAIMS.md (distinct_models, PGD-20, seed 0)"},
                  recorded={"command": f"python -m adt.budget_study --profile {profile.name} "
                                       f"--design --source {commit}",
                            "code_commit": git_commit(), "date": time.strftime("%Y-%m-%d")})
    return record


def load_design(profile: Profile) -> dict[str, Any]:
    from adt.core.io import read_json

    path = design_path(profile)
    if not path.is_file():
        raise FileNotFoundError(f"no study design for profile {profile.name!r} at {path}; "
                                f"write it first: python -m adt.budget_study --profile "
                                f"{profile.name} --design")
    return read_json(path)


def study_profiles(profile: Profile, seeds: Sequence[int],
                   budgets: Sequence[int] = BUDGETS) -> list[Profile]:
    """The profile at each of ``budgets`` (factor 1 is ``profile`` itself), on ``seeds``."""
    base = profile.replace(seeds=tuple(seeds))
    return [base.with_budget(f) for f in budgets]


def needs_extension(profile: Profile, runs_root: str | Path = "data/runs") -> bool | None:
    """The stopping rule at factor 4: True when some study method has not plateaued there
    (all five then train at :data:`adt.study.trial.EXTENSION_BUDGET`), False when all have, None while a
    run at factor 2 or 4 is missing."""
    from adt.study.budget import complete_seeds, read_grids
    from adt.study.trial import load_trial_design, plateau_gains

    design = load_trial_design(profile)
    if design is None:
        return None
    seeds = design["seeds"]
    grids = read_grids(profile, STUDY_METHODS, seeds, (2, 4), runs_root)
    if complete_seeds(grids, STUDY_METHODS, (2, 4)) != sorted(seeds):
        return None
    gains = plateau_gains(grids, STUDY_METHODS, seeds, 4)
    return not all(g["plateaued"] for g in gains.values())


def study_budgets(profile: Profile, runs_root: str | Path = "data/runs") -> tuple[int, ...]:
    """The budget factors the study trains: :data:`BUDGETS`, or, once the fair trial's design
    is recorded (:mod:`adt.study.trial`), its budgets and, when its stopping rule asks
    (:func:`needs_extension`), the extension budget."""
    from adt.study.trial import EXTENSION_BUDGET, load_trial_design

    design = load_trial_design(profile)
    if design is None:
        return BUDGETS
    budgets = tuple(design["budgets"])
    return budgets + (EXTENSION_BUDGET,) if needs_extension(profile, runs_root) else budgets


@dataclass(frozen=True)
class StudyJob:
    """Train (``stage`` "train") or A_rob-evaluate ("evaluate") one run of the study."""

    stage: str
    profile: Profile
    method: str
    seed: int

    @property
    def name(self) -> str:
        return (f"{self.stage} {LABELS[self.method]} seed {self.seed}, "
                f"{self.profile.recipe.epochs} epochs")


def _cost(profile: Profile, method: str) -> float:
    """Relative cost of a training run: epochs x the maximiser's classifier passes per image."""
    from adt.core.data import DATASETS
    from adt.method.methods import build_maximizer

    maximizer = build_maximizer(method, profile.methods, DATASETS[profile.dataset],
                                profile.train_epsilon)
    return profile.recipe.epochs * maximizer.passes_per_image


#: the Standard model trains at these budget factors too (the trial's secondary claims)
STANDARD_BUDGETS = (4, 8)


def study_jobs(profile: Profile, seeds: Sequence[int], budgets: Sequence[int] = BUDGETS
               ) -> list[StudyJob]:
    """Every training job of the study, a seed at a time (every budget, longest first), so
    that whole seeds finish early; the Standard model at the budgets of
    :data:`STANDARD_BUDGETS` the study trains."""
    jobs = [StudyJob("train", p, m, s) for s in seeds
            for f, p in zip(budgets, study_profiles(profile, seeds, budgets), strict=True)
            for m in STUDY_METHODS + (("standard",) if f in STANDARD_BUDGETS else ())]
    return sorted(jobs, key=lambda j: (list(seeds).index(j.seed), -_cost(j.profile, j.method)))



def _work(job: StudyJob, runs_root: str) -> str:
    from adt.core.data import load_dataset
    from adt.evaluation.stored import evaluate_a_rob
    from adt.study.spread import store_spread
    from adt.training.loop import train
    from adt.training.modules import load_run

    started = time.perf_counter()
    data = load_dataset(job.profile.dataset, root=REPO_ROOT / "data", device="cpu")
    if job.stage == "train":
        train(job.profile, job.method, job.seed, data=data, device="cpu", runs_root=runs_root,
              progress=False)
        return f"{job.name} ({time.perf_counter() - started:.0f} s)"
    run = load_run(job.profile, job.method, job.seed, device="cpu", runs_root=runs_root)
    table = evaluate_a_rob(run, data)
    if job.method in ADT_METHODS:
        spread = store_spread(run, data)
        spread_text = f", spread {spread['spread'] / spread['uniform']:.3f} x uniform"
    else:
        spread_text = ""
    return (f"{job.name}: A_rob {100 * float(table.worst_case().float().mean()):.1f} %"
            f"{spread_text} ({time.perf_counter() - started:.0f} s)")




def _commit(paths: Sequence[Path], message: str) -> None:
    """Commit ``paths`` alone (retrying while another git process holds the index)."""
    rel = [str(p.resolve().relative_to(REPO_ROOT)) for p in paths]
    for _ in range(30):
        add = subprocess.run(["git", "add", "--", *rel], cwd=REPO_ROOT, capture_output=True,
                             text=True)
        if add.returncode == 0:
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel],
                                  cwd=REPO_ROOT, capture_output=True, text=True)
            if done.returncode == 0 or "nothing to commit" in done.stdout + done.stderr:
                return
        time.sleep(2)
    print(f"[adt.budget_study] could not commit {rel}; commit them by hand", flush=True)


def _finished_run(job: StudyJob, runs_root: str | Path) -> bool:
    from adt.training.runs import METRICS, run_dir

    path = run_dir(job.profile, job.method, job.seed, runs_root) / METRICS
    return path.is_file() and bool(json.loads(path.read_text()).get("finished"))


def _evaluated_run(job: StudyJob, runs_root: str | Path) -> bool:
    """The run is trained and its A_rob stored: nothing of it is left to do."""
    from adt.evaluation.stored import A_ROB_FILE
    from adt.training.runs import run_dir

    return (_finished_run(job, runs_root)
            and (run_dir(job.profile, job.method, job.seed, runs_root) / A_ROB_FILE).is_file())


def run_study(profile: Profile, seeds: Sequence[int], runs_root: str | Path = "data/runs",
              workers: int | None = None, commit: bool = False,
              archive_root: str | Path | None = None, train: bool = True,
              jobs: Sequence[StudyJob] | None = None,
              after_archive: Callable[[], Sequence[Path]] | None = None) -> dict[str, Any]:
    """Train, A_rob-evaluate and archive (into ``archive_root``, default
    :data:`adt.training.archive.ARCHIVE_ROOT`) every run of the study (or ``jobs``) in
    ``workers`` one-thread processes; a trained run's evaluation goes before the next
    training job. ``train=False``: only the runs already finished are evaluated (reused
    when stored), measured (``spread.json``) and archived; nothing is trained.
    ``after_archive``: called after each run is archived; the files it returns are committed
    with the run (``python -m adt.budget_study``: the model card)."""
    from adt.training.archive import ARCHIVE_ROOT, archive_run, restore_archive
    from adt.training.runs import profile_folder, run_dir

    restore_archive(runs_root, archive_root or ARCHIVE_ROOT)  # what earlier sessions finished
    workers = (os.cpu_count() or 1) if workers is None else workers
    if jobs is None:
        jobs = study_jobs(profile, seeds, study_budgets(profile, runs_root))
    pending = [j for j in jobs if not (train and _evaluated_run(j, runs_root))]
    if not train:
        pending = [dataclasses.replace(j, stage="evaluate") for j in pending
                   if _finished_run(j, runs_root)]
    total = len(pending) * (2 if train else 1)
    done, started = 0, time.perf_counter()
    running: dict[Future, StudyJob] = {}
    failed = []
    pool: Executor = (ThreadPoolExecutor(1) if workers == 0 else ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=one_thread_worker))
    with pool:
        while pending or running:
            while pending and len(running) < max(workers, 1):
                job = pending.pop(0)
                running[pool.submit(_work, job, str(runs_root))] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                done += 1
                try:
                    line = future.result()
                except Exception as err:
                    failed.append(job.name)
                    line = f"{job.name} failed: {type(err).__name__}: {err}"
                    done += job.stage == "train"  # its evaluation will not run
                else:
                    if job.stage == "train":
                        pending.insert(0, StudyJob("evaluate", job.profile, job.method,
                                                   job.seed))
                    else:
                        folder = run_dir(job.profile, job.method, job.seed, runs_root)
                        # only the chapters' own runs keep their maximiser (a variant's,
                        # e.g. the departure test's wider generators, would weigh megabytes)
                        chapters = (job.seed in profile.seeds
                                    and profile_folder(job.profile) == profile_folder(profile))
                        archived = archive_run(folder, runs_root, archive_root or ARCHIVE_ROOT,
                                               maximizer=chapters)
                        if commit:
                            also = list(after_archive()) if after_archive else []
                            _commit([archived, *also], f"Budget study: {job.name[9:]} archived")
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (total - done)
                print(f"[adt.budget_study] {done}/{total} jobs, {elapsed / 60:.0f} min, ETA "
                      f"{eta / 60:.0f} min: {line}", flush=True)
    return {"jobs": total, "failed": failed, "seconds": round(time.perf_counter() - started)}


def _model_card() -> list[Path]:
    """Rewrite ``docs/models.md`` from the archive, to be committed with the run."""
    from adt.training.card import MODEL_CARD, write_model_card

    write_model_card()
    return [MODEL_CARD]


def main(argv: Sequence[str] | None = None) -> int:
    from adt.config.profiles import PROFILES, get_profile
    from adt.core.commands import add_runs_root, add_workers, command_parser
    from adt.core.io import write_json

    parser = command_parser("budget_study", __doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose claims are studied")
    parser.add_argument("--design", action="store_true",
                        help="write the design record benchmarks/study-design-<profile>.json "
                             "from the committed per-seed results, then stop")
    parser.add_argument("--source", default="HEAD",
                        help="the commit whose outputs the design reads")
    add_workers(parser, "one-thread worker processes for the jobs; 0: no worker processes, "
                        "the jobs run one after another in this process")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: evaluate, measure and archive the finished runs "
                             "only")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each archived run as it finishes")
    parser.add_argument("--departures", action="store_true",
                        help="instead of the study: the fair trial's departure test, ADT_IMP-AM "
                             "at generator widths 32 and 64 and with the release's raw input "
                             "(adt.study.trial.departure_profiles)")
    parser.add_argument("--archive-root", default=None, metavar="DIR",
                        help="the archive finished runs are restored from and archived into "
                             "(default: data/archive/); an empty folder with an empty "
                             "--runs-root retrains every run of the study")
    add_runs_root(parser)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    if args.design and subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.source}^{{commit}}"],
            cwd=REPO_ROOT, capture_output=True).returncode != 0:
        parser.error(f"--source {args.source!r} is not a commit of this repository; give a "
                     "commit, branch or tag (e.g. HEAD or 2baadd7)")
    if args.design:
        print(f"wrote {write_json(make_design(profile, args.source), design_path(profile))}")
        return 0
    try:
        design = load_design(profile)
    except FileNotFoundError as err:
        print(f"python -m adt.budget_study: error: {err}", file=sys.stderr)
        return 2
    jobs = None
    if args.departures:
        from adt.study.trial import IMP_SEEDS, departure_profiles

        jobs = [StudyJob("train", p, "adt_imp_am", s) for s in IMP_SEEDS
                for p in departure_profiles(profile).values()]
    result = run_study(profile, tuple(range(design["seeds"])), args.runs_root, args.workers,
                       args.commit, archive_root=args.archive_root, train=not args.no_train,
                       jobs=jobs, after_archive=_model_card)
    print(result)
    return 1 if result["failed"] else 0
