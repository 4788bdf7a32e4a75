"""The gates on the evidence of a claim rather than on its models: whether the effect holds
under a longer training budget (:func:`stable_under_budget`, kind **budget**), whether
enough seeds show it against the seed-to-seed spread (:func:`per_seed_spread`,
:func:`enough_evidence`, kind **evidence**), and whether a measured cost ratio repeats
(:func:`cost_measured`). Each returns a :class:`~adt.study.verdicts.Gate`; the validity
gates and the order in which gates decide a verdict are :mod:`adt.study.gates`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from adt.core._checks import check_int_at_least, check_nonnegative
from adt.study.stats import Comparison, Interval
from adt.study.verdicts import (
    SLACK,
    Gate,
    at_least,
    at_most,
)

__all__ = ["MIN_SEEDS", "COST_MAX_SPREAD", "COST_MIN_REPEATS", "stable_under_budget",
           "per_seed_spread", "enough_evidence", "cost_measured"]

#: A verdict needs at least 2 seeds: with one, the seed-to-seed spread is not seen at all.
MIN_SEEDS = 2
#: Interleaved repetitions of a cost ratio must agree within 25 % of their median
#: ((max - min) / median): well inside the factor-1.5 margin of the cost claims
#: (log 1.5 = 0.41), so the spread of the timing alone cannot move a verdict across it.
COST_MAX_SPREAD = 0.25
#: At least three repetitions: with two, one outlier cannot be told from the rule.
COST_MIN_REPEATS = 3


# --- 2. budget ------------------------------------------------------------------------------

def stable_under_budget(effect_short: Interval, effect_long: Interval, *, model: str = "",
                        budgets: tuple[str, str] = ("short", "long")) -> Gate:
    """The effect does not depend on the training budget: its estimates at both budgets
    have the same sign, and each lies inside the other budget's 95 % interval. Failing it
    makes the verdict "inconclusive: budget-sensitive". ``budgets`` names the two budgets
    in the detail (e.g. ("5 epochs", "8 epochs")). value = long estimate - short estimate."""
    short, long = effect_short, effect_long
    same_sign = np.sign(short.estimate) == np.sign(long.estimate)
    inside = (short.low - SLACK <= long.estimate <= short.high + SLACK
              and long.low - SLACK <= short.estimate <= long.high + SLACK)
    passed = bool(same_sign and inside)
    problems = [p for p, bad in (("the sign flips", not same_sign),
                                 ("an estimate is outside the other's interval", not inside))
                if bad]
    detail = (f"effect at {budgets[0]} {short.estimate:+.3f} [{short.low:+.3f}, "
              f"{short.high:+.3f}], at {budgets[1]} {long.estimate:+.3f} [{long.low:+.3f}, "
              f"{long.high:+.3f}]" + (f": {' and '.join(problems)}" if problems else ""))
    return Gate("stable_under_budget", model, long.estimate - short.estimate,
                "same sign; each estimate in the other's 95% interval", passed, detail,
                "" if passed else "budget-sensitive")

# --- 7. enough evidence -----------------------------------------------------------------------

def per_seed_spread(a: Any, b: Any, *, statistic: str = "difference") -> float | None:
    """The standard deviation over seeds (ddof 1) of the per-seed effect of ``a`` against
    ``b`` (per-example values of shape (seeds, examples), as for
    :func:`~adt.study.stats.paired_comparison`): per-seed mean(a) - mean(b), or mean(a) /
    mean(b) for ``statistic`` "ratio". None for one seed."""
    grid_a, grid_b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if grid_a.shape != grid_b.shape or grid_a.ndim != 2:
        raise ValueError(f"a has shape {grid_a.shape} but b {grid_b.shape}: give the same "
                         "(seeds, examples)")
    if statistic not in ("difference", "ratio"):
        raise ValueError(f"statistic={statistic!r}; allowed: difference, ratio")
    if grid_a.shape[0] < 2:
        return None
    mean_a, mean_b = grid_a.mean(1), grid_b.mean(1)
    per_seed = mean_a - mean_b if statistic == "difference" else mean_a / mean_b
    return float(per_seed.std(ddof=1))


def enough_evidence(comparison: Comparison, seed_spread: float | None, *,
                    min_seeds: int = MIN_SEEDS, model: str = "") -> Gate:
    """The comparison rests on at least ``min_seeds`` seeds, and its effect is at least the
    seed spread (``seed_spread``: :func:`per_seed_spread`, the std over seeds of the per-seed
    effects; for a ratio, of the per-seed ratios): |estimate - null| >= spread. A
    single-seed claim is "inconclusive: one seed"; an effect smaller than the seed spread
    is "inconclusive: effect within the seed spread"; several seeds without a spread fail
    ("seed spread not measured"). value = the seed spread."""
    check_int_at_least(min_seeds, 1, "min_seeds", "2")
    null = 1.0 if comparison.statistic == "ratio" else 0.0
    size = abs(comparison.effect.estimate - null)
    threshold = f">= {min_seeds} seeds; |effect| >= seed spread"
    where = f"{comparison.seeds} seed(s) x {comparison.examples} images"
    if comparison.seeds < min_seeds:
        reason = "one seed" if comparison.seeds == 1 else f"{comparison.seeds} seeds"
        return Gate("enough_evidence", model, seed_spread, threshold, False,
                    f"{where}: the seed-to-seed spread is not seen", reason)
    if seed_spread is None:
        return Gate("enough_evidence", model, None, threshold, False,
                    f"{where}: no seed spread given", "seed spread not measured")
    passed = at_least(size, seed_spread)
    return Gate("enough_evidence", model, seed_spread, threshold, passed,
                f"{where}: |effect| {size:.3g} vs seed spread {seed_spread:.3g}",
                "" if passed else "effect within the seed spread")


# --- 8. measured cost -------------------------------------------------------------------------

def cost_measured(ratios: Sequence[float], *, max_spread: float = COST_MAX_SPREAD,
                  min_repeats: int = COST_MIN_REPEATS, model: str = "") -> Gate:
    """A cost ratio (method step time / PGD-AT step time, one per interleaved repetition of
    :func:`adt.artifact.costs.cost_ratios`) is measured when there are at least ``min_repeats``
    repetitions and they agree: (max - min) / median <= ``max_spread`` (25 %).
    value = the median ratio."""
    check_nonnegative(max_spread, "max_spread", "0.25")
    check_int_at_least(min_repeats, 2, "min_repeats", "3")
    values = [float(r) for r in ratios]
    if not values or any(not math.isfinite(r) or r <= 0 for r in values):
        raise ValueError(f"ratios={list(ratios)!r} must be positive finite numbers, one per "
                         "repetition")
    median = statistics.median(values)
    threshold = f"(max - min) / median <= {max_spread:g} over >= {min_repeats} repetitions"
    if len(values) < min_repeats:
        return Gate("cost_measured", model, median, threshold, False,
                    f"{len(values)} repetition(s) ({median:.3g}): too few to see whether the "
                    "timings agree", "too few repetitions")
    spread = (max(values) - min(values)) / median
    passed = at_most(spread, max_spread)
    return Gate("cost_measured", model, median, threshold, passed,
                f"{len(values)} interleaved repetitions, ratios {min(values):.3g}-"
                f"{max(values):.3g}, relative spread {spread:.3f}",
                "" if passed else "timings disagree")
