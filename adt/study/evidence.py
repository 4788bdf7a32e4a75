"""The gates on the evidence of a claim rather than on its models: whether its verdict holds
when the training budget doubles (:func:`stable_under_budget`, kind **budget**), and whether
it rests on enough seeds (:func:`enough_evidence`, kind **evidence**). Each returns a
:class:`~adt.study.verdicts.Gate`; the validity gates and the order in which gates decide a
verdict are :mod:`adt.study.gates`. Cost claims are judged on counted work (FLOPs per
training step, :func:`adt.artifact.costs.flops_ratios`), which needs no gate: it is the
same number on every machine and in every regeneration.
"""

from __future__ import annotations

from collections.abc import Mapping

from adt.core._checks import check_int_at_least
from adt.study.stats import Comparison, Interval, margin_verdict, verdict
from adt.study.verdicts import Gate

__all__ = ["MIN_SEEDS", "A_ROB_ERROR_LEVEL", "stable_under_budget", "enough_evidence",
           "overstatement_bound", "a_rob_error"]

#: A decided verdict rests on at least 5 seeds: the seed is the unit of replication, and
#: with fewer the seed-level interval (t_{0.975, S-1} >= 2.78) decides only effects far
#: larger than the seed spread (the budget study's design, REPRODUCTION.md).
MIN_SEEDS = 5
#: The original-AutoAttack reference measures how often A_rob counts an image robust that
#: the original AutoAttack breaks (k of n sampled images). The error enters a verdict at the
#: one-sided 95 % upper confidence bound of that rate (Clopper-Pearson): the evaluation is
#: taken as wrong by as much as the sample cannot rule out, not by its point estimate.
A_ROB_ERROR_LEVEL = 0.95


# --- 2. budget ------------------------------------------------------------------------------

def stable_under_budget(short: Comparison, long: Comparison, change: Interval | None = None, *,
                        model: str = "", budgets: tuple[str, str] = ("short", "long")) -> Gate:
    """The verdict does not depend on the training budget: the statistical verdicts of the
    same claim at the recipe's budget (``short``) and at twice it (``long``), on the same
    seeds, agree. Failing it makes the verdict "inconclusive: budget-sensitive".
    ``change`` is the paired per-seed change of the effect between the budgets (shown).
    value = long estimate - short estimate."""
    passed = short.verdict == long.verdict
    detail = (f"at {budgets[0]} {short.effect.estimate:+.3f} [{short.effect.low:+.3f}, "
              f"{short.effect.high:+.3f}] ({short.verdict}), at {budgets[1]} "
              f"{long.effect.estimate:+.3f} [{long.effect.low:+.3f}, {long.effect.high:+.3f}] "
              f"({long.verdict}), {short.seeds} and {long.seeds} seed(s)")
    if change is not None:
        detail += (f"; change {change.estimate:+.3f} [{change.low:+.3f}, {change.high:+.3f}]")
    return Gate("stable_under_budget", model, long.effect.estimate - short.effect.estimate,
                "the same verdict at both budgets", passed, detail,
                "" if passed else "budget-sensitive")


# --- 7. enough evidence -----------------------------------------------------------------------

def enough_evidence(comparison: Comparison, *, min_seeds: int = MIN_SEEDS,
                    model: str = "") -> Gate:
    """The comparison rests on at least ``min_seeds`` seeds (5). Fewer make the verdict
    "inconclusive: one seed" or "inconclusive: <n> seeds (< 5)", whatever the interval
    says. value = the number of seeds."""
    check_int_at_least(min_seeds, 1, "min_seeds", "5")
    passed = comparison.seeds >= min_seeds
    reason = ("" if passed else "one seed" if comparison.seeds == 1
              else f"{comparison.seeds} seeds (< {min_seeds})")
    return Gate("enough_evidence", model, float(comparison.seeds), f">= {min_seeds} seeds",
                passed, f"{comparison.seeds} seed(s) x {comparison.examples} images", reason)


# --- 4. evaluation error ---------------------------------------------------------------------

def overstatement_bound(overstated: int, n: int, *, level: float = A_ROB_ERROR_LEVEL) -> float:
    """The one-sided ``level`` upper confidence bound (Clopper-Pearson) of the rate at which
    A_rob overstates the original AutoAttack, from ``overstated`` of ``n`` reference images
    (1.0 when there are none)."""
    from scipy.stats import beta

    check_int_at_least(n, 0, "n", "120")
    if not 0 <= overstated <= n:
        raise ValueError(f"overstated={overstated} must lie in [0, n={n}]")
    if n == 0 or overstated == n:
        return 1.0
    return float(beta.ppf(level, overstated + 1, n - overstated))


def a_rob_error(comparison: Comparison, overstated: Mapping[str, tuple[int, int]], *,
                level: float = A_ROB_ERROR_LEVEL, model: str = "",
                margin: float | None = None) -> Gate:
    """The measured evaluation error cannot change the verdict of an A_rob comparison
    (effect = A_rob(A) - A_rob(B), a :class:`~adt.study.stats.Comparison` with its verdict).

    ``overstated`` maps "a" and "b" to (k, n): A_rob counted k of n reference images robust
    that the original AutoAttack breaks. Each model's true A_rob may lie below its measured
    one by up to :func:`overstatement_bound`; so the effect may lie lower by up to A's bound
    and higher by up to B's. The interval is widened by both, in the direction each could
    move it, and the verdict taken again: the gate fails only if it changes (an error that
    can only widen a deficit the claim already shows does not void it). On fewer than
    :data:`MIN_SEEDS` seeds nothing is decided and the gate passes (the evidence gate speaks).
    value = the bound that could move the interval across zero (B's for a deficit, A's for
    a gain). ``margin``: the comparison's verdict is a margin verdict
    (:func:`adt.study.stats.margin_verdict`, the fair trial's), taken again with it."""
    bounds = {k: overstatement_bound(*overstated[k], level=level) for k in ("a", "b")}
    if comparison.seeds < MIN_SEEDS:  # nothing is decided, so nothing can be changed
        return Gate("a_rob_error", model, max(bounds.values()),
                    "a verdict the error cannot change", True,
                    f"{comparison.seeds} seed(s): no decided verdict for the error to change "
                    f"(bounds {bounds['a']:.3f} and {bounds['b']:.3f})")
    e = comparison.effect
    widened = Interval(e.estimate, e.low - bounds["a"], e.high + bounds["b"])
    again = (verdict(widened, direction=comparison.direction) if margin is None
             else margin_verdict(widened, margin, direction=comparison.direction))
    passed = again == comparison.verdict
    (ka, na), (kb, nb) = overstated["a"], overstated["b"]
    detail = (f"A_rob above the original AutoAttack on {ka}/{na} (A) and {kb}/{nb} (B) "
              f"reference images; {level:.0%} upper bounds {bounds['a']:.3f} and "
              f"{bounds['b']:.3f}; interval [{e.low:+.3f}, {e.high:+.3f}] widened to "
              f"[{widened.low:+.3f}, {widened.high:+.3f}]: {again} (was {comparison.verdict})")
    # value: the bound on the side that could move the interval across zero
    side = bounds["b"] if e.high < 0 else bounds["a"] if e.low > 0 else max(bounds.values())
    return Gate("a_rob_error", model, side, "a verdict the error cannot change", passed,
                detail, "" if passed else "the evaluation error could change the verdict")
