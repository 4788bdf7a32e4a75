"""From robustness tables to claims: seed-aggregated cells, paired method comparisons, and
the claims ledger written to ``figures/CLAIMS.md``.

The statistics are :mod:`adt.study.stats`'s; this module only says which per-example values
are compared (the stored per-example correctness of :class:`~adt.evaluation.table.RobustnessTable`,
paired by seed and test image) and how the results are written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adt.core.io import markdown_table
from adt.evaluation.table import RobustnessTable
from adt.study.stats import Comparison, Interval, paired_comparison, seed_summary
from adt.study.verdicts import GATED_VERDICTS, verdict_category

__all__ = ["A_ROB", "curvature_comparison", "format_log_ratio", "per_example",
           "white_box_columns", "format_cell", "seed_rows", "compare_methods",
           "equivalence_verdict", "Claim", "format_effect", "claims_markdown"]

#: The column name of the per-example worst case over clean and white-box rows.
A_ROB = "A_rob"


def per_example(tables: Sequence[RobustnessTable], column: str) -> np.ndarray:
    """Per-example correctness under ``column`` (a row name, or :data:`A_ROB`), one row per
    table (seed): shape (seeds, examples)."""
    rows = [t.worst_case() if column == A_ROB else t.row(column) for t in tables]
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"column {column!r} covers {sorted(lengths)} examples in different "
                         "tables; evaluate every seed on the same test images")
    return np.stack([r.numpy() for r in rows]).astype(bool)


def _by_seed(tables: Sequence[RobustnessTable]) -> dict[int, RobustnessTable]:
    return {int(t.meta.get("seed", i)): t for i, t in enumerate(tables)}


def white_box_columns(table: RobustnessTable) -> list[str]:
    """Clean, every white-box row, then A_rob: the columns of the paper's Table 1."""
    return [*table.names_of("clean", "white"), A_ROB]


def format_cell(summary: Mapping[str, float]) -> str:
    """``mean ± seed std [95 % interval]`` in percent (no ± for one seed)."""
    text = f"{100 * summary['mean']:.1f}"
    if summary["seeds"] > 1:
        text += f" ± {100 * summary['std']:.1f}"
    return text + f" [{100 * summary['low']:.1f}, {100 * summary['high']:.1f}]"


def _within_0_1(summary: dict[str, float]) -> dict[str, float]:
    """An accuracy's interval cut at the bounds an accuracy can take (a t-interval over few
    seeds can reach beyond them)."""
    return {**summary, "low": max(0.0, summary["low"]), "high": min(1.0, summary["high"])}


def seed_rows(tables: Mapping[str, Sequence[RobustnessTable]], columns: Sequence[str],
              labels: Mapping[str, str] | None = None
              ) -> tuple[list[list[str]], dict[str, dict[str, dict[str, float]]]]:
    """One row per method: its label, then :func:`format_cell` of each column over its
    seeds (accuracies: the interval is cut at 0 and 1); also the summaries themselves
    (method -> column -> :func:`~adt.study.stats.seed_summary`)."""
    rows, summaries = [], {}
    for method, method_tables in tables.items():
        summaries[method] = {c: _within_0_1(seed_summary(per_example(method_tables, c)))
                             for c in columns}
        rows.append([(labels or {}).get(method, method),
                     *(format_cell(summaries[method][c]) for c in columns)])
    return rows, summaries


def compare_methods(a: Sequence[RobustnessTable], b: Sequence[RobustnessTable], column: str,
                    *, direction: int = 1) -> Comparison:
    """Paired comparison of accuracy under ``column``: method A's tables ``a`` against
    B's ``b`` on the seeds both have, image by image (difference of accuracies)."""
    by_a, by_b = _by_seed(a), _by_seed(b)
    seeds = sorted(set(by_a) & set(by_b))
    if not seeds:
        raise ValueError(f"the two methods share no seed (A: {sorted(by_a)}, B: "
                         f"{sorted(by_b)}); a paired comparison needs the same seeds")
    return paired_comparison(per_example([by_a[s] for s in seeds], column),
                             per_example([by_b[s] for s in seeds], column), direction=direction)


def equivalence_verdict(interval: Interval, margin: float, *, null: float = 0.0) -> str:
    """For claims of *similarity* ("about as strong as"): "supported" when the whole 95 %
    interval lies within ``null +- margin``, "contradicted" when it lies wholly outside,
    else "inconclusive" (two one-sided tests, Schuirmann 1987)."""
    if margin <= 0:
        raise ValueError(f"margin={margin!r} must be positive, e.g. 0.05 for 5 points")
    if null - margin < interval.low and interval.high < null + margin:
        return "supported"
    if interval.low >= null + margin or interval.high <= null - margin:
        return "contradicted"
    return "inconclusive"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, tested: what it says, the evidence, the effect and verdict."""

    claim: str  # the paper's statement, in our words
    test: str  # what is compared, on which seeds and images
    effect: str  # e.g. "+3.1 points [0.4, 5.8]"
    verdict: str
    evidence: str  # the table or figure behind it
    departures: str = ""  # ledger rows of REPRODUCTION.md that could explain a gap

    def row(self) -> list[str]:
        return [self.claim, self.test, self.effect, f"**{self.verdict}**", self.evidence,
                self.departures or "-"]


def format_effect(effect: Interval, *, scale: float = 100.0, unit: str = " points",
                  digits: int = 1) -> str:
    """``+3.1 points [0.4, 5.8]``: an effect and its interval, scaled."""
    def f(v: float) -> str:
        return f"{scale * v:+.{digits}f}"
    return f"{f(effect.estimate)}{unit} [{f(effect.low)}, {f(effect.high)}]"


def claims_markdown(claims: Sequence[Claim], *, title: str, preamble: str,
                    provenance: Mapping[str, Any], sections: Sequence[str] = ()) -> str:
    """The claims ledger as Markdown: a table of every claim (verdicts as
    :func:`adt.study.gates.gated_verdict` reports them, counted by category), then ``sections``
    (e.g. the gate table), then where it came from."""
    header = ["claim (paper)", "test", "effect [95% interval]", "verdict", "evidence",
              "departures that could explain a gap"]
    counts = {v: sum(verdict_category(c.verdict) == v for c in claims) for v in GATED_VERDICTS}
    lines = [f"# {title}", "", preamble, "",
             "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
             markdown_table(header, [c.row() for c in claims]), ""]
    for section in sections:
        lines += [section, ""]
    lines.append("Produced by " + ", ".join(f"{k}: {v}" for k, v in provenance.items()) + ".")
    return "\n".join(lines) + "\n"


def curvature_comparison(a: Any, b: Any) -> Comparison:
    """The curvature claim's statistic (Fig. 2): per image, log10 of model a's dominant
    input-Hessian eigenvalue minus model b's, averaged (the log10 of the geometric-mean
    ratio a / b), with its paired bootstrap interval; below 0: a is flatter, the paper's
    direction. The eigenvalues are heavy-tailed, so a mean of raw values rests on a few
    images; the mean of their logs does not. Values at or below 0 count as 1e-8."""
    log_a, log_b = (np.log10(np.clip(np.asarray(v, dtype=float), 1e-8, None)) for v in (a, b))
    return paired_comparison(log_a, log_b, direction=-1)


def format_log_ratio(effect: Interval) -> str:
    """A :func:`curvature_comparison` effect as a ratio: ``x0.83 [0.70, 0.98]``."""
    return f"x{10 ** effect.estimate:.2f} [{10 ** effect.low:.2f}, {10 ** effect.high:.2f}]"
