"""adt.study.stats: the paired bootstrap behind every verdict, checked against explicit loops,
known answers and its coverage on simulated data."""

from __future__ import annotations

import numpy as np
import pytest

from adt.study.stats import (
    Interval,
    _boot_means,
    _replicates,
    paired_comparison,
    seed_summary,
    verdict,
)


def test_bootstrap_means_equal_an_explicit_loop_over_the_drawn_cells():
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(3, 7))
    seeds, images = _replicates(grid.shape, 50, seed=1)
    fast = _boot_means(grid, seeds, images)
    slow = [np.mean([grid[s, i] for s in seeds[b] for i in images[b]]) for b in range(50)]
    assert np.allclose(fast, slow)


@pytest.mark.parametrize(("low", "high", "direction", "expected"), [
    (0.01, 0.2, 1, "supported"), (0.01, 0.2, -1, "contradicted"),
    (-0.2, -0.01, 1, "contradicted"), (-0.2, -0.01, -1, "supported"),
    (-0.01, 0.2, 1, "inconclusive"), (0.0, 0.2, 1, "inconclusive")])
def test_verdict_reads_the_interval_against_the_claimed_direction(low, high, direction, expected):
    assert verdict(Interval(0.5 * (low + high), low, high), direction=direction) == expected


def test_verdict_rejects_a_direction_that_is_not_a_sign():
    with pytest.raises(ValueError, match="direction=0"):
        verdict(Interval(0, 0, 0), direction=0)


def test_identical_methods_are_inconclusive_with_a_zero_effect():
    a = np.random.default_rng(0).random((3, 200)) < 0.6
    result = paired_comparison(a, a)
    assert result.effect.estimate == 0 and result.effect.low == 0 and result.effect.high == 0
    assert result.verdict == "inconclusive"


def test_a_clear_difference_is_supported_or_contradicted_by_direction():
    rng = np.random.default_rng(1)
    b = rng.random((3, 500)) < 0.5
    a = b | (rng.random((3, 500)) < 0.3)  # a is right wherever b is, and more often
    up = paired_comparison(a, b, direction=1)
    assert up.verdict == "supported" and up.effect.low > 0.1
    assert paired_comparison(a, b, direction=-1).verdict == "contradicted"
    assert (up.seeds, up.examples) == (3, 500)


def test_the_ratio_statistic_has_its_null_at_one():
    b = np.full((2, 10), 2.0)
    result = paired_comparison(3 * b, b, statistic="ratio")
    assert result.effect.estimate == pytest.approx(3.0) and result.verdict == "supported"


def test_pairing_makes_a_small_consistent_gain_detectable():
    # per-image difficulty dominates the variance; the pairing removes it
    rng = np.random.default_rng(2)
    difficulty = rng.random(400)
    b = rng.random((3, 400)) > difficulty
    a = b | (rng.random((3, 400)) < 0.05)
    assert paired_comparison(a, b).verdict == "supported"


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    p_a, p_b, hits, trials = 0.7, 0.65, 0, 200
    for t in range(trials):
        u = rng.random((1, 300))  # a shared latent per image makes the pair correlated
        a, b = u < p_a, u < p_b
        a ^= rng.random((1, 300)) < 0.02
        b ^= rng.random((1, 300)) < 0.02
        truth = (p_a * 0.98 + (1 - p_a) * 0.02) - (p_b * 0.98 + (1 - p_b) * 0.02)
        effect = paired_comparison(a, b, n_boot=1000, seed=t).effect
        hits += effect.low <= truth <= effect.high
    # binomial(200, 0.95) lies in [180, 199] with probability > 0.999
    assert 180 <= hits <= 199, hits


def test_seed_summary_gives_mean_std_and_an_interval_around_the_mean():
    grid = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]], dtype=bool)
    cell = seed_summary(grid)
    per_seed = grid.mean(1)
    assert cell["mean"] == pytest.approx(per_seed.mean())
    assert cell["std"] == pytest.approx(per_seed.std(ddof=1))
    assert cell["low"] <= cell["mean"] <= cell["high"]
    assert seed_summary(grid[:1])["std"] == 0.0


@pytest.mark.parametrize(("a", "b", "match"), [
    (np.ones((2, 3)), np.ones((3, 3)), "same seeds"),
    (np.ones((2, 0)), np.ones((2, 0)), "shape"),
    (np.array([1.0, np.nan]), np.ones(2), "non-finite"),
])
def test_bad_inputs_are_named(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_comparison(a, b)


def test_unknown_statistic_is_named():
    with pytest.raises(ValueError, match="statistic='median'"):
        paired_comparison(np.ones(3), np.ones(3), statistic="median")


def test_the_seed_interval_is_the_t_interval_over_per_seed_effects():
    from adt.study.stats import seed_interval

    # ADT_EXP - AT per seed as committed before the budget study (points): t(0.975, 2) = 4.303
    interval = seed_interval([-9.0, -13.5, -3.5])
    assert interval.estimate == pytest.approx(-26 / 3)
    assert interval.high - interval.estimate == pytest.approx(4.3027 * 5.0083 / 3 ** 0.5, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        seed_interval([1.0])


def test_with_three_seeds_the_interval_covers_the_seed_mean_about_95_percent_of_the_time():
    """Seeds differ (a seed effect of SD 0.05 on top of the images' noise): the seed-level
    interval must cover the true mean effect at its nominal rate; a bootstrap over three
    seeds covers it far less often."""
    rng = np.random.default_rng(4)
    hits, trials = 0, 300
    for _ in range(trials):
        p_b = 0.8
        p_a = np.clip(0.75 + rng.normal(0, 0.05, size=(3, 1)), 0, 1)
        a, b = rng.random((3, 200)) < p_a, rng.random((3, 200)) < p_b
        effect = paired_comparison(a, b).effect
        hits += effect.low <= -0.05 <= effect.high
    assert 270 <= hits <= 299, hits  # binomial(300, 0.95): [272, 294] with p > 0.99
