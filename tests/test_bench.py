"""`python -m adt.bench` at a tiny size: a well-formed table and JSON (speed is not asserted)."""

import json

from adt.bench import main
from adt.data import DATASETS
from adt.methods import METHODS, build_maximizer
from adt.profiles import get_profile


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
