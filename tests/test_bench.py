"""`python -m adt.bench` at a tiny size: a well-formed table and JSON (speed is not asserted)."""

import json
import math

from adt.artifact import bench, costs
from adt.artifact.bench import main
from adt.artifact.costs import cost_ratios
from adt.config.profiles import get_profile
from adt.core.data import DATASETS
from adt.method.methods import METHODS, build_maximizer


def test_training_benchmark_writes_a_table_for_every_method(tmp_path, capsys):
    out = tmp_path / "cpu-small_cnn.json"
    assert main(["--model", "small_cnn", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                 "--repeats", "1", "--profile", "smoke", "--device", "cpu",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods == [*METHODS, "adt_exp_reference"]
    for row in result["rows"]:
        assert row["images_per_second"] > 0 and row["flops_per_step"] > 0
        assert row["time_ratio_to_pgd"] > 0 and row["pass_ratio_to_pgd"] > 0
        assert row["label"] in printed
    pgd = next(r for r in result["rows"] if r["method"] == "pgd_at")
    assert pgd["time_ratio_to_pgd"] == 1.0
    std = next(r for r in result["rows"] if r["method"] == "standard")
    assert std["flops_per_step"] < pgd["flops_per_step"]  # 1 pass against T + 1
    assert result["environment"]["device"] == "cpu"
    assert "speed-up over the reference-style step" in printed
    # the pass counts are the maximisers' own (the reference-style loop is ADT_EXP's)
    settings, spec = get_profile("smoke").methods, DATASETS["mnist5k"]
    passes = {m: build_maximizer(m, settings, spec, spec.epsilon).passes_per_image
              for m in METHODS}
    passes["adt_exp_reference"] = passes["adt_exp"]
    assert {r["method"]: r["passes_per_image"] for r in result["rows"]} == passes
    for row in result["rows"]:
        assert row["pass_ratio_to_pgd"] == passes[row["method"]] / passes["pgd_at"]


def test_attack_benchmark_compares_with_torchattacks(tmp_path, capsys):
    out = tmp_path / "attacks.json"
    assert main(["--attacks", "--model", "small_cnn", "--batch-size", "8", "--warmup", "0",
                 "--repeats", "1", "--device", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ours_images_per_second"] > 0 and result["torchattacks_images_per_second"] > 0
    assert "torchattacks" in capsys.readouterr().out


def test_cost_ratios_are_interleaved_ratios_to_the_baseline():
    ratios = cost_ratios("smoke", ("standard", "adt_exp"), batch_size=4, repeats=2, steps=1,
                         warmup=0)
    assert list(ratios) == ["standard", "adt_exp", "pgd_at"]  # the baseline is always timed
    for values in ratios.values():
        assert len(values) == 2 and all(v > 0 and math.isfinite(v) for v in values)
    assert ratios["pgd_at"] == [1.0, 1.0]


def test_cost_ratios_rotate_the_order_every_repetition(monkeypatch):
    calls = []
    monkeypatch.setattr(costs, "train_step", lambda model, maximizer, *args: calls.append(
        type(maximizer).__name__))
    ratios = cost_ratios(get_profile("smoke"), ("standard", "pgd_at", "trades"), batch_size=2,
                         repeats=4, steps=1, warmup=1)
    assert all(len(v) == 4 for v in ratios.values()) and ratios["pgd_at"] == [1.0] * 4
    order = ["Clean", "PGD", "TRADES"]
    assert calls[:3] == order  # warm-up, then one step each, rotated by one every repetition
    assert calls[3:] == [*order, *order[1:], order[0], order[2], *order[:2], *order]


def test_paper_flops_writes_both_configurations_and_the_claims(tmp_path, capsys, monkeypatch):
    # the smoke profile stands in for the paper's (WRN-28-10: tests/test_costs_paper.py)
    monkeypatch.setattr(bench, "PAPER_PROFILE", "smoke")
    out = tmp_path / "flops-paper.json"
    assert main(["--paper-flops", "--profile", "smoke", "--batch-size", "4",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["kind"] == "flops_paper" and result["environment"]["torch"]
    for side in ("paper", "proxy"):
        entry = result[side]
        assert entry["counted_on"] == "meta" and entry["configuration"]["batch_size"] == 4
        assert list(entry["methods"]) == list(METHODS)
        assert entry["methods"]["pgd_at"]["ratio_to_pgd_at"] == 1.0
        for row in entry["methods"].values():
            assert row["flops_per_step"] > 0 and row["label"] in printed
            assert row["ratio_to_pgd_at"] == row["flops_per_step"] / \
                entry["methods"]["pgd_at"]["flops_per_step"]
    assert result["proxy"]["meta_count_equals_cpu_count"] is True
    claims = {c["method"]: c for c in result["claims"]}
    assert set(claims) == {"adt_exp", "adt_exp_am", "adt_imp_am"}
    assert claims["adt_exp"]["paper"]["claimed_ratio"] == get_profile("smoke").methods.adt_num_samples
    for c in claims.values():
        for side in ("paper", "proxy"):
            row = c[side]
            assert row["ratio"] == result[side]["methods"][c["method"]]["ratio_to_pgd_at"]
            assert math.isclose(row["factor_from_claim"], max(row["ratio"] / row["claimed_ratio"],
                                                              row["claimed_ratio"] / row["ratio"]))
            assert row["within_margin"] == (row["factor_from_claim"] < result["margin_factor"])
    assert "within x1.5" in printed
