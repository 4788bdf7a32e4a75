"""The fair trial's design: trained-out budgets, a stopping rule that names the verdict budget,
an equivalence margin, and the secondary experiments, fixed before any of its runs.

The budget study (:mod:`adt.study.campaign`) trained the five study methods on 8 seeds at 8
and 16 epochs. The trial extends it to 32 epochs (``Profile.with_budget(4)``) and, where the
stopping rule asks, to 64 (``with_budget(8)``), on the same seeds, and reads the headline
verdicts at one budget, the *verdict budget*, chosen by a rule written here before any run
at 32 or 64 epochs exists:

**Plateau rule.** A method has plateaued at budget B when its per-seed A_rob gain from B/2
to B, g_s = A_rob(B, s) - A_rob(B/2, s), has a seed-level 95 % interval whose upper end is
below ``PLATEAU_POINTS`` (half the equivalence margin). The verdict budget is the smallest
trained budget of :data:`CANDIDATE_BUDGETS` at which every study method has plateaued.
If some method has not plateaued at 32 epochs, all five methods train at 64 (a paired
comparison needs both models at one budget). If one has still not plateaued at 64, the
verdict is read at 64 and the ``trained_out`` gate (:func:`trained_out`) asks whether one
more doubling at the still-gaining method's upper-bound gain could change it.

Why half the margin: if no method can gain as much as delta / 2 from one more doubling
(gains diminish as the budget doubles), no paired effect can move by as much as delta, the
smallest effect of interest, so no equivalence or direction verdict can be crossed by a full
margin. The threshold comes from the margin, not from any observed gain.

**Equivalence margin.** delta = ``MARGIN_POINTS`` = 5 points of A_rob: the effect the
budget study was powered for (``benchmarks/study-design-quick.json``, ``effect_points``).
An interval inside (-delta, +delta) is "no difference as large as delta" (two one-sided
tests at the 2.5 % level each, read from the 95 % interval).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.config.profiles import Profile
from adt.config.provenance import REPO_ROOT

__all__ = ["MARGIN_POINTS", "PLATEAU_POINTS", "TRIAL_BUDGETS", "EXTENSION_BUDGET",
           "CANDIDATE_BUDGETS", "IMP_WIDTHS", "IMP_SEEDS", "trial_design_path",
           "make_trial_design", "load_trial_design", "departure_profiles", "plateau_gains", "needs_extension",
           "OUTCOMES", "plateau_table", "choose_verdict_budget", "trained_out", "TrialPair",
           "judge_trial_pair", "Trial", "read_trial", "points", "effect_rows", "method_rows",
           "direction_line"]

#: delta: the smallest A_rob effect of interest (points), for equivalence verdicts
MARGIN_POINTS = 5.0
#: a method has plateaued when its gain per doubling has a 95 % upper bound below this
PLATEAU_POINTS = MARGIN_POINTS / 2
#: budget factors every study method trains at (8, 16, 32 epochs on quick)
TRIAL_BUDGETS = (1, 2, 4)
#: the further doubling, trained by every study method when one has not plateaued at 4
EXTENSION_BUDGET = 8
#: the budgets the verdict can be read at
CANDIDATE_BUDGETS = (2, 4, 8)
#: ADT_IMP-AM generator widths for the sample_spread departure test, on seeds IMP_SEEDS
IMP_WIDTHS = (32, 64)
IMP_SEEDS = (0, 1, 2)


def trial_design_path(profile: Profile) -> Path:
    return REPO_ROOT / "benchmarks" / f"trial-design-{profile.name}.json"


def departure_profiles(profile: Profile) -> dict[str, Profile]:
    """The ADT_IMP-AM variants of the departure test (the design's ``imp_am_widths``), at the
    recipe's budget: generator widths :data:`IMP_WIDTHS` (the profile's conditioning), and the
    release's raw input at the profile's width. Keyed by a short label."""
    out = {f"ngf {w}": profile.replace(methods={"am_ngf": w}) for w in IMP_WIDTHS}
    if profile.methods.am_conditioning != "raw":
        out[f"ngf {profile.methods.am_ngf}, raw input"] = profile.replace(
            methods={"am_conditioning": "raw"})
    return out


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


def load_trial_design(profile: Profile) -> dict[str, Any] | None:
    """The committed trial design of ``profile``, or None when it has none."""
    from adt.core.io import read_json

    path = trial_design_path(profile)
    return read_json(path) if path.is_file() else None


def plateau_gains(grids: dict[tuple[int, str], dict[int, Any]], methods: Any, seeds: Any,
                  budget: int) -> dict[str, Any]:
    """Each method's per-seed A_rob gain (points) from ``budget // 2`` to ``budget`` on
    ``seeds``, its seed-level 95 % interval and whether it has plateaued (upper end below
    :data:`PLATEAU_POINTS`); ``grids`` as :func:`adt.study.budget.read_grids` returns."""
    from adt.study.stats import seed_interval

    out = {}
    for method in methods:
        gains = [100 * (float(grids[budget, method][s].mean())
                        - float(grids[budget // 2, method][s].mean())) for s in seeds]
        interval = seed_interval(gains)
        out[method] = {"gains": gains, "interval": interval,
                       "plateaued": interval.high < PLATEAU_POINTS}
    return out


def needs_extension(profile: Profile, runs_root: str | Path) -> bool | None:
    """The stopping rule at factor 4: True when some study method has not plateaued there
    (all five then train at :data:`EXTENSION_BUDGET`), False when all have, None while a
    run at factor 2 or 4 is missing."""
    from adt.study.budget import complete_seeds, read_grids
    from adt.study.campaign import STUDY_METHODS

    design = load_trial_design(profile)
    if design is None:
        return None
    seeds = design["seeds"]
    grids = read_grids(profile, STUDY_METHODS, seeds, (2, 4), runs_root)
    if complete_seeds(grids, STUDY_METHODS, (2, 4)) != sorted(seeds):
        return None
    gains = plateau_gains(grids, STUDY_METHODS, seeds, 4)
    return not all(g["plateaued"] for g in gains.values())


# --- the analysis at the verdict budget ---------------------------------------------------------

#: how the fair trial spells the statistical outcomes of a headline claim
OUTCOMES = {"contradicted": "not reproduced: the baseline is more robust",
            "equivalent": f"not reproduced: no difference as large as {MARGIN_POINTS:g} points"}


def plateau_table(grids: dict[tuple[int, str], dict[int, Any]], methods: Any, seeds: Any,
                  budgets: Any) -> dict[int, dict[str, Any]]:
    """:func:`plateau_gains` at every budget of ``budgets`` after the first (factor ->
    method -> gains, interval, plateaued)."""
    budgets = sorted(budgets)
    return {b: plateau_gains(grids, methods, seeds, b) for b in budgets[1:]}


def choose_verdict_budget(plateaus: dict[int, dict[str, Any]]) -> tuple[int, bool]:
    """The stopping rule: (the smallest budget of ``plateaus`` at which every method has
    plateaued, True), or (the largest budget trained, False) when none has."""
    for budget in sorted(plateaus):
        if budget in CANDIDATE_BUDGETS and all(g["plateaued"] for g in plateaus[budget].values()):
            return budget, True
    return max(plateaus), False


def trained_out(comparison: Any, gain_a: Any, gain_b: Any, *, margin: float = MARGIN_POINTS,
                direction: int = 1, model: str = "") -> Any:
    """The ``trained_out`` gate of a pair at the verdict budget (the design's rule): for each
    method that has not plateaued (``gain_a``/``gain_b``: its :func:`plateau_gains` record),
    shift the effect's interval by that method's gain upper bound in its favour (one more
    doubling: A's gain raises the effect A - B, B's lowers it) and take the verdict again; the
    gate fails when any shift changes the verdict, whichever way it pointed. value = the
    largest shift (points)."""
    from adt.study.stats import Interval, margin_verdict
    from adt.study.verdicts import Gate

    e, m = comparison.effect, margin / 100
    shifts = []
    if not gain_a["plateaued"]:
        shifts.append(max(gain_a["interval"].high, 0.0) / 100)
    if not gain_b["plateaued"]:
        shifts.append(-max(gain_b["interval"].high, 0.0) / 100)
    changed = []
    for shift in shifts:
        moved = Interval(e.estimate + shift, e.low + shift, e.high + shift)
        again = margin_verdict(moved, m, direction=direction)
        if again != comparison.verdict:
            changed.append(f"{100 * shift:+.1f} points: {again}")
    largest = max((abs(s) for s in shifts), default=0.0)
    detail = ("both methods plateaued" if not shifts else
              f"one more doubling shifts the interval by up to {100 * largest:.1f} points: "
              + ("; ".join(changed) if changed else f"the verdict stays {comparison.verdict}"))
    return Gate("trained_out", model, 100 * largest, "a verdict one more doubling cannot change",
                not changed, detail, "" if not changed else "not trained out")


@dataclass(frozen=True)
class TrialPair:
    """One headline pair in the trial: its paired comparison at every budget (margin
    verdicts), the per-seed effects, the paired change of the effect per doubling, the
    verdict budget and the gates read there."""

    comparisons: dict[int, Any]
    per_seed: dict[int, dict[int, float]]  # budget -> seed -> effect (fraction)
    changes: dict[int, Any]  # budget -> interval of the change from budget // 2
    verdict_budget: int
    gates: tuple[Any, ...]

    @property
    def at_verdict(self) -> Any:
        return self.comparisons[self.verdict_budget]


def judge_trial_pair(grids: dict[tuple[int, str], dict[int, Any]], a: str, b: str,
                     seeds: Any, budgets: Any, verdict_budget: int,
                     plateaus: dict[int, dict[str, Any]], *, model: str = "") -> TrialPair:
    """A - B in A_rob on ``seeds`` at every budget of ``budgets``, the margin verdict of each
    (:func:`adt.study.stats.margin_verdict` with :data:`MARGIN_POINTS`), and at
    ``verdict_budget`` the ``trained_out`` and ``enough_evidence`` gates."""
    import numpy as np

    from adt.study.evidence import enough_evidence
    from adt.study.stats import margin_verdict, paired_comparison, seed_interval

    if not seeds:
        raise ValueError(f"no seed has {a} and {b} at every budget {list(budgets)}; run the "
                         "study first: python -m adt.budget_study")
    comparisons, per_seed, changes = {}, {}, {}
    for factor in sorted(budgets):
        grid_a = np.stack([grids[factor, a][s] for s in seeds])
        grid_b = np.stack([grids[factor, b][s] for s in seeds])
        c = paired_comparison(grid_a, grid_b, direction=1)
        comparisons[factor] = dataclasses.replace(
            c, verdict=margin_verdict(c.effect, MARGIN_POINTS / 100, direction=1))
        per_seed[factor] = {s: float(grid_a[i].mean() - grid_b[i].mean())
                            for i, s in enumerate(seeds)}
        if factor // 2 in per_seed and len(seeds) > 1:
            changes[factor] = seed_interval([per_seed[factor][s] - per_seed[factor // 2][s]
                                             for s in seeds])
    at = comparisons[verdict_budget]
    gains = plateaus.get(verdict_budget, {})
    gates = [enough_evidence(at, model=model)]
    if a in gains and b in gains:
        gates.insert(0, trained_out(at, gains[a], gains[b], model=model))
    return TrialPair(comparisons, per_seed, changes, verdict_budget, tuple(gates))


# --- the trial as a whole: what is trained, the verdict budget, every headline pair --------------

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
    if len(seeds) < 2:
        raise ValueError(f"the trial needs 2 or more seeds with every method at "
                         f"{[profile.with_budget(b).recipe.epochs for b in budgets]} epochs; "
                         f"found {list(seeds)}. Train them: python -m adt.budget_study "
                         f"--profile {profile.name}")
    epochs = {b: profile.with_budget(b).recipe.epochs for b in everything}
    plateaus = plateau_table(grids, methods, seeds, budgets)
    verdict_budget, plateaued = choose_verdict_budget(plateaus)
    pending = []
    missing = [s for s in planned if s not in seeds]
    if missing:
        pending.append(f"{epochs[max(budgets)]}-epoch runs missing on seeds {missing}")
    if not plateaued and not extended:
        pending.append(f"the stopping rule asks for {epochs[EXTENSION_BUDGET]} epochs "
                       f"(not yet trained)")
    judged = {(a, b): judge_trial_pair(grids, a, b, seeds, budgets, verdict_budget, plateaus,
                                       model=f"{LABELS[a]} vs {LABELS[b]}")
              for a, b in pairs}
    return Trial(planned, seeds, budgets, epochs, grids, plateaus, verdict_budget, plateaued,
                 tuple(pending), judged)


def points(interval: Any, digits: int = 1) -> str:
    """An interval of fractions as "+e [lo, hi]" in points."""
    return (f"{100 * interval.estimate:+.{digits}f} [{100 * interval.low:+.{digits}f}, "
            f"{100 * interval.high:+.{digits}f}]")


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
            row.append(f"{points(c.effect)}: {c.verdict}{mark}")
        change = pair.changes.get(trial.verdict_budget)
        row.append(points(change) if change else "n/a")
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
            row.append(f"{g['interval'].estimate:+.1f} [{g['interval'].low:+.1f}, "
                       f"{g['interval'].high:+.1f}]" + (" plateau" if g["plateaued"] else ""))
        rows.append(row)
    return rows


def direction_line(trial: Trial) -> str:
    """One plain line: which way the headline effects point, and how that moves with the
    budget (CLAIMS.md and the README open with it)."""
    first, last = trial.budgets[0], trial.verdict_budget
    effects = {b: [p.comparisons[b].effect for p in trial.pairs.values()] for b in (first, last)}

    def side(b: int) -> str:
        e = effects[b]
        neg = sum(x.estimate < 0 for x in e)
        excl = sum(x.high < 0 for x in e)
        return f"{neg} of {len(e)} point to the baseline ({excl} intervals exclude 0)"

    mean = {b: 100 * sum(x.estimate for x in effects[b]) / len(effects[b]) for b in effects}
    status = "" if trial.complete else " (interim: " + "; ".join(trial.pending) + ")"
    return (f"**Direction:** the headline effects (ADT minus baseline, A_rob) point against "
            f"the paper: at {trial.epochs[first]} epochs {side(first)}, mean "
            f"{mean[first]:+.1f} points; at {trial.epochs[last]} epochs {side(last)}, mean "
            f"{mean[last]:+.1f} points, on seeds {list(trial.seeds)}{status}."
            if all(x.estimate < 0 for x in effects[last]) else
            f"**Direction:** ADT minus baseline in A_rob, mean over the six headline pairs: "
            f"{mean[first]:+.1f} points at {trial.epochs[first]} epochs ({side(first)}), "
            f"{mean[last]:+.1f} at {trial.epochs[last]} ({side(last)}), on seeds "
            f"{list(trial.seeds)}{status}.")
