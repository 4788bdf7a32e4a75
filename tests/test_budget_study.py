"""The budget study: its design (seeds from the committed per-seed spread), its jobs, its
analysis (seed-level verdicts at two budgets), the archive that carries its runs across
machines, and the A_rob cascade it evaluates with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adt.config.profiles import get_profile
from adt.study.budget import complete_seeds, judge_pair
from adt.study.campaign import (
    ADT_METHODS,
    BUDGETS,
    HEADLINE_PAIRS,
    STUDY_METHODS,
    load_design,
    study_jobs,
)
from adt.study.power import design, half_width, per_seed_a_rob_from_notebook, seeds_needed
from adt.study.verdicts import BUDGET_SENSITIVE, INCONCLUSIVE, gated_verdict

# --- the design ---------------------------------------------------------------------------------


def test_seeds_needed_is_the_smallest_count_whose_interval_excludes_the_effect():
    # t(0.975, 7) = 2.365: 2.365 * 5.53 / sqrt(8) = 4.62 <= 5, while 7 seeds give 5.11
    assert seeds_needed(5.53) == 8
    assert half_width(5.53, 8) <= 5 < half_width(5.53, 7)
    assert seeds_needed(0.1) == 5  # never fewer than the minimum
    with pytest.raises(ValueError, match="more than maximum"):
        seeds_needed(100.0, maximum=10)


def test_the_design_reads_chapter_4s_printed_per_seed_a_rob():
    notebook = {"cells": [{"outputs": [{"text": [
        "AT (PGD) seed 0: A_rob = 87.5%  (data/..., 169 s of attacks)\n",
        "AT (PGD) seed 1: A_rob = 85.5%  (...)\n", "ADT_EXP seed 0: A_rob = 78.5%  (...)\n",
        "ADT_EXP seed 1: A_rob = 72.0%  (...)\n"]}]}]}
    per_seed = per_seed_a_rob_from_notebook(notebook)
    assert per_seed == {"AT (PGD)": {0: 87.5, 1: 85.5}, "ADT_EXP": {0: 78.5, 1: 72.0}}
    with pytest.raises(ValueError, match="no 'MODEL seed K"):
        per_seed_a_rob_from_notebook({"cells": []})
    record = design({"a": {0: 1.0, 1: 3.0, 2: 2.0}, "b": {0: 0.0, 1: 0.0, 2: 0.0}},
                    [("a", "b")], [("a", "b")], effect=5.0)
    assert record["seeds"] == 5 and record["pairs"][0]["per_seed"] == {"0": 1.0, "1": 3.0,
                                                                       "2": 2.0}


def test_the_committed_design_was_made_before_the_study_and_asks_for_8_seeds():
    record = load_design(get_profile("quick"))
    assert record["seeds"] == 8 and record["images_per_seed"] == 200
    assert record["source"]["commit"].startswith("0018df1")  # the outputs before the study
    assert {tuple(p["a"] for p in record["pairs"])} == {tuple(a for a, _ in HEADLINE_PAIRS)}
    assert record["budgets"] == list(BUDGETS) and record["methods"] == list(STUDY_METHODS)


def test_the_study_trains_every_method_at_both_budgets_a_seed_at_a_time():
    quick = get_profile("quick")
    jobs = study_jobs(quick, range(3))
    assert len(jobs) == len(STUDY_METHODS) * len(BUDGETS) * 3
    assert [j.seed for j in jobs] == sorted(j.seed for j in jobs)  # whole seeds first
    epochs = {j.profile.recipe.epochs for j in jobs}
    assert epochs == {quick.recipe.epochs, 2 * quick.recipe.epochs}
    assert all(j.stage == "train" for j in jobs)
    # the recipe's budget is the profile's own: the chapters' runs are the study's
    from adt.training.runs import run_dir

    assert all(run_dir(j.profile, j.method, j.seed) == run_dir(quick, j.method, j.seed)
               for j in jobs if j.profile.recipe.epochs == quick.recipe.epochs)


# --- the analysis ---------------------------------------------------------------------------------


def _grids(effects_short, effects_long, n=200, seed=0):
    """Study grids where A - B per seed is given (fractions), B at 0.8."""
    rng = np.random.default_rng(seed)
    grids = {}
    for factor, effects in ((1, effects_short), (2, effects_long)):
        b = {s: rng.random(n) < 0.8 for s in range(len(effects))}
        a = {}
        for s, e in enumerate(effects):
            row = b[s].copy()
            k = int(round(abs(e) * n))
            index = np.flatnonzero(row if e < 0 else ~row)[:k]
            row[index] = e > 0
            a[s] = row
        grids[factor, "a"], grids[factor, "b"] = a, b
    return grids


def test_a_verdict_that_holds_at_both_budgets_is_decided():
    grids = _grids([-0.10, -0.08, -0.12, -0.09, -0.11], [-0.06, -0.05, -0.08, -0.07, -0.06])
    seeds = complete_seeds(grids, ("a", "b"), BUDGETS)
    result = judge_pair(grids, "a", "b", seeds, epochs=(8, 16), model="A vs B")
    assert seeds == [0, 1, 2, 3, 4] and result.short.seeds == 5
    assert result.short.verdict == result.long.verdict == "contradicted"
    assert result.change.estimate == pytest.approx(0.036, abs=1e-9)
    assert gated_verdict(result.short.verdict, result.gates) == "not reproduced"
    assert result.per_seed[1][0] == pytest.approx(-0.10)


def test_a_verdict_that_changes_with_the_budget_is_budget_sensitive():
    grids = _grids([-0.10, -0.08, -0.12, -0.09, -0.11], [0.0, 0.02, -0.03, 0.01, -0.01])
    result = judge_pair(grids, "a", "b", [0, 1, 2, 3, 4])
    assert result.short.verdict == "contradicted" and result.long.verdict == "inconclusive"
    assert gated_verdict(result.short.verdict, result.gates) == BUDGET_SENSITIVE


def test_three_seeds_decide_nothing():
    grids = _grids([-0.10, -0.08, -0.12], [-0.10, -0.08, -0.12])
    result = judge_pair(grids, "a", "b", [0, 1, 2])
    assert gated_verdict(result.short.verdict, result.gates) == (
        f"{INCONCLUSIVE}: 3 seeds (< 5)")
    with pytest.raises(ValueError, match="no seed"):
        judge_pair(grids, "a", "b", [])


def test_a_missing_run_makes_its_seed_incomplete():
    grids = _grids([-0.1, -0.1, -0.1], [-0.1, -0.1, -0.1])
    del grids[2, "a"][1]
    assert complete_seeds(grids, ("a", "b"), BUDGETS) == [0, 2]


# --- runs on disk: the cascade, the spread, the archive -----------------------------------------


def test_the_a_rob_cascade_is_a_rob_and_the_archive_restores_it_exactly(tmp_path):
    from adt.core.data import load_dataset
    from adt.evaluation.stored import A_ROB_FILE, evaluate_a_rob, evaluate_run, run_fingerprint
    from adt.study.spread import SPREAD_FILE, store_spread
    from adt.training.archive import archive_run, archived_runs, restore_archive
    from adt.training.loop import train
    from adt.training.modules import load_run

    smoke = get_profile("smoke")
    data = load_dataset("mnist5k", device="cpu")
    runs = tmp_path / "runs"
    run = train(smoke, "adt_imp_am", data=data, runs_root=runs, progress=False)
    cascade = evaluate_a_rob(run, data)
    full = evaluate_run(run, data, black_box=False, progress=False)
    # the cascade attacks survivors only, with other random draws: never above the table's
    # A_rob by more than the images its random starts differ on
    assert abs(float(cascade.worst_case().float().mean() - full.robust_accuracy)) <= 0.1
    from adt.evaluation.sanity import POOLED, pooled_checks

    pooled = pooled_checks([full, full])  # two "seeds": each image counted twice
    names = {c.name.split("[")[0] for c in pooled}
    assert set(POOLED) <= names and "pgd_many" in names
    for check in (c for c in pooled if c.name.split("[")[0] in POOLED):
        assert check.values["n"] == 2 * full.n_examples
        assert check.values["lower_bound"] <= check.values.get("gap", check.values.get("rate"))
        assert check.failed == (check.values["lower_bound"] > check.values["threshold"])
    spread = store_spread(run, data)
    assert spread["uniform"] > 0 and spread["images"] == 50
    archive = tmp_path / "archive"
    with_generator = archive_run(run.path, runs, archive)
    assert {p.name for p in with_generator.iterdir()} >= {"run.pt", "metrics.json", A_ROB_FILE,
                                                            SPREAD_FILE}
    stored = torch.load(with_generator / "run.pt", weights_only=False)
    assert stored["maximizer"]["_extra_state"]["optimizer"]["state"] == {}  # no moments
    assert not any(k.startswith("encoder.") for k in stored["maximizer"])  # training only
    restored_root = tmp_path / "restored"
    assert restore_archive(restored_root, archive) == [restored_root / archived_runs(archive)[0]]
    again = load_run(smoke, "adt_imp_am", 0, device="cpu", runs_root=restored_root)
    assert run_fingerprint(again) == run_fingerprint(run)  # the same weights, exactly
    reused = evaluate_a_rob(again, data)  # read, not attacked again
    assert torch.equal(reused.correct, cascade.correct)
    assert json.loads((restored_root / archived_runs(archive)[0] / SPREAD_FILE).read_text())[
        "spread"] == spread["spread"]
    assert restore_archive(restored_root, archive) == []  # present runs are left alone
    # a study-only run keeps its classifier alone; restored, it still loads and evaluates
    bare = tmp_path / "bare"
    archive_run(run.path, runs, bare, maximizer=False)
    restore_archive(tmp_path / "restored-bare", bare)
    classifier_only = load_run(smoke, "adt_imp_am", 0, device="cpu",
                               runs_root=tmp_path / "restored-bare")
    assert run_fingerprint(classifier_only) == run_fingerprint(run)
    assert set(ADT_METHODS) >= {run.method}


def test_cost_is_counted_the_same_every_time():
    from adt.artifact.costs import flops_ratios

    first = flops_ratios("smoke", ("adt_exp", "trades"), batch_size=8)
    assert first == flops_ratios("smoke", ("adt_exp", "trades"), batch_size=8)
    assert first["pgd_at"] == 1.0 and first["trades"] > 1.0


def _history(pgd):
    return [{"epoch": e + 1, "lr": 0.01, "pgd_accuracy": a, "clean_accuracy": 0.98}
            for e, a in enumerate(pgd)]


def test_one_monitor_image_cannot_fail_flat_last_epochs():
    from adt.study.gates import FLAT_Z, flat_last_epochs

    edge = _history([0.70, 0.860, 0.892])  # 16 of 500 monitor images: 0.2 points over 3
    assert not flat_last_epochs(edge).passed
    gate = flat_last_epochs(edge, monitor_examples=500)
    assert gate.passed and gate.value == pytest.approx(0.032 - FLAT_Z * 4 / 500)
    assert "95% lower bound" in gate.threshold and "range 0.032" in gate.detail
    assert not flat_last_epochs(_history([0.5, 0.80, 0.90]), monitor_examples=500).passed
    with pytest.raises(ValueError, match="monitor_examples"):
        flat_last_epochs(edge, monitor_examples=0)


def test_the_study_runs_are_gated_as_one_per_method(tmp_path):
    from adt.study.budget import study_flat_gates
    from adt.training.runs import METRICS, run_dir

    profile = get_profile("smoke")
    for factor, seed, pgd in ((1, 0, [0.8, 0.8]), (2, 0, [0.8, 0.81]), (1, 1, [0.5, 0.9]),
                              (2, 1, [0.9, 0.9])):
        folder = run_dir(profile.with_budget(factor), "pgd_at", seed, tmp_path)
        folder.mkdir(parents=True)
        (folder / METRICS).write_text(json.dumps({"history": _history(pgd)}))
    gate = study_flat_gates(profile, ["pgd_at"], [0, 1], [1, 2], tmp_path, (2, 4))["pgd_at"]
    assert not gate.passed and gate.value == pytest.approx(0.4)
    assert "3 of 4 runs flat" in gate.detail and "seed 1 at 2 epochs" in gate.detail
    missing = study_flat_gates(profile, ["pgd_at"], [0, 1, 2], [1, 2], tmp_path)["pgd_at"]
    assert not missing.passed and "of 6 runs" in missing.detail
    assert study_flat_gates(profile, ["pgd_at"], [0], [1, 2], tmp_path)["pgd_at"].passed
