"""Validity gates: each passes and fails on constructed inputs, at its boundary, and the
precedence of :func:`adt.study.gates.gated_verdict`."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adt.evaluation.checks import CheckResult
from adt.study import gates as G
from adt.study.gates import (
    BUDGET_SENSITIVE,
    GATED_VERDICTS,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    SUPPORTED,
    Gate,
    a_rob_error,
    credible_baseline,
    credible_trades,
    distinct_models,
    enough_evidence,
    flat_last_epochs,
    gated_verdict,
    gates_table,
    overstatement_bound,
    reliable_column,
    sample_spread,
    stable_under_budget,
    verdict_category,
    working_generator,
)
from adt.study.stats import Comparison, Interval, paired_comparison

ROOT = Path(__file__).resolve().parents[1]


def _history(accuracies, lrs):
    return [{"epoch": i + 1, "lr": lr, "pgd_accuracy": a}
            for i, (a, lr) in enumerate(zip(accuracies, lrs, strict=True))]


def _comparison(estimate, low, high, seeds=3, statistic="difference", verdict="supported"):
    return Comparison(statistic, Interval(estimate, low, high), verdict, 1, seeds, 500)


def _ok(name="converged", model="m"):
    return Gate(name, model, 0.0, "-", True, "fine")


def _bad(name, model="m", value=0.5, threshold=">= 0.75", reason=""):
    return Gate(name, model, value, threshold, False, "measured", reason)


# --- the Gate ---------------------------------------------------------------------------------

def test_a_gate_is_frozen_and_gives_a_table_row():
    gate = Gate("credible_baseline", "AT (PGD)", 0.7123, ">= 0.75", False, "AutoAttack")
    with pytest.raises(AttributeError):
        gate.passed = True  # type: ignore[misc]
    assert gate.to_row() == ["credible_baseline", "AT (PGD)", "0.712", ">= 0.75", "FAIL",
                             "AutoAttack"]
    assert Gate("x", "", None, "-", True, "d").to_row()[1:3] == ["-", "n/a"]
    assert gate.kind == "validity"
    assert Gate("reliable_column[PGD-20]", "", 1.0, "", False, "").kind == "validity"
    assert _ok("stable_under_budget").kind == "budget"
    assert _ok("enough_evidence").kind == "evidence"
    assert _ok("distinct_models").kind == "independence"
    assert _ok("something_new").kind == "validity"  # unknown gates are conservative


def test_thresholds_are_the_module_constants():
    defaults = {(flat_last_epochs, "max_change"): G.FLAT_MAX_CHANGE,
                (flat_last_epochs, "last"): G.FLAT_LAST,
                (flat_last_epochs, "min_clean"): G.FLAT_MIN_CLEAN,
                (credible_baseline, "floor"): G.BASELINE_FLOOR,
                (credible_trades, "ratio"): G.TRADES_RATIO,
                (a_rob_error, "level"): G.A_ROB_ERROR_LEVEL,
                (overstatement_bound, "level"): G.A_ROB_ERROR_LEVEL,
                (sample_spread, "min_ratio"): G.SPREAD_MIN_RATIO,
                (working_generator, "min_margin"): G.GENERATOR_MIN_MARGIN,
                (distinct_models, "max_agreement"): G.CLONE_MAX_AGREEMENT,
                (distinct_models, "max_transfer_gap"): G.CLONE_MAX_TRANSFER_GAP,
                (enough_evidence, "min_seeds"): G.MIN_SEEDS}
    for (fn, name), value in defaults.items():
        assert inspect.signature(fn).parameters[name].default == value, (fn.__name__, name)
    assert (G.FLAT_MAX_CHANGE, G.BASELINE_FLOOR, G.TRADES_RATIO, G.A_ROB_ERROR_LEVEL,
            G.GENERATOR_MIN_MARGIN, G.CLONE_MAX_AGREEMENT, G.SPREAD_MIN_RATIO, G.MIN_SEEDS) == (
        0.03, 0.75, 0.8, 0.95, 0.05, 0.95, 0.1, 5)


def test_the_gates_import_no_torch():
    code = "import adt.study.gates, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- 1. flat last epochs -----------------------------------------------------------------------------

def test_flat_last_epochs_reads_the_annealed_end_of_the_schedule():
    # epochs 1-6 at the top lr, 7 and 8 decayed: the last two settled
    history = _history([0.1, 0.3, 0.6, 0.7, 0.78, 0.86, 0.89, 0.90], [0.05] * 6 + [0.005] * 2)
    gate = flat_last_epochs(history, model="AT (PGD)")
    assert gate.passed and gate.value == pytest.approx(0.01)
    assert "7: 0.890" in gate.detail and "8: 0.900" in gate.detail and "6:" not in gate.detail
    assert "lr 0.005" in gate.detail
    # a window across the decay sees its jump: one decayed epoch is not enough
    jump = flat_last_epochs(_history([0.3, 0.6, 0.70, 0.72, 0.90], [0.01] * 4 + [0.001]))
    assert not jump.passed and "across a learning-rate decay" in jump.detail


def test_flat_last_epochs_fails_on_a_trend_and_holds_at_the_boundary():
    lrs = [0.1, 0.1, 0.01, 0.01]
    assert not flat_last_epochs(_history([0.5, 0.6, 0.6, 0.7], lrs)).passed  # 0.6 -> 0.7
    assert flat_last_epochs(_history([0.5, 0.6, 0.6, 0.63], lrs)).passed  # exactly 3 points
    assert not flat_last_epochs(_history([0.5, 0.6, 0.6, 0.6301], lrs)).passed
    assert flat_last_epochs(_history([0.5, 0.6, 0.6, 0.7], lrs), max_change=0.1).passed
    # last=3 takes the range over the window
    three = flat_last_epochs(_history([0.2, 0.60, 0.65, 0.62], lrs), last=3)
    assert three.value == pytest.approx(0.05) and not three.passed


def test_a_run_that_never_trained_is_not_flat():
    flat = [{"epoch": e, "lr": 0.05, "pgd_accuracy": 0.084, "clean_accuracy": 0.084}
            for e in range(1, 9)]
    gate = flat_last_epochs(flat, model="ADT_EXP seed 2")
    assert not gate.passed and gate.value == 0.0 and gate.reason == "never trained"
    assert "never trained" in gate.detail
    trained = [dict(r, clean_accuracy=0.97) for r in flat]
    assert flat_last_epochs(trained).passed
    assert flat_last_epochs(flat, min_clean=0.05).passed


def test_flat_last_epochs_with_few_epochs():
    two = flat_last_epochs(_history([0.5, 0.51], [0.1, 0.1]), last=4)  # fewer than `last`: all
    assert two.passed and two.value == pytest.approx(0.01)
    single = flat_last_epochs(_history([0.5], [0.05]))  # the smoke profile's one epoch
    assert not single.passed and single.value is None and "only 1 epoch" in single.detail
    assert not flat_last_epochs([]).passed
    unsorted = list(reversed(_history([0.5, 0.6, 0.61], [0.1, 0.1, 0.1])))
    assert flat_last_epochs(unsorted).value == pytest.approx(0.01)


# --- 2. stable under budget -------------------------------------------------------------------

def test_stable_under_budget_asks_for_the_same_verdict_at_both_budgets():
    short = _comparison(-0.08, -0.12, -0.04, seeds=8, verdict="contradicted")
    long = _comparison(-0.05, -0.09, -0.01, seeds=8, verdict="contradicted")
    gate = stable_under_budget(short, long, Interval(0.03, 0.0, 0.06), model="ADT_EXP vs AT",
                               budgets=("8 epochs", "16 epochs"))
    assert gate.passed and gate.value == pytest.approx(0.03) and gate.kind == "budget"
    assert "8 epochs" in gate.detail and "change +0.030" in gate.detail
    moved = stable_under_budget(short, _comparison(-0.02, -0.06, 0.02, seeds=8,
                                                   verdict="inconclusive"))
    assert not moved.passed and moved.reason == "budget-sensitive"
    assert gated_verdict("contradicted", [moved]) == BUDGET_SENSITIVE


# --- 3. credible baselines --------------------------------------------------------------------

def test_credible_baseline_at_the_floor():
    assert credible_baseline([0.74, 0.76]).passed  # the mean over seeds: 0.75
    gate = credible_baseline([0.70, 0.74, 0.75])
    assert not gate.passed and gate.value == pytest.approx(0.73) and "3 seed(s)" in gate.detail
    assert credible_baseline(0.9).passed and not credible_baseline(0.7499).passed
    assert credible_baseline(0.6, floor=0.5).passed
    assert gate.model == "AT (PGD)" and gate.threshold == ">= 0.75"
    with pytest.raises(ValueError):
        credible_baseline([])


def test_credible_trades_relative_to_pgd_at():
    boundary = credible_trades(0.6, 0.75)  # exactly 0.8 x
    assert boundary.passed and boundary.value == pytest.approx(0.8)
    assert not credible_trades(0.59, 0.75).passed
    assert credible_trades([0.9, 0.92], [0.88, 0.89]).passed
    zero = credible_trades(0.1, 0.0)
    assert zero.value is None and zero.passed  # PGD-AT's own gate fails in that case


# --- 4. reliable columns ----------------------------------------------------------------------

def _check(name, status="failed"):
    return CheckResult(name, status, "message", {})


GRADIENT_ROWS = ["FGSM", "PGD-20", "PGD-100", "MIM", "C&W", "FeaAttack"]


def test_a_failed_pgd_vs_autoattack_check_removes_the_fixed_step_columns():
    checks = [_check("pgd_many", "passed"), _check("pgd_vs_autoattack[AutoAttack]")]
    for column in GRADIENT_ROWS:
        gate = reliable_column(checks, column, model="ADT_EXP")
        assert not gate.passed and gate.value == 1.0, column
        assert gate.gate == f"reliable_column[{column}]"
        assert "pgd_vs_autoattack[AutoAttack]" in gate.detail
    for column in ("Clean", "APGD-CE+T", "AutoAttack", "A_rob", "Transfer PGD-20 from Standard",
                   "SPSA"):
        assert reliable_column(checks, column).passed, column


def test_a_failed_score_only_check_leaves_autoattack_and_a_rob():
    checks = [_check("score_only[AutoAttack]")]
    for column in [*GRADIENT_ROWS, "APGD-CE+T", "APGD-CE+T+FAB-T"]:
        assert not reliable_column(checks, column).passed, column
    for column in ("Clean", "AutoAttack", "A_rob"):
        assert reliable_column(checks, column).passed, column


def test_the_other_checks_and_their_columns():
    aa = [_check("autoattack_vs_pgd[APGD-CE+T]")]
    assert not reliable_column(aa, "APGD-CE+T").passed
    assert not reliable_column(aa, "AutoAttack").passed
    assert reliable_column(aa, "A_rob").passed and reliable_column(aa, "PGD-20").passed
    for name in ("large_epsilon", "white_vs_black[SPSA]", "unknown_check"):
        checks = [_check(name)]
        for column in ("PGD-20", "AutoAttack", "A_rob"):
            assert not reliable_column(checks, column).passed, (name, column)
        assert reliable_column(checks, "Clean").passed
    restarts = [_check("pgd_restarts")]
    assert not reliable_column(restarts, "MIM").passed
    assert reliable_column(restarts, "AutoAttack").passed


def test_passed_and_skipped_checks_and_stored_dicts():
    checks = [_check("score_only[AutoAttack]", "passed"), _check("white_vs_black", "skipped")]
    gate = reliable_column(checks, "PGD-20")
    assert gate.passed and gate.value == 0.0 and "every one of 2 checks" in gate.detail
    stored = [_check("pgd_vs_autoattack[AutoAttack]").to_dict()]  # as in eval.json
    assert not reliable_column(stored, "PGD-20").passed
    assert reliable_column(stored, "A_rob").passed
    assert "do not concern it" in reliable_column(stored, "A_rob").detail
    assert reliable_column([], "A_rob").passed


def test_every_check_of_the_sanity_module_has_its_columns():
    source = (ROOT / "adt" / "evaluation" / "sanity.py").read_text()
    for name in G.UNRELIABLE_COLUMNS:
        stem = name.split("_")[0] + "_" if name in ("pgd_many", "pgd_restarts") else name
        assert f'"{stem}' in source or f'f"{stem}' in source, name
    assert set(G.UNRELIABLE_COLUMNS) == {"pgd_many", "pgd_restarts", "large_epsilon",
                                         "white_vs_black", "autoattack_vs_pgd", "score_only",
                                         "pgd_vs_autoattack"}


def test_the_overstatement_bound_is_clopper_pearson():
    assert overstatement_bound(0, 120) == pytest.approx(1 - 0.05 ** (1 / 120))
    assert overstatement_bound(2, 120) > 2 / 120
    assert overstatement_bound(0, 0) == 1.0
    with pytest.raises(ValueError):
        overstatement_bound(5, 3)


def test_an_a_rob_error_voids_a_verdict_only_where_it_could_flip_it():
    deficit = _comparison(-0.10, -0.15, -0.05, seeds=8, verdict="contradicted")
    # A (the ADT model) overstated: its true A_rob lower, the deficit only widens
    gate = a_rob_error(deficit, {"a": (3, 120), "b": (0, 120)}, model="ADT_EXP vs AT")
    assert gate.passed and gate.value == pytest.approx(overstatement_bound(0, 120))  # B's side
    assert "widened to" in gate.detail
    # B (the baseline) overstated enough to reach zero: the verdict could change
    near = _comparison(-0.04, -0.06, -0.01, seeds=8, verdict="contradicted")
    flips = a_rob_error(near, {"a": (0, 120), "b": (2, 120)})
    assert not flips.passed and "inconclusive (was contradicted)" in flips.detail
    assert gated_verdict("contradicted", [flips]).startswith(f"{NOT_TESTABLE}: a_rob_error")
    # an inconclusive verdict cannot be flipped by widening
    assert a_rob_error(_comparison(0.0, -0.05, 0.05, seeds=8, verdict="inconclusive"),
                       {"a": (10, 120), "b": (10, 120)}).passed
    # on fewer than 5 seeds nothing is decided: the evidence gate speaks, not this one
    few = a_rob_error(_comparison(-0.04, -0.06, -0.01, seeds=2, verdict="contradicted"),
                      {"a": (0, 120), "b": (2, 120)})
    assert few.passed and "no decided verdict" in few.detail


def test_sample_spread_needs_every_seed_to_spread():
    gate = sample_spread([4.8, 5.0], [6.85, 6.86], model="ADT_EXP-AM")
    assert gate.passed and gate.value == pytest.approx(4.8 / 6.85)
    point = sample_spread([0.143, 5.0], [6.85, 6.85], model="ADT_IMP-AM")
    assert not point.passed and "deterministic" in point.detail
    assert sample_spread(0.685, 6.85).passed  # exactly a tenth
    with pytest.raises(ValueError):
        sample_spread([1.0, 2.0], [1.0])


# --- 5. working generator -----------------------------------------------------------------------

def test_working_generator_needs_both_conditions():
    gate = working_generator(0.10, 0.20, 0.60, 0.05, model="ADT_EXP-AM")
    assert gate.passed and gate.value == pytest.approx(0.55)
    assert "0.100" in gate.detail and "0.200" in gate.detail
    weak = working_generator(0.30, 0.20, 0.60, 0.05)
    assert not weak.passed and "weaker than FGSM" in weak.detail
    untaught = working_generator(0.10, 0.20, 0.08, 0.05)
    assert not untaught.passed and "no robustness" in untaught.detail
    # the boundaries: samples exactly as strong as FGSM, a margin of exactly 5 points
    assert working_generator(0.2, 0.2, 0.15, 0.10).passed
    assert working_generator(0.2, 0.2, 0.55, 0.50).passed
    assert not working_generator(0.2, 0.2, 0.1499, 0.10).passed


# --- 6. distinct models -------------------------------------------------------------------------

def test_near_clones_need_both_agreement_and_lossless_transfer():
    clones = distinct_models(0.42, 0.97, white_box_accuracy=0.40, model="AM vs IMP")
    assert not clones.passed and clones.kind == "independence" and clones.value == 0.97
    assert "near-clones" in clones.detail
    assert distinct_models(0.80, 0.97, white_box_accuracy=0.40).passed  # transfer is lossy
    assert distinct_models(0.41, 0.80, white_box_accuracy=0.40).passed  # they disagree
    # boundaries: agreement must be *above* 0.95; a transfer gap of exactly 5 points counts
    assert distinct_models(0.40, 0.95, white_box_accuracy=0.40).passed
    assert not distinct_models(0.45, 0.951, white_box_accuracy=0.40).passed
    assert distinct_models(0.4501, 0.99, white_box_accuracy=0.40).passed
    # an independence gate changes no verdict
    assert gated_verdict("supported", [clones]) == SUPPORTED


# --- 7. enough evidence -------------------------------------------------------------------------

def test_fewer_than_five_seeds_are_not_enough():
    gate = enough_evidence(_comparison(0.2, 0.15, 0.25, seeds=1))
    assert not gate.passed and gate.reason == "one seed"
    assert gated_verdict("supported", [gate]) == f"{INCONCLUSIVE}: one seed"
    # even a clear statistical verdict on one seed
    clear = paired_comparison(np.ones((1, 32)), np.zeros((1, 32)), n_boot=200)
    assert clear.verdict == "supported" and clear.seeds == 1
    assert gated_verdict(clear.verdict, [enough_evidence(clear)]) == f"{INCONCLUSIVE}: one seed"
    three = enough_evidence(_comparison(-0.08, -0.14, -0.01, seeds=3))
    assert not three.passed and three.reason == "3 seeds (< 5)" and three.value == 3
    assert enough_evidence(_comparison(0.2, 0.1, 0.3, seeds=5)).passed  # the boundary
    assert enough_evidence(_comparison(0.2, 0.1, 0.3, seeds=2), min_seeds=2).passed


# --- gated verdicts -----------------------------------------------------------------------------

def test_the_precedence_of_gated_verdict():
    validity = _bad("credible_baseline", "AT (PGD)", 0.61, ">= 0.75")
    later = _bad("converged", "TRADES", 0.1, "<= 0.03")
    budget = _bad("stable_under_budget", "ADT_EXP vs AT", 0.1, "same sign")
    evidence = _bad("enough_evidence", "ADT_EXP vs AT", None, ">= 2 seeds", reason="one seed")
    everything = [_ok(), evidence, budget, validity, later]
    assert gated_verdict("supported", everything) == (
        f"{NOT_TESTABLE}: credible_baseline (AT (PGD)) = 0.61 (needs >= 0.75)")
    assert gated_verdict("contradicted", [evidence, budget, later]).startswith(
        f"{NOT_TESTABLE}: converged (TRADES)")
    assert gated_verdict("supported", [evidence, budget]) == BUDGET_SENSITIVE
    assert gated_verdict("supported", [_ok(), evidence]) == f"{INCONCLUSIVE}: one seed"
    assert gated_verdict("supported", [_ok()]) == SUPPORTED
    assert gated_verdict("contradicted", [_ok()]) == NOT_REPRODUCED
    assert gated_verdict("inconclusive", []) == INCONCLUSIVE
    anonymous = Gate("cost_measured", "", None, ">= 2 repetitions", False, "d")
    assert gated_verdict("supported", [anonymous]) == (
        f"{NOT_TESTABLE}: cost_measured = n/a (needs >= 2 repetitions)")
    with pytest.raises(ValueError):
        gated_verdict("not reproduced", [])


def test_every_gated_verdict_has_a_category():
    assert GATED_VERDICTS == (SUPPORTED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)
    assert SUPPORTED == "supported" and NOT_REPRODUCED == "not reproduced"
    for verdict, category in ((SUPPORTED, SUPPORTED), (NOT_REPRODUCED, NOT_REPRODUCED),
                              (INCONCLUSIVE, INCONCLUSIVE), (BUDGET_SENSITIVE, INCONCLUSIVE),
                              ("inconclusive: one seed", INCONCLUSIVE),
                              ("not testable here: converged (x) = 0.1 (needs <= 0.03)",
                               NOT_TESTABLE)):
        assert verdict_category(verdict) == category
    with pytest.raises(ValueError):
        verdict_category("contradicted")


@pytest.mark.parametrize("seed", range(20))
def test_a_one_seed_experiment_never_supports_or_refutes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 64))  # smoke-sized
    shift = rng.uniform(-1, 1)
    a = rng.random((1, n)) < np.clip(0.5 + shift, 0, 1)
    b = rng.random((1, n)) < 0.5
    comparison = paired_comparison(a, b, direction=int(rng.choice([-1, 1])), n_boot=200)
    passing = [_ok("converged"), _ok("credible_baseline"), _ok("stable_under_budget")]
    gates = [*passing, enough_evidence(comparison)]
    reported = gated_verdict(comparison.verdict, gates)
    assert verdict_category(reported) == INCONCLUSIVE, (comparison, reported)
    assert reported == f"{INCONCLUSIVE}: one seed"


def test_gates_table():
    gates = [credible_baseline(0.8), flat_last_epochs(_history([0.5], [0.1]), model="TRADES")]
    header, rows = gates_table(gates)
    assert header == ["gate", "model", "value", "threshold", "result", "detail"]
    assert [r[0] for r in rows] == ["credible_baseline", "flat_last_epochs"]
    assert rows[0][4] == "pass" and rows[1][4] == "FAIL" and rows[1][2] == "n/a"
    assert all(len(r) == len(header) for r in rows)
