"""The budget study's analysis: the headline A_rob claims on every study seed, at the recipe's
budget and at twice it, paired by seed and test image.

For a pair (A, B) and a budget b, the per-seed effect is d_s^b = A_rob(A, s, b) -
A_rob(B, s, b) on the same images, and its interval the seed-level t-interval
(:func:`adt.study.stats.paired_comparison`). The verdict rule (REPRODUCTION.md, *How claims
are judged*):

- a verdict is given at a budget where doubling does not change it: when the statistical
  verdicts at b = 1 and b = 2 agree, that verdict (shown with the recipe's effect);
- otherwise "inconclusive: budget-sensitive", with the paired change d_s^2 - d_s^1;
- and never on fewer than :data:`adt.study.evidence.MIN_SEEDS` seeds.

The A_rob of each run comes from its stored ``eval_a_rob.json`` (the cascade of
:func:`adt.evaluation.stored.evaluate_a_rob`); :func:`read_grids` reads them without loading
any model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adt.config.profiles import Profile
from adt.study.evidence import enough_evidence, stable_under_budget
from adt.study.stats import Comparison, Interval, paired_comparison, seed_interval
from adt.study.verdicts import Gate

__all__ = ["StudyGrids", "read_grids", "complete_seeds", "PairResult", "judge_pair",
           "read_spreads", "study_flat_gates"]

#: (budget factor, method) -> {seed: per-example A_rob correctness}
StudyGrids = dict[tuple[int, str], dict[int, np.ndarray]]


def read_grids(profile: Profile, methods: Sequence[str], seeds: Sequence[int],
               budgets: Sequence[int], runs_root: str | Path) -> StudyGrids:
    """Per-example A_rob of every study run that has a stored ``eval_a_rob.json`` (finished
    runs only: the study writes it after training)."""
    from adt.evaluation.stored import A_ROB_FILE
    from adt.evaluation.table import load_table
    from adt.training.runs import run_dir

    grids: StudyGrids = {}
    for factor in budgets:
        p = profile.with_budget(factor)
        for method in methods:
            found = {}
            for seed in seeds:
                path = run_dir(p, method, seed, runs_root) / A_ROB_FILE
                if path.is_file():
                    found[seed] = load_table(path).worst_case().numpy().astype(bool)
            grids[factor, method] = found
    return grids


def complete_seeds(grids: StudyGrids, methods: Sequence[str], budgets: Sequence[int]
                   ) -> list[int]:
    """The seeds on which every method has A_rob at every budget."""
    sets = [set(grids.get((b, m), {})) for b in budgets for m in methods]
    return sorted(set.intersection(*sets)) if sets else []


@dataclass(frozen=True)
class PairResult:
    """One headline pair: its comparisons at both budgets, the paired change, the per-seed
    effects at each budget, and the budget and evidence gates."""

    short: Comparison
    long: Comparison
    change: Interval | None
    per_seed: dict[int, dict[int, float]]  # budget -> seed -> effect (fraction)
    gates: tuple[Gate, ...]


def judge_pair(grids: StudyGrids, a: str, b: str, seeds: Sequence[int],
               budgets: tuple[int, int] = (1, 2), *, epochs: tuple[int, int] | None = None,
               model: str = "") -> PairResult:
    """A - B in A_rob on ``seeds`` at both ``budgets``: paired comparisons (direction: A
    higher, the paper's), the change between budgets, :func:`stable_under_budget` and
    :func:`enough_evidence`."""
    if not seeds:
        raise ValueError(f"no seed has both {a} and {b} at budgets {budgets}; run the study "
                         "first: python -m adt.budget_study")
    comparisons, per_seed = [], {}
    for factor in budgets:
        grid_a = np.stack([grids[factor, a][s] for s in seeds])
        grid_b = np.stack([grids[factor, b][s] for s in seeds])
        comparisons.append(paired_comparison(grid_a, grid_b, direction=1))
        per_seed[factor] = {s: float(grid_a[i].mean() - grid_b[i].mean())
                            for i, s in enumerate(seeds)}
    short, long = comparisons
    change = (seed_interval([per_seed[budgets[1]][s] - per_seed[budgets[0]][s] for s in seeds])
              if len(seeds) > 1 else None)
    names = tuple(f"{e} epochs" for e in epochs) if epochs else ("the recipe's budget",
                                                                  "twice it")
    gates = (stable_under_budget(short, long, change, model=model, budgets=names),
             enough_evidence(short, model=model))
    return PairResult(short, long, change, per_seed, gates)


def _read_records(profile: Profile, methods: Sequence[str], seeds: Sequence[int],
                  budgets: Sequence[int], runs_root: str | Path, filename: str
                  ) -> dict[str, list[dict[str, Any]]]:
    """The JSON file ``filename`` of every study run of ``methods`` (method -> records, each
    with its "seed" and "budget" added); a run without the file is missing from its list."""
    from adt.core.io import read_json
    from adt.training.runs import run_dir

    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        records = []
        for factor in budgets:
            for seed in seeds:
                path = run_dir(profile.with_budget(factor), method, seed, runs_root) / filename
                if path.is_file():
                    records.append({**read_json(path), "seed": seed, "budget": factor})
        out[method] = records
    return out


def read_spreads(profile: Profile, methods: Sequence[str], seeds: Sequence[int],
                 budgets: Sequence[int], runs_root: str | Path
                 ) -> dict[str, list[Mapping[str, Any]]]:
    """The stored ``spread.json`` of each ADT run of the study (method -> records), for the
    ``sample_spread`` gate; a run without one is missing from its list."""
    from adt.study.spread import SPREAD_FILE

    return dict(_read_records(profile, methods, seeds, budgets, runs_root, SPREAD_FILE))


def study_flat_gates(profile: Profile, methods: Sequence[str], seeds: Sequence[int],
                     budgets: Sequence[int], runs_root: str | Path,
                     epochs: Sequence[int] | None = None,
                     monitor_examples: int | None = None) -> dict[str, Gate]:
    """:func:`adt.study.gates.flat_last_epochs` on every study run of each method (its
    ``metrics.json``), as one gate per method: it passes when every run passes, and its value
    is the largest value it tests over the runs (``monitor_examples``: see
    :func:`~adt.study.gates.flat_last_epochs`)."""
    from adt.method.methods import LABELS
    from adt.study.gates import flat_last_epochs
    from adt.training.runs import METRICS

    names = dict(zip(budgets, epochs, strict=True)) if epochs else {}
    out = {}
    for method, records in _read_records(profile, methods, seeds, budgets, runs_root,
                                         METRICS).items():
        gates = [flat_last_epochs(r["history"], monitor_examples=monitor_examples)
                 for r in records]
        failed = [f"seed {r['seed']} at {names.get(r['budget'], r['budget'])} epochs"
                  for r, g in zip(records, gates, strict=True) if not g.passed]
        values = [g.value for g in gates if g.value is not None]
        expected = len(seeds) * len(budgets)
        passed = len(gates) == expected and not failed
        out[method] = Gate("flat_last_epochs", f"{LABELS[method]} (study runs)",
                           max(values) if values else None,
                           gates[0].threshold if gates else "", passed,
                           f"{len(gates) - len(failed)} of {expected} runs flat (seeds "
                           f"{list(seeds)} x {len(budgets)} budgets); the largest value shown"
                           + (f"; not flat: {', '.join(failed)}" if failed else ""),
                           "" if passed else "still changing or missing")
    return out
