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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt.config.profiles import Profile
from adt.config.provenance import REPO_ROOT

__all__ = ["MARGIN_POINTS", "PLATEAU_POINTS", "TRIAL_BUDGETS", "EXTENSION_BUDGET",
           "CANDIDATE_BUDGETS", "IMP_WIDTHS", "IMP_SEEDS", "trial_design_path",
           "load_trial_design", "departure_profiles", "plateau_gains",
           "OUTCOMES", "plateau_table", "choose_verdict_budget", "trained_out", "TrialPair",
           "judge_trial_pair", "departure_spreads", "departure_outcome"]

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
    from adt.study.stats import Interval, seed_interval

    out = {}
    for method in methods:
        gains = [100 * (float(grids[budget, method][s].mean())
                        - float(grids[budget // 2, method][s].mean())) for s in seeds]
        # one seed cannot show a plateau: its interval is unbounded
        interval = (seed_interval(gains) if len(gains) > 1
                    else Interval(gains[0], float("-inf"), float("inf")))
        out[method] = {"gains": gains, "interval": interval,
                       "plateaued": interval.high < PLATEAU_POINTS}
    return out


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


# --- the departure test: does a wider generator (or the raw input) restore ADT_IMP-AM's spread --

def departure_spreads(profile: Profile, runs_root: str | Path) -> dict[str, dict[int, float]]:
    """Per variant of :func:`departure_profiles` (label -> seed -> spread / uniform noise), from
    the ``spread.json`` each run's evaluation stored; a run without one is missing."""
    from adt.core.io import read_json
    from adt.study.spread import SPREAD_FILE
    from adt.training.runs import run_dir

    out: dict[str, dict[int, float]] = {}
    for label, variant in departure_profiles(profile).items():
        found = {}
        for seed in IMP_SEEDS:
            path = run_dir(variant, "adt_imp_am", seed, runs_root) / SPREAD_FILE
            if path.is_file():
                record = read_json(path)
                found[seed] = float(record["spread"]) / float(record["uniform"])
        out[label] = found
    return out


def departure_outcome(spreads: dict[str, dict[int, float]], min_ratio: float) -> str:
    """The design's rule on :func:`departure_spreads`: "pending" while a run is missing,
    "restored by <label>" for the first variant (in :func:`departure_profiles`' order: the
    narrower width first) whose every seed reaches ``min_ratio`` x uniform noise, else
    "none restores" (the collapse is then a finding about the method)."""
    if any(len(seeds) < len(IMP_SEEDS) for seeds in spreads.values()):
        return "pending"
    for label, seeds in spreads.items():
        if all(ratio >= min_ratio for ratio in seeds.values()):
            return f"restored by {label}"
    return "none restores"
