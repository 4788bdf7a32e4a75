"""The fair trial's rules (adt.study.trial): plateau, verdict budget, margin verdicts and the
trained_out gate, on synthetic per-image grids."""

from __future__ import annotations

import numpy as np
import pytest

from adt.study.stats import Interval, margin_verdict
from adt.study.trial import (
    MARGIN_POINTS,
    OUTCOMES,
    PLATEAU_POINTS,
    choose_verdict_budget,
    judge_trial_pair,
    plateau_table,
    trained_out,
)
from adt.study.verdicts import gated_verdict, verdict_category

SEEDS = list(range(8))
N = 200


def _grid(rate: float, seed: int, jitter: float = 0.0) -> np.ndarray:
    """Per-image correctness with mean rate + seed-dependent jitter (exact counts)."""
    k = int(round(N * (rate + jitter * ((seed % 3) - 1))))
    return np.arange(N) < k


def _grids(rates: dict[tuple[int, str], float], jitter: float = 0.01):
    return {key: {s: _grid(r, s, jitter) for s in SEEDS} for key, r in rates.items()}


def test_margin_verdict_has_four_outcomes() -> None:
    m = MARGIN_POINTS / 100
    assert margin_verdict(Interval(0.03, 0.01, 0.05), m) == "supported"
    assert margin_verdict(Interval(-0.03, -0.05, -0.01), m) == "contradicted"
    assert margin_verdict(Interval(0.0, -0.03, 0.03), m) == "equivalent"
    assert margin_verdict(Interval(0.0, -0.08, 0.03), m) == "inconclusive"
    with pytest.raises(ValueError, match="margin=0"):
        margin_verdict(Interval(0, 0, 0), 0)


def test_outcomes_are_spelled_and_counted_as_not_reproduced() -> None:
    for outcome in ("contradicted", "equivalent"):
        text = gated_verdict(outcome, [], OUTCOMES)
        assert text == OUTCOMES[outcome] and verdict_category(text) == "not reproduced"
    assert "as large as 5 points" in OUTCOMES["equivalent"]


def test_verdict_budget_is_the_first_where_every_method_plateaus() -> None:
    # method x gains 10 points per doubling up to factor 2, then 0; y gains nothing
    rates = {(1, "x"): 0.70, (2, "x"): 0.80, (4, "x"): 0.80, (1, "y"): 0.8, (2, "y"): 0.8,
             (4, "y"): 0.8}
    plateaus = plateau_table(_grids(rates), ["x", "y"], SEEDS, [1, 2, 4])
    assert not plateaus[2]["x"]["plateaued"] and plateaus[2]["y"]["plateaued"]
    assert plateaus[4]["x"]["plateaued"]
    assert choose_verdict_budget(plateaus) == (4, True)


def test_no_plateau_reads_the_longest_budget_and_says_so() -> None:
    rates = {(1, "x"): 0.5, (2, "x"): 0.6, (4, "x"): 0.7, (1, "y"): 0.8, (2, "y"): 0.8,
             (4, "y"): 0.8}
    plateaus = plateau_table(_grids(rates), ["x", "y"], SEEDS, [1, 2, 4])
    assert plateaus[4]["x"]["interval"].high > PLATEAU_POINTS
    assert choose_verdict_budget(plateaus) == (4, False)


def test_trained_out_cuts_both_ways() -> None:
    still = {"plateaued": False, "interval": Interval(8.0, 6.0, 10.0)}
    flat = {"plateaued": True, "interval": Interval(0.0, -1.0, 1.0)}
    m = MARGIN_POINTS / 100

    def comparison(low: float, high: float):
        from adt.study.stats import Comparison
        e = Interval((low + high) / 2, low, high)
        return Comparison("difference", e, margin_verdict(e, m), 1, 8, N)

    # a "not reproduced" that the still-gaining ADT method could overturn is withheld
    deficit = comparison(-0.08, -0.02)
    gate = trained_out(deficit, still, flat)
    assert not gate.passed and gate.reason == "not trained out"
    assert gated_verdict(deficit.verdict, [gate]) == "inconclusive: not trained out"
    # a "supported" that a still-gaining baseline could overturn is withheld too
    gain = comparison(0.02, 0.06)
    assert not trained_out(gain, flat, still).passed
    # a verdict that one more doubling cannot move stands; plateaued pairs always pass
    assert trained_out(comparison(-0.30, -0.20), still, flat).passed
    assert trained_out(deficit, flat, flat).passed


def test_judge_trial_pair_reads_the_verdict_budget() -> None:
    rates = {(1, "a"): 0.60, (2, "a"): 0.75, (4, "a"): 0.76, (1, "b"): 0.80, (2, "b"): 0.82,
             (4, "b"): 0.82}
    grids = _grids(rates)
    plateaus = plateau_table(grids, ["a", "b"], SEEDS, [1, 2, 4])
    budget, plateaued = choose_verdict_budget(plateaus)
    pair = judge_trial_pair(grids, "a", "b", SEEDS, [1, 2, 4], budget, plateaus)
    assert (budget, plateaued) == (4, True)
    assert pair.at_verdict.effect.estimate == pytest.approx(-0.06, abs=0.003)
    assert pair.at_verdict.verdict == "contradicted"
    assert pair.comparisons[1].verdict == "contradicted"
    assert set(pair.changes) == {2, 4} and pair.changes[2].estimate > 0.1
    assert [g.gate for g in pair.gates] == ["trained_out", "enough_evidence"]
    assert all(g.passed for g in pair.gates)
    with pytest.raises(ValueError, match="run the study first"):
        judge_trial_pair(grids, "a", "b", [], [1, 2, 4], 4, plateaus)


def test_a_rob_error_retakes_a_margin_verdict_with_the_margin() -> None:
    from adt.study.evidence import a_rob_error
    from adt.study.stats import Comparison

    e = Interval(0.0, -0.02, 0.02)
    equivalent = Comparison("difference", e, "equivalent", 1, 8, N)
    clean = {"a": (0, 400), "b": (0, 400)}  # bounds of 0.75 points each
    assert a_rob_error(equivalent, clean, margin=0.05).passed
    # a large error bound can push the interval out of the margin: then it fails
    assert not a_rob_error(equivalent, {"a": (20, 100), "b": (0, 400)}, margin=0.05).passed


def test_read_trial_on_the_committed_budget_study() -> None:
    """The archive's 8- and 16-epoch runs (8 seeds) read as a two-budget trial: every pair
    judged on the same seeds, and the tables and the direction line built from them."""
    from adt.config.profiles import get_profile
    from adt.study.trial_results import direction_line, effect_rows, method_rows, read_trial
    from adt.training.archive import ARCHIVE_ROOT

    trial = read_trial(get_profile("quick"), ARCHIVE_ROOT, range(8), budgets=(1, 2))
    assert trial.seeds == tuple(range(8)) and trial.budgets == (1, 2)
    assert trial.epochs[1] == 8 and trial.epochs[2] == 16
    assert len(trial.pairs) == 6 and trial.verdict_budget == 2
    exp_at = trial.pairs["adt_exp", "pgd_at"]
    # the budget study's committed verdict: -1.4 [-3.4, +0.6] points at 16 epochs
    assert f"{100 * exp_at.at_verdict.effect.estimate:+.1f}" == "-1.4"
    assert len(effect_rows(trial)) == 6 and len(method_rows(trial)) == 5
    assert direction_line(trial).startswith("**Direction:**")
    # a gain of 9 or more points per doubling is no plateau
    assert not trial.plateaus[2]["adt_exp"]["plateaued"] and not trial.plateaued


def test_departure_outcome_follows_the_design() -> None:
    from adt.study.trial import departure_outcome

    done = {"ngf 32": {0: 0.02, 1: 0.03, 2: 0.2}, "ngf 64": {0: 0.15, 1: 0.2, 2: 0.3},
            "ngf 8, raw input": {0: 0.5, 1: 0.5, 2: 0.5}}
    assert departure_outcome(done, 0.1) == "restored by ngf 64"
    assert departure_outcome({k: {s: 0.01 for s in v} for k, v in done.items()}, 0.1) == (
        "none restores")
    assert departure_outcome({**done, "ngf 32": {0: 0.5}}, 0.1) == "pending"


def test_power_and_the_image_count_for_it() -> None:
    from adt.study.power import images_for_power, power

    assert power(0.0, 3.0, 8) == pytest.approx(0.025, abs=1e-3)  # one side of a 95% interval
    assert power(2.0, 3.0, 8) < power(5.0, 3.0, 8) < power(5.0, 3.0, 16)
    plan = images_for_power(3.0, 0.06, 8, options=(50, 100, 200))
    powers = [r["power"] for r in plan["options"]]
    assert powers == sorted(powers) and plan["power_at_choice"] >= 0.8
    assert plan["images"] == next(r["images"] for r in plan["options"] if r["power"] >= 0.8)
