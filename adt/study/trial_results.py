"""The fair trial's record and results: the design record written before its runs
(:func:`make_trial_design`), and the trial as the stored runs have it (:func:`read_trial`),
with the rows of chapter 6's tables and the direction line. The rules themselves (plateau,
verdict budget, margin verdicts, ``trained_out``) are :mod:`adt.study.trial`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.config.profiles import Profile
from adt.study.claims import format_effect
from adt.study.trial import (
    CANDIDATE_BUDGETS,
    EXTENSION_BUDGET,
    IMP_SEEDS,
    IMP_WIDTHS,
    MARGIN_POINTS,
    PLATEAU_POINTS,
    TRIAL_BUDGETS,
    TrialPair,
    choose_verdict_budget,
    judge_trial_pair,
    plateau_table,
)

__all__ = ["make_trial_design", "Trial", "read_trial", "effect_rows", "method_rows",
           "direction_line", "pending_runs_cost"]


def make_trial_design(profile: Profile) -> dict[str, Any]:
    """The trial's design record (module docstring), for ``profile``'s study seeds."""
    from adt.config.provenance import git_commit
    from adt.study.campaign import STUDY_METHODS, load_design

    seeds = list(range(load_design(profile)["seeds"]))
    epochs = {str(f): profile.with_budget(f).recipe.epochs
              for f in (*TRIAL_BUDGETS, EXTENSION_BUDGET)}
    return {
        "profile": profile.name,
        "seeds": seeds,
        "methods": list(STUDY_METHODS),
        "budgets": list(TRIAL_BUDGETS),
        "extension_budget": EXTENSION_BUDGET,
        "epochs_at_budget": epochs,
        "margin_points": MARGIN_POINTS,
        "plateau_points": PLATEAU_POINTS,
        "stopping_rule": (
            f"the verdict budget is the smallest of {list(CANDIDATE_BUDGETS)} (factors of the "
            f"recipe's epochs) at which every study method's per-seed A_rob gain from the "
            f"budget before it has a seed-level 95 % interval with upper end below "
            f"{PLATEAU_POINTS} points; if some method fails at factor 4, all five train at "
            f"factor {EXTENSION_BUDGET}; if one still fails there, the verdict is read at "
            f"factor {EXTENSION_BUDGET} behind the trained_out gate"),
        "verdicts": {
            "supported": "95 % interval excludes 0 in the claim's direction",
            "not reproduced: the baseline is more robust":
                "95 % interval excludes 0 against the claim",
            f"not reproduced: no difference as large as {MARGIN_POINTS:g} points":
                "95 % interval inside (-delta, +delta) and containing 0 (two one-sided tests)",
            "inconclusive": "none of the above",
        },
        "trained_out_gate": (
            "at the verdict budget, for a pair with a method that has not plateaued: shift the "
            "effect's interval by that method's gain upper bound in its favour (one more "
            "doubling); the gate fails if the verdict changes, whichever way"),
        "secondary": {
            "standard": "the Standard model of every study seed at every candidate budget "
                        "trained (black-box transfer source, diversity reference)",
            "black_box": "SPSA samples chosen before the black-box runs for >= 80 % power at "
                         "the margin, from the per-image variance of the committed seed-0 rows",
            "claims_on_seeds": "attack power, diversity, curvature and black-box on every "
                               "study seed at the verdict budget; summaries name every model",
        },
        "fair_recipe": ("python -m adt.tune --profile quick --methods adt_exp: the baselines' "
                        "rule (grid, eligibility, choice) on ADT_EXP's own validation score; "
                        "if it picks another recipe, ADT_EXP's study arm also trains at it, "
                        "on every seed, at the verdict budget"),
        "imp_am_widths": {
            "widths": list(IMP_WIDTHS), "seeds": list(IMP_SEEDS), "budget": 1,
            "also": "the release's raw input (conditioning='raw') at width 8, where it trains",
            "rule": "a width restores the spread when every seed's sample_spread is >= 0.1 x "
                    "uniform noise (the gate's own threshold); the smallest such width becomes "
                    "the study's ADT_IMP-AM arm at the verdict budget; if none does, "
                    "sample_spread is reported as a finding about the method, not a gate",
        },
        "a_rob_error": ("the authors' AutoAttack (standard) on the first 200 test images of "
                        "seeds 0 and 1 of every study method at the verdict budget: 400 images "
                        "a method, so 0 disagreements bound the error at 0.75 points (95 %)"),
        "recorded": {"code_commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
                     "runs_at_32_or_64_epochs_when_recorded": 0,
                     "known_when_recorded": (
                         "the 8- and 16-epoch study results (CLAIMS.md at 2baadd7): per "
                         "doubling the ADT variants gained 9.3-11.6 points, PGD-AT 3.1, "
                         "TRADES 6.3")},
    }


@dataclass(frozen=True)
class Trial:
    """The fair trial as the stored runs have it (:func:`read_trial`)."""

    planned_seeds: tuple[int, ...]
    seeds: tuple[int, ...]  # every method at every budget of ``budgets``
    budgets: tuple[int, ...]  # budget factors analysed
    epochs: dict[int, int]  # budget factor -> epochs
    grids: dict[tuple[int, str], dict[int, Any]]
    plateaus: dict[int, dict[str, Any]]
    verdict_budget: int
    plateaued: bool  # the stopping rule named ``verdict_budget``
    pending: tuple[str, ...]  # what the design still asks for (empty: complete)
    pairs: dict[tuple[str, str], TrialPair]

    @property
    def complete(self) -> bool:
        return not self.pending

    def completeness_gate(self) -> Any:
        """``trial_complete`` (evidence): every planned seed at every budget the stopping
        rule asks for; while it fails the headline verdicts are "inconclusive: trial in
        progress", and the numbers are shown as interim."""
        from adt.study.verdicts import Gate

        return Gate("trial_complete", "", float(len(self.seeds)),
                    f"{len(self.planned_seeds)} seeds at every budget the stopping rule asks for",
                    self.complete, "; ".join(self.pending) or "complete",
                    "" if self.complete else "trial in progress")


def read_trial(profile: Profile, runs_root: str | Path, planned_seeds: Any,
               methods: Any = None, pairs: Any = None, budgets: Any = None) -> Trial:
    """The trial from the stored ``eval_a_rob.json`` of every run: the seeds complete at the
    design's budgets (and at the extension budget once it is complete on enough seeds), the
    plateau table, the verdict budget by the stopping rule, and each headline pair judged
    there (:func:`judge_trial_pair`). Nothing is trained or evaluated here. ``budgets``
    replaces the design's :data:`TRIAL_BUDGETS` (tests)."""
    from adt.method.methods import LABELS
    from adt.study.budget import complete_seeds, read_grids
    from adt.study.campaign import HEADLINE_PAIRS, STUDY_METHODS
    from adt.study.evidence import MIN_SEEDS

    methods = tuple(methods or STUDY_METHODS)
    pairs = tuple(pairs or HEADLINE_PAIRS)
    planned = tuple(planned_seeds)
    base = tuple(budgets or TRIAL_BUDGETS)
    everything = (*base, EXTENSION_BUDGET)
    grids = read_grids(profile, methods, planned, everything, runs_root)
    extended = len(complete_seeds(grids, methods, everything)) >= MIN_SEEDS
    budgets = everything if extended else base
    seeds = tuple(complete_seeds(grids, methods, budgets))
    while len(seeds) < min(2, len(planned)) and len(budgets) > 2:  # interim: fewer budgets
        budgets = budgets[:-1]
        seeds = tuple(complete_seeds(grids, methods, budgets))
    if not seeds:
        raise ValueError(f"the trial needs a seed with every method at "
                         f"{[profile.with_budget(b).recipe.epochs for b in budgets]} epochs; "
                         f"found none. Train them: python -m adt.budget_study "
                         f"--profile {profile.name}")
    epochs = {b: profile.with_budget(b).recipe.epochs for b in everything}
    plateaus = plateau_table(grids, methods, seeds, budgets)
    verdict_budget, plateaued = choose_verdict_budget(plateaus)
    pending = []
    for factor in base:
        missing = [s for s in planned if s not in complete_seeds(grids, methods, (factor,))]
        if missing:
            pending.append(f"{epochs[factor]}-epoch runs missing on seeds {missing}")
    if not plateaued and not extended and max(budgets) == max(base):
        pending.append(f"the stopping rule asks for {epochs[EXTENSION_BUDGET]} epochs "
                       f"(not yet trained)")
    judged = {(a, b): judge_trial_pair(grids, a, b, seeds, budgets, verdict_budget, plateaus,
                                       model=f"{LABELS[a]} vs {LABELS[b]}")
              for a, b in pairs}
    return Trial(planned, seeds, budgets, epochs, grids, plateaus, verdict_budget, plateaued,
                 tuple(pending), judged)


def effect_rows(trial: Trial) -> list[list[str]]:
    """Table 6.2's rows: per headline pair, the effect and margin verdict at every budget,
    then the change per doubling into the verdict budget."""
    from adt.method.methods import LABELS

    rows = []
    for (a, b), pair in trial.pairs.items():
        row = [f"{LABELS[a]} - {LABELS[b]}"]
        for budget in trial.budgets:
            c = pair.comparisons[budget]
            mark = " (v)" if budget == trial.verdict_budget else ""
            row.append(f"{format_effect(c.effect, unit='')}: {c.verdict}{mark}")
        change = pair.changes.get(trial.verdict_budget)
        row.append(format_effect(change, unit="") if change else "n/a")
        rows.append(row)
    return rows


def method_rows(trial: Trial) -> list[list[str]]:
    """Table 6.2b's rows: per method, mean A_rob (%) at every budget and the gain per
    doubling (points, 95 % interval), flagged when it has plateaued."""
    import numpy as np

    from adt.method.methods import LABELS

    rows = []
    methods = list(next(iter(trial.plateaus.values())))
    for m in methods:
        row = [LABELS[m]]
        for budget in trial.budgets:
            row.append(f"{100 * np.mean([trial.grids[budget, m][s].mean() for s in trial.seeds]):.1f}")
        for budget in trial.budgets[1:]:
            g = trial.plateaus[budget][m]
            row.append(format_effect(g["interval"], scale=1.0, unit="")
                       + (" plateau" if g["plateaued"] else ""))
        rows.append(row)
    return rows


def direction_line(trial: Trial) -> str:
    """One plain line: which way the headline effects point, and how that moves with the
    budget (CLAIMS.md and the README open with it)."""
    def at(budget: int) -> str:
        effects = [p.comparisons[budget].effect for p in trial.pairs.values()]
        mean = 100 * sum(e.estimate for e in effects) / len(effects)
        below = sum(e.estimate < 0 for e in effects)
        excluding = sum(e.high < 0 for e in effects)
        return (f"{mean:+.1f} points at {trial.epochs[budget]} epochs ({below} of "
                f"{len(effects)} below zero, {excluding} of them with intervals below zero)")

    status = "" if trial.complete else "; interim: " + "; ".join(trial.pending)
    first, last = trial.budgets[0], trial.verdict_budget
    return (f"**Direction:** ADT minus baseline in A_rob, mean over the six headline pairs: "
            f"{at(first)}, then {at(last)}; seeds {list(trial.seeds)}{status}.")


def _median_times(profile: Profile, runs_root: str | Path, method: str, seeds: Sequence[int]
                  ) -> tuple[float | None, float | None]:
    """(median training seconds per epoch, median A_rob evaluation seconds) of ``method``'s
    stored study runs at any budget, from their ``metrics.json`` and ``eval_a_rob.json``."""
    import statistics

    from adt.core.io import read_json
    from adt.evaluation.stored import A_ROB_FILE
    from adt.training.runs import METRICS, run_dir

    per_epoch, evaluation = [], []
    for factor in (*TRIAL_BUDGETS, EXTENSION_BUDGET):
        for seed in seeds:
            folder = run_dir(profile.with_budget(factor), method, seed, runs_root)
            if (folder / METRICS).is_file():
                per_epoch.append(read_json(folder / METRICS).get("train_time_per_epoch_s") or 0)
            if (folder / A_ROB_FILE).is_file():
                evaluation.append(read_json(folder / A_ROB_FILE)["timing"]["total_s"])
    median = statistics.median
    return (median(per_epoch) if per_epoch else None,
            median(evaluation) if evaluation else None)


def pending_runs_cost(trial: Trial, profile: Profile, runs_root: str | Path,
                      methods: Any = None, *, extension: bool = False
                      ) -> tuple[int, float | None]:
    """(runs the design still asks for, their one-core CPU hours): every planned seed of
    every study method at the design's budgets (with ``extension``: at the extension budget
    alone, which the stopping rule may ask for), each costed at the method's median training seconds per epoch
    and A_rob evaluation seconds over its stored runs (None when a method has none)."""
    from adt.study.campaign import STUDY_METHODS

    methods = tuple(methods or STUDY_METHODS)
    needed = [EXTENSION_BUDGET] if extension else list(TRIAL_BUDGETS)
    runs, seconds = 0, 0.0
    for method in methods:
        per_epoch, evaluation = _median_times(profile, runs_root, method, trial.planned_seeds)
        for factor in needed:
            missing = [s for s in trial.planned_seeds
                       if s not in trial.grids.get((factor, method), {})]
            runs += len(missing)
            if missing and (per_epoch is None or evaluation is None):
                return runs, None
            if missing:
                seconds += len(missing) * (per_epoch * trial.epochs[factor] + evaluation)
    return runs, seconds / 3600
