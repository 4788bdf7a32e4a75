"""Validity gates: whether the experiment behind a claim's verdict is sound, decided by rules
fixed in code before the results are read.

A verdict of :mod:`adt.study.stats` (supported / contradicted / inconclusive, from a paired
comparison with a 95 % interval) is evidence about the paper only if the runs behind it
are sound: the models converged, the baselines are credible, the columns it reads are not
flagged by a gradient-masking check, the effect does not flip with the training budget,
and there are enough seeds to see it against the seed-to-seed spread. Each gate is one
small function returning a :class:`Gate`; :func:`gated_verdict` turns a statistical
verdict and the gates of its claim into the verdict that is reported:

1. a failed **validity** gate: "not testable here: <gate> (<model>) = <value> (needs
   <threshold>)", naming the first failed gate;
2. else a failed **budget** gate (:func:`stable_under_budget`): "inconclusive:
   budget-sensitive";
3. else a failed **evidence** gate (:func:`enough_evidence`): "inconclusive: <why>";
4. else the statistical verdict, with "contradicted" reported as "not reproduced at this
   scale" (a proxy of the paper's experiment can fail to reproduce an effect; it cannot
   refute the paper's CIFAR-10 numbers).

:func:`distinct_models` is of kind **independence**: a near-clone does not change a
verdict, but its claims are not counted as independent evidence (see its docstring).

This module holds the validity and independence gates; the budget and evidence gates are
:mod:`adt.study.evidence`, the :class:`Gate` record and :func:`gated_verdict`
:mod:`adt.study.verdicts`; both are re-exported here, so that this module is the gates'
one interface for the chapters. The thresholds are module constants (keyword defaults of
the gates); each comment says where it comes from. Every comparison allows a rounding slack of 1e-9, so a value exactly
at a threshold is on the side the threshold's text says.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adt.core._checks import check_int_at_least, check_nonnegative, check_positive
from adt.study.evidence import (
    A_ROB_ERROR_LEVEL,
    MIN_SEEDS,
    a_rob_error,
    enough_evidence,
    overstatement_bound,
    stable_under_budget,
)
from adt.study.verdicts import (
    BUDGET_SENSITIVE,
    GATE_KINDS,
    GATED_VERDICTS,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    SLACK,
    SUPPORTED,
    Gate,
    at_least,
    at_most,
    format_value,
    gated_verdict,
    gates_summary,
    gates_table,
    verdict_category,
)

__all__ = ["Gate", "SUPPORTED", "NOT_REPRODUCED", "INCONCLUSIVE", "NOT_TESTABLE",
           "BUDGET_SENSITIVE", "GATED_VERDICTS", "GATE_KINDS", "UNRELIABLE_COLUMNS",
           "FLAT_LAST", "FLAT_MAX_CHANGE", "FLAT_Z", "FLAT_MIN_CLEAN", "BASELINE_FLOOR", "TRADES_RATIO",
           "A_ROB_ERROR_LEVEL", "SPREAD_MIN_RATIO", "GENERATOR_MIN_MARGIN",
           "CLONE_MAX_AGREEMENT", "CLONE_MAX_TRANSFER_GAP", "MIN_SEEDS",
           "flat_last_epochs", "stable_under_budget", "credible_baseline", "credible_trades",
           "unreliable_columns", "reliable_column", "overstatement_bound", "a_rob_error",
           "sample_spread", "working_generator", "distinct_models", "enough_evidence",
           "gated_verdict", "verdict_category", "gates_table", "gates_summary", "format_value"]

# --- thresholds ----------------------------------------------------------------------------

#: :func:`flat_last_epochs` compares the last 2 epochs of a run: the fewest that show a trend, and
#: the annealed end of the quick schedule (8 epochs, the learning rate divided by 10 for the
#: last 2).
FLAT_LAST = 2
#: At most 3 points of change of the monitored PGD accuracy between those epochs: about 1.5
#: binomial standard errors of an accuracy near 0.8 on the quick profile's 500 monitor
#: images (sqrt(0.8 * 0.2 / 500) = 1.8 points); the change is paired (the same images at
#: consecutive epochs), so a larger one is a trend, not noise.
FLAT_MAX_CHANGE = 0.03
#: With the monitor's size known, the change must exceed FLAT_MAX_CHANGE at its one-sided
#: 95 % lower bound (z = 1.645): one image (0.2 points of 500) cannot fail a run.
FLAT_Z = 1.6448536269514722
#: ... and the run trained at all: its last monitored clean accuracy is at least 0.5 (chance
#: is 0.1 on the 10-class datasets). Added after a quick ADT_EXP run stayed at chance for
#: all its epochs, a flat curve the change criterion alone passes (REPRODUCTION.md).
FLAT_MIN_CLEAN = 0.5
#: PGD-AT's AutoAttack accuracy (mean over seeds) must reach 75 %. Published full-MNIST
#: numbers at epsilon 0.3 (60,000 training images, tens of epochs; Croce & Hein 2020):
#: AutoAttack leaves 88.43 % for Madry et al.'s PGD-AT and 92.76 % for TRADES. The floor is
#: lowered by about 13 points for this artifact's proxy (4,000 training images, a small
#: CNN, 8 epochs); a PGD-AT below it is a weak baseline, and beating it says little.
BASELINE_FLOOR = 0.75
#: TRADES must reach 0.8 x PGD-AT's AutoAttack accuracy: published, TRADES is above PGD-AT
#: on MNIST (92.76 / 88.43 = 1.05); 20 % below it leaves room for the proxy's short
#: training, and beyond that TRADES is mis-trained rather than weaker.
TRADES_RATIO = 0.8
#: An ADT method's samples must spread at least a tenth of what uniform noise in the
#: epsilon-box spreads (mean pairwise l2 distance of samples of the same image): one order of
#: magnitude less and the "distribution" is a point, i.e. a deterministic attack.
SPREAD_MIN_RATIO = 0.1
#: An amortised (AM) model must beat Standard under PGD-20 by 5 points: the margin of the
#: other 5-point rules here (sanity's ``max_autoattack_gap``, chapter 6's equivalence
#: margin); less, and the generator has not taught any robustness.
GENERATOR_MIN_MARGIN = 0.05
#: Two models are near-clones when, under the same attack, their per-example correctness
#: agrees on more than 95 % of the images ...
CLONE_MAX_AGREEMENT = 0.95
#: ... and an attack crafted on one leaves the other at most 5 points above the other's
#: own white-box accuracy (the attack transfers with no loss: same decision surface).
CLONE_MAX_TRANSFER_GAP = 0.05
# --- which columns a failed masking check makes unusable ---------------------------------

#: Fixed-step gradient attacks (no adaptive step size, no gradient-free fallback).
_FIXED_STEP = ("FGSM", "PGD-*", "MIM", "C&W", "FeaAttack")
#: Every gradient-only white-box row: the fixed-step attacks and AutoAttack's gradient row
#: ("APGD-CE+T", "APGD-CE+T+FAB-T").
_GRADIENT = (*_FIXED_STEP, "APGD-*")
#: Every white-box row, and A_rob (the worst case over them). Clean is never unreliable.
_WHITE = (*_GRADIENT, "AutoAttack", "A_rob")

#: A failed check of :mod:`adt.evaluation.sanity` (by the name before "[") -> the columns (fnmatch
#: patterns; "{name}" is the check's bracket, e.g. the AutoAttack row it names) it makes
#: unusable for a verdict about that model:
#:
#: - ``pgd_many`` / ``pgd_restarts``: more PGD steps or restarts raise the accuracy, so
#:   the fixed-step attacks had not converged; AutoAttack (adaptive APGD, then Square) and
#:   A_rob (which contains it) stay usable.
#: - ``large_epsilon``: PGD at epsilon 0.5 does not reach about 0 %: the gradients (or the
#:   evaluation) are broken for this model (Carlini et al. 2019, Sec. 5); no white-box
#:   column, AutoAttack and A_rob included, is trusted.
#: - ``white_vs_black``: a black-box attack beats the worst case of the white-box ones:
#:   every white-box column and A_rob overstate robustness; the black-box rows stay.
#: - ``autoattack_vs_pgd``: the named AutoAttack gradient row is weaker than PGD-few, so
#:   it and the cascade built on it ("AutoAttack") are unusable; A_rob, which also takes
#:   PGD, stays usable.
#: - ``score_only``: a score-based attack breaks images every gradient attack missed
#:   (gradient masking): every gradient-only column is unusable; AutoAttack and A_rob stay
#:   usable since they include Square.
#: - ``pgd_vs_autoattack``: PGD-many is more than 5 points above AutoAttack: the
#:   fixed-step gradient columns (FGSM, PGD, MIM, C&W, FeaAttack) overstate robustness;
#:   AutoAttack, its gradient row and A_rob stay usable.
#:
#: A failed check not listed here makes every white-box column and A_rob unusable.
UNRELIABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "pgd_many": _FIXED_STEP,
    "pgd_restarts": _FIXED_STEP,
    "large_epsilon": _WHITE,
    "white_vs_black": _WHITE,
    "autoattack_vs_pgd": ("{name}", "AutoAttack"),
    "score_only": _GRADIENT,
    "pgd_vs_autoattack": _FIXED_STEP,
}
def _fraction(value: float, what: str, example: str) -> float:
    real = check_nonnegative(value, what, example)
    if real > 1.0:
        raise ValueError(f"{what}={value!r} must be a fraction in [0, 1]; use e.g. {example}")
    return real


# --- 1. convergence --------------------------------------------------------------------------

def flat_last_epochs(history: Sequence[Mapping[str, Any]], *, last: int = FLAT_LAST,
                     max_change: float = FLAT_MAX_CHANGE, min_clean: float = FLAT_MIN_CLEAN,
                     monitor_examples: int | None = None, model: str = "") -> Gate:
    """The run ended flat: over its last ``last`` epochs (the annealed end of the schedule,
    after the final learning-rate decay when the schedule gives it at least ``last``
    epochs) the monitored PGD accuracy ranges over at most ``max_change``.

    This is what the gate measures, and all it measures: an annealed schedule ends flat by
    construction, so it does not say that the run converged (twice the epochs raised the
    quick runs' monitored PGD accuracy by about 5 points). Whether more training changes a
    verdict is the budget study's question (:func:`stable_under_budget`, on the same seeds
    at twice the budget). ``history``: a run's per-epoch records (``run.metrics["history"]``:
    dicts with "epoch", "lr", "pgd_accuracy"). A window that straddles a learning-rate decay
    sees the decay's jump and fails. With one epoch there is nothing to compare: it fails.
    A run whose last monitored clean accuracy is below ``min_clean`` never trained (a flat
    curve at chance is not a plateau): it fails too.

    With ``monitor_examples`` (n, the monitor's images) the change must exceed ``max_change``
    beyond its images' sampling noise, as the pooled masking checks do: the gate tests the
    one-sided 95 % lower bound change - 1.645 sqrt(change n) / n, the bound of the paired
    difference with the fewest discordant images the change allows (every image that
    changed moved the same way, so the tightest bound). Without it, the bare range (one
    image can cross the threshold).
    """
    check_int_at_least(last, 2, "last", "2")
    check_nonnegative(max_change, "max_change", "0.03")
    threshold = f"<= {max_change:g} over the last {last} epochs"
    if monitor_examples is not None:
        n = check_int_at_least(monitor_examples, 1, "monitor_examples", "500")
        threshold = f"95% lower bound {threshold} ({n} monitor images)"
    records = sorted(history, key=lambda r: r["epoch"])
    if not records:
        return Gate("flat_last_epochs", model, None, threshold, False, "no epochs recorded",
                    "no training history")
    window = records[-last:]
    if len(window) < 2:
        return Gate("flat_last_epochs", model, None, threshold, False,
                    f"only {len(window)} epoch: no change to measure; train more epochs",
                    "one epoch")
    accuracies = [float(r["pgd_accuracy"]) for r in window]
    change = max(accuracies) - min(accuracies)
    tested = change
    if monitor_examples is not None:  # a bound below 0 means no change is resolved: 0
        tested = max(0.0, change - FLAT_Z * float(np.sqrt(change * n)) / n)
    rates = sorted({float(r["lr"]) for r in window})
    where = (f"lr {rates[0]:g}" if len(rates) == 1 else
             "across a learning-rate decay (" + ", ".join(f"{r:g}" for r in rates) + ")")
    shown = ", ".join(f"{r['epoch']}: {a:.3f}" for r, a in zip(window, accuracies, strict=True))
    clean = float(window[-1].get("clean_accuracy", 1.0))
    learned = at_least(clean, min_clean)
    passed = at_most(tested, max_change) and learned
    bound = f", 95% lower bound {tested:.3f}" if monitor_examples is not None else ""
    return Gate("flat_last_epochs", model, tested, threshold + f"; clean >= {min_clean:g}", passed,
                f"monitored PGD accuracy at epochs {shown} ({where}); range {change:.3f}{bound}"
                + ("" if learned else f"; clean accuracy {clean:.3f}: the run never trained"),
                "" if passed else "still changing" if learned else "never trained")

# --- 3. credible baselines --------------------------------------------------------------------

def _mean(values: float | Sequence[float]) -> tuple[float, int]:
    if isinstance(values, Sequence | np.ndarray):
        array = np.asarray(values, dtype=float)
        if array.size == 0:
            raise ValueError("no accuracies given; pass one per seed")
        return float(array.mean()), int(array.size)
    return float(values), 1


def credible_baseline(autoattack_accuracy: float | Sequence[float], *,
                      floor: float = BASELINE_FLOOR, measure: str = "AutoAttack",
                      model: str = "AT (PGD)") -> Gate:
    """PGD-AT's AutoAttack accuracy (a number, or one per seed: their mean) reaches
    ``floor`` (:data:`BASELINE_FLOOR`: 75 %, from the published 88.43 % of full-MNIST PGD-AT
    at epsilon 0.3, lowered for the 4,000-image, 5-8-epoch proxy). ``measure`` names what
    was passed (e.g. "A_rob", at most AutoAttack's accuracy: a stricter floor)."""
    _fraction(floor, "floor", "0.75")
    mean, seeds = _mean(autoattack_accuracy)
    passed = at_least(mean, floor)
    return Gate("credible_baseline", model, mean, f">= {floor:g}", passed,
                f"{measure} accuracy, mean over {seeds} seed(s): {mean:.3f} (published "
                "full-MNIST PGD-AT at eps 0.3: 0.884)", "" if passed else "weak baseline")


def credible_trades(trades_aa: float | Sequence[float], pgd_aa: float | Sequence[float], *,
                    ratio: float = TRADES_RATIO, measure: str = "AutoAttack",
                    model: str = "TRADES") -> Gate:
    """TRADES's AutoAttack accuracy (mean over seeds) reaches ``ratio`` x PGD-AT's
    (:data:`TRADES_RATIO`: 0.8; published on MNIST, TRADES is above PGD-AT).
    value = TRADES / PGD-AT (None when PGD-AT's is 0)."""
    check_positive(ratio, "ratio", "0.8")
    trades, n_trades = _mean(trades_aa)
    pgd, n_pgd = _mean(pgd_aa)
    value = trades / pgd if pgd > 0 else None
    passed = at_least(trades, ratio * pgd)
    return Gate("credible_trades", model, value, f">= {ratio:g} x PGD-AT", passed,
                f"{measure} accuracy, TRADES {trades:.3f} ({n_trades} seed(s)) vs PGD-AT "
                f"{pgd:.3f} ({n_pgd} seed(s))", "" if passed else "weak TRADES")


# --- 4. reliable columns ----------------------------------------------------------------------

def _check_name_and_failed(check: Any) -> tuple[str, bool]:
    """A :class:`~adt.evaluation.checks.CheckResult` or its dict (``eval.json``'s "checks")."""
    if isinstance(check, Mapping):
        return str(check["name"]), check.get("status") == "failed"
    return str(check.name), bool(check.failed)


def unreliable_columns(check_name: str) -> tuple[str, ...]:
    """The column patterns a failed check named ``check_name`` (e.g.
    "score_only[AutoAttack]") makes unusable (:data:`UNRELIABLE_COLUMNS`)."""
    base, _, rest = check_name.partition("[")
    bracket = rest[:-1] if rest.endswith("]") else rest
    patterns = UNRELIABLE_COLUMNS.get(base, _WHITE)
    return tuple(p.replace("{name}", bracket) for p in patterns)


def reliable_column(table_checks: Sequence[Any], column: str, *, model: str = "") -> Gate:
    """The column ``column`` (a row name such as "PGD-20", "AutoAttack", or "A_rob") is
    usable for a verdict about the model whose table's checks are ``table_checks``
    (``table.checks``: :class:`~adt.evaluation.checks.CheckResult`, or their dicts): no failed check
    names it (:data:`UNRELIABLE_COLUMNS`). value = the number of failed checks naming it."""
    failed = [name for name, bad in map(_check_name_and_failed, table_checks) if bad]
    naming = [name for name in failed
              if any(fnmatch.fnmatchcase(column, p) for p in unreliable_columns(name))]
    if naming:
        detail = f"{column} made unusable by the failed check(s) {', '.join(naming)}"
    elif failed:
        detail = f"{column}: the failed check(s) {', '.join(failed)} do not concern it"
    else:
        detail = f"{column}: every one of {len(table_checks)} checks passed or was skipped"
    return Gate(f"reliable_column[{column}]", model, float(len(naming)),
                "0 failed checks naming the column", not naming, detail,
                "" if not naming else "masking check failed")


def sample_spread(spread: float | Sequence[float], uniform: float | Sequence[float], *,
                  min_ratio: float = SPREAD_MIN_RATIO, model: str = "") -> Gate:
    """An ADT method learns a distribution, not a point: the mean pairwise l2 distance of
    its samples of the same image (``spread``, one value per seed) is at least ``min_ratio``
    times that of uniform noise in the epsilon-box on the same images (``uniform``), on
    every run (seed, budget). value = the smallest ratio over the runs."""
    check_positive(min_ratio, "min_ratio", "0.1")
    ours, control = np.atleast_1d(np.asarray(spread, float)), np.atleast_1d(
        np.asarray(uniform, float))
    if ours.shape != control.shape or ours.size == 0 or (control <= 0).any():
        raise ValueError(f"spread {ours.tolist()} and uniform {control.tolist()}: give one "
                         "positive control value per seed, as many as spreads")
    ratios = ours / control
    worst = float(ratios.min())
    passed = at_least(worst, min_ratio)
    return Gate("sample_spread", model, worst, f">= {min_ratio:g} x uniform noise, every seed",
                passed, "mean pairwise l2 of samples / uniform noise's, per run: "
                + ", ".join(f"{r:.3f}" for r in ratios)
                + ("" if passed else ": the samples are nearly one point (a deterministic "
                   "attack, not a distribution)"),
                "" if passed else "no distribution")


# --- 5. amortised generators ------------------------------------------------------------------

def working_generator(fooled_by_samples: float, fooled_by_fgsm: float, am_pgd: float,
                      standard_pgd: float, *, min_margin: float = GENERATOR_MIN_MARGIN,
                      attack: str = "PGD-20", model: str = "") -> Gate:
    """The AM generator works: the frozen Standard model's accuracy under the generator's
    samples (``fooled_by_samples``) is at most its accuracy under FGSM
    (``fooled_by_fgsm``), and the AM model's accuracy under ``attack`` (``am_pgd``; PGD-20,
    or A_rob where a masking check voids PGD for the model) exceeds Standard's
    (``standard_pgd``) by at least ``min_margin`` (5 points).
    value = the margin am_pgd - standard_pgd."""
    check_nonnegative(min_margin, "min_margin", "0.05")
    margin = am_pgd - standard_pgd
    attacks = at_most(fooled_by_samples, fooled_by_fgsm)
    teaches = at_least(margin, min_margin)
    problems = [p for p, bad in (("the samples are weaker than FGSM", not attacks),
                                 ("no robustness over Standard", not teaches)) if bad]
    return Gate("working_generator", model, margin,
                f"samples <= FGSM; {attack} margin >= {min_margin:g}", attacks and teaches,
                f"Standard's accuracy under the samples {fooled_by_samples:.3f} vs FGSM "
                f"{fooled_by_fgsm:.3f}; {attack} accuracy {am_pgd:.3f} vs Standard "
                f"{standard_pgd:.3f} (margin {margin:+.3f})"
                + (f": {' and '.join(problems)}" if problems else ""),
                "; ".join(problems))


# --- 6. independent models --------------------------------------------------------------------

def distinct_models(transfer_accuracy: float, agreement: float, *, white_box_accuracy: float,
                    max_agreement: float = CLONE_MAX_AGREEMENT,
                    max_transfer_gap: float = CLONE_MAX_TRANSFER_GAP, model: str = "") -> Gate:
    """Models A and B (``model``, e.g. "ADT_EXP-AM vs ADT_IMP-AM") are not near-clones.

    They are near-clones when *both* hold: (i) PGD crafted on A leaves B at most
    ``max_transfer_gap`` (5 points) above B's white-box accuracy, PGD crafted on B itself
    (``transfer_accuracy - white_box_accuracy <= max_transfer_gap``: the attack transfers
    with no loss), and (ii) the per-example correctness of A and B under the same attack
    agrees on more than ``max_agreement`` (95 %) of the images. Either alone happens for
    distinct but similarly robust models (two strong models agree on the many easy
    images; attacks transfer well between any two standard models), so the rule asks for
    both. The rule reads one direction; call it both ways for a symmetric one. A failed
    gate (kind "independence") does not change a verdict: the claims of the two models are
    reported, but counted as one piece of evidence, not two.
    value = the agreement."""
    _fraction(agreement, "agreement", "0.9")
    check_nonnegative(max_transfer_gap, "max_transfer_gap", "0.05")
    gap = transfer_accuracy - white_box_accuracy
    transfers = at_most(gap, max_transfer_gap)
    agrees = agreement > max_agreement + SLACK
    clones = transfers and agrees
    return Gate("distinct_models", model, agreement,
                f"not (agreement > {max_agreement:g} and transfer gap <= {max_transfer_gap:g})",
                not clones,
                f"agreement of per-example correctness {agreement:.3f}; transfer accuracy "
                f"{transfer_accuracy:.3f} vs white-box {white_box_accuracy:.3f} (gap "
                f"{gap:+.3f})" + (": near-clones, one piece of evidence" if clones else ""),
                "near-clones" if clones else "")
