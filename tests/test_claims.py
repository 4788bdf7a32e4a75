"""adt.study.claims: seed-aggregated cells, paired comparisons of methods, the claims ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adt.evaluation.table import RobustnessTable
from adt.study.claims import (
    A_ROB,
    Claim,
    claims_markdown,
    compare_methods,
    curvature_comparison,
    equivalence_verdict,
    format_cell,
    format_log_ratio,
    per_example,
    seed_rows,
    white_box_columns,
)
from adt.study.stats import Interval


def table(seed: int, clean: np.ndarray, pgd: np.ndarray) -> RobustnessTable:
    specs = [{"name": "Clean", "kind": "clean", "source": None, "settings": {}},
             {"name": "PGD-20", "kind": "white", "source": None, "settings": {"steps": 20}}]
    correct = torch.as_tensor(np.stack([clean, pgd]))
    return RobustnessTable(specs, correct, [len(clean)] * 2, [0.0, 0.0], meta={"seed": seed})


def method_tables(p_clean: float, p_pgd: float, seeds=(0, 1, 2), n=400, offset=0):
    out = []
    for s in seeds:
        u = np.random.default_rng(100 + s).random(n)  # shared per seed: the same hard images
        out.append(table(s, u < p_clean, u < p_pgd))
    return out


def test_a_rob_is_the_per_example_worst_case_of_clean_and_white_box_rows():
    t = table(0, np.array([1, 1, 0, 1], bool), np.array([1, 0, 1, 1], bool))
    assert per_example([t], A_ROB).tolist() == [[True, False, False, True]]
    assert white_box_columns(t) == ["Clean", "PGD-20", A_ROB]


def test_seed_rows_show_mean_std_and_interval_in_percent():
    tables = {"a": method_tables(0.9, 0.6), "b": method_tables(0.9, 0.4)}
    rows, summaries = seed_rows(tables, ["PGD-20"], labels={"a": "A", "b": "B"})
    assert rows[0][0] == "A" and rows[1][0] == "B"
    cell = summaries["a"]["PGD-20"]
    assert cell["seeds"] == 3 and cell["examples"] == 400
    assert rows[0][1] == format_cell(cell)
    assert " ± " in rows[0][1] and rows[0][1].endswith("]")
    assert cell["low"] < cell["mean"] < cell["high"]


def test_compare_methods_pairs_by_seed_and_detects_the_better_method():
    better, worse = method_tables(0.9, 0.6), method_tables(0.9, 0.4)
    result = compare_methods(better, worse[::-1], "PGD-20")  # order of tables does not matter
    assert result.verdict == "supported"
    assert result.effect.estimate == pytest.approx(
        per_example(better, "PGD-20").mean() - per_example(worse, "PGD-20").mean())
    assert compare_methods(worse, better, A_ROB).verdict == "contradicted"


def test_compare_methods_uses_only_the_shared_seeds_and_refuses_none():
    a, b = method_tables(0.9, 0.6, seeds=(0, 1)), method_tables(0.9, 0.6, seeds=(1, 2))
    assert compare_methods(a, b, "PGD-20").seeds == 1
    with pytest.raises(ValueError, match="share no seed"):
        compare_methods(method_tables(0.9, 0.6, seeds=(0,)), method_tables(0.9, 0.6, seeds=(1,)),
                        "PGD-20")


def test_equivalence_verdict():
    assert equivalence_verdict(Interval(0.0, -0.02, 0.03), 0.05) == "supported"
    assert equivalence_verdict(Interval(0.0, -0.02, 0.08), 0.05) == "inconclusive"
    assert equivalence_verdict(Interval(0.1, 0.06, 0.14), 0.05) == "contradicted"
    assert equivalence_verdict(Interval(1.0, 0.9, 1.2), 0.5, null=1.0) == "supported"
    with pytest.raises(ValueError, match="margin"):
        equivalence_verdict(Interval(0, 0, 0), 0.0)


def test_claims_markdown_counts_verdicts_and_lists_every_claim():
    claims = [Claim("ADT beats AT", "A_rob, 3 seeds x 500 images", "+1.0 points [-2.0, 4.0]",
                    "inconclusive: one seed", "tab06_whitebox"),
              Claim("ADT is k times slower", "s/epoch", "x4.4 [4.2, 4.6]", "supported",
                    "tab03_cost", "row a"),
              Claim("ADT-AM beats AT", "A_rob", "-30.0 points [-35.0, -25.0]",
                    "not testable here: working_generator (ADT_EXP-AM) = -0.1 (needs >= 0.05)",
                    "tab06_whitebox")]
    text = claims_markdown(claims, title="Claims", preamble="quick profile",
                           provenance={"notebook": "notebooks/06_claims.ipynb"},
                           sections=["## Gates", "| gate |"])
    assert text.startswith("# Claims")
    assert ("1 supported, 0 not reproduced, 1 inconclusive, 1 not testable here"
            in text)
    assert "**inconclusive: one seed**" in text and "ADT is k times slower" in text
    assert text.index("## Gates") < text.index("Produced by")
    assert "notebooks/06_claims.ipynb" in text


def test_the_curvature_statistic_is_the_geometric_mean_ratio_not_the_mean():
    # heavy tails: one huge value of b makes b's raw mean larger, but a is larger per image
    # on 9 of 10 images by x2, so the geometric-mean ratio says a is not flatter
    b = np.array([1.0] * 9 + [1000.0])
    a = np.array([2.0] * 9 + [1000.0])
    result = curvature_comparison(a, b)
    assert 10 ** result.effect.estimate == pytest.approx(2 ** 0.9)
    assert result.verdict == "contradicted"  # the paper's direction is "smaller"
    assert format_log_ratio(result.effect).startswith("x1.87 [")
    flatter = curvature_comparison(b / 3, b)
    assert 10 ** flatter.effect.estimate == pytest.approx(1 / 3) and flatter.verdict == "supported"


def test_gates_summary_counts_each_gate_and_names_the_failing():
    from adt.study.verdicts import Gate, gates_summary

    gates = [Gate("flat_last_epochs", "AT seed 0", 0.0, "<= 0.03", True, ""),
             Gate("flat_last_epochs", "AT seed 1", 0.05, "<= 0.03", False, ""),
             Gate("sample_spread", "ADT_EXP", 0.9, ">= 0.1", True, "")]
    header, rows = gates_summary(gates)
    assert header == ["gate", "threshold", "pass", "failing (value)"]
    assert rows == [["flat_last_epochs", "<= 0.03", "1 of 2", "AT seed 1 (0.05)"],
                    ["sample_spread", ">= 0.1", "1 of 1", "-"]]
