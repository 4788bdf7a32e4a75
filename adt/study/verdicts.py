"""The verdict layer of the validity gates: a gate's outcome (:class:`Gate`), the reported
verdicts, and :func:`gated_verdict`, which turns a statistical verdict of :mod:`adt.study.stats`
and the gates of its claim into the verdict that is reported (the order of precedence is in
:mod:`adt.study.gates`' docstring); :func:`gates_table` for the chapters' tables. The gates
themselves, and their thresholds, are :mod:`adt.study.gates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adt.study.stats import VERDICTS

__all__ = ["Gate", "SUPPORTED", "NOT_REPRODUCED", "INCONCLUSIVE", "NOT_TESTABLE",
           "BUDGET_SENSITIVE", "GATED_VERDICTS", "GATE_KINDS", "format_value", "gated_verdict",
           "verdict_category", "gates_table", "gates_summary", "at_most", "at_least", "SLACK"]

# --- the reported verdicts ---------------------------------------------------------------

SUPPORTED = "supported"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
#: The prefix of every "not testable here: ..." verdict.
NOT_TESTABLE = "not testable here"
BUDGET_SENSITIVE = f"{INCONCLUSIVE}: budget-sensitive"
#: The four categories a gated verdict falls in (:func:`verdict_category`), for counting.
GATED_VERDICTS = (SUPPORTED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)
#: The kind of each gate, by name (the part before "[" for names such as
#: ``reliable_column[PGD-20]``); :func:`gated_verdict` reads it. Unknown names count as
#: validity gates.
GATE_KINDS = {"flat_last_epochs": "validity", "credible_baseline": "validity",
              "credible_trades": "validity", "reliable_column": "validity",
              "working_generator": "validity",
              "sample_spread": "validity", "a_rob_error": "validity",
              "release_inner_settings": "validity",
              "stable_under_budget": "budget", "trained_out": "budget",
              "spread_finding": "finding",
              "trial_complete": "evidence",
              "enough_evidence": "evidence", "distinct_models": "independence"}


@dataclass(frozen=True)
class Gate:
    """The outcome of one gate: its name, the model (a method label, or a pair such as
    "ADT_EXP vs AT"), the measured value, the threshold as text (e.g. ">= 0.75"), whether it
    passed, and what was measured on what. ``reason`` is a failed gate's short reason, the
    "<why>" of "inconclusive: <why>" for evidence gates."""

    gate: str
    model: str
    value: float | None
    threshold: str
    passed: bool
    detail: str
    reason: str = ""

    @property
    def kind(self) -> str:
        """"validity", "budget", "evidence" or "independence" (:data:`GATE_KINDS`)."""
        return GATE_KINDS.get(self.gate.split("[", 1)[0], "validity")

    def to_row(self) -> list[str]:
        """gate, model, value, threshold, pass/fail, detail: a row of :func:`gates_table`."""
        return [self.gate, self.model or "-", format_value(self.value), self.threshold,
                "pass" if self.passed else "FAIL", self.detail]


def format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


# --- verdicts -----------------------------------------------------------------------------------

def gated_verdict(verdict: str, gates: Sequence[Gate],
                  outcomes: Mapping[str, str] | None = None) -> str:
    """The reported verdict of a claim from its statistical ``verdict`` (one of
    :data:`adt.study.stats.VERDICTS`) and its gates, in this order of precedence: a failed
    validity gate (the first) -> "not testable here: <gate> (<model>) = <value> (needs
    <threshold>)"; a failed budget gate -> "inconclusive: <why>" ("budget-sensitive", "not
    trained out"); a failed
    evidence gate (the first) -> "inconclusive: <why>"; else the verdict, "contradicted"
    reported as "not reproduced" and "equivalent" (:func:`adt.study.stats.margin_verdict`) as
    "not reproduced: no difference as large as the margin", or as ``outcomes`` spells them
    (the fair trial: "not reproduced: the baseline is more robust"). Independence gates
    change nothing."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict={verdict!r}; allowed: {', '.join(VERDICTS)}")
    failed = [g for g in gates if not g.passed]
    for g in failed:
        if g.kind == "validity":
            model = f" ({g.model})" if g.model else ""
            return (f"{NOT_TESTABLE}: {g.gate}{model} = {format_value(g.value)} "
                    f"(needs {g.threshold})")
    for g in failed:
        if g.kind == "budget":
            return f"{INCONCLUSIVE}: {g.reason}" if g.reason else BUDGET_SENSITIVE
    for g in failed:
        if g.kind == "evidence":
            return f"{INCONCLUSIVE}: {g.reason or g.detail}"
    spelled = {"contradicted": NOT_REPRODUCED,
               "equivalent": f"{NOT_REPRODUCED}: no difference as large as the margin",
               **(outcomes or {})}
    return spelled.get(verdict, verdict)


def verdict_category(verdict: str) -> str:
    """The category of a reported verdict, one of :data:`GATED_VERDICTS` (e.g.
    "inconclusive: one seed" -> "inconclusive"), for counting verdicts."""
    for category in GATED_VERDICTS:
        if verdict == category or verdict.startswith(category + ":"):
            return category
    raise ValueError(f"{verdict!r} is not a verdict of gated_verdict; categories: "
                     f"{', '.join(GATED_VERDICTS)}")


def gates_table(gates: Sequence[Gate]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a model x gate table (gate, model, value, threshold,
    pass/fail, detail), e.g. for :func:`adt.core.io.markdown_table`."""
    return (["gate", "model", "value", "threshold", "result", "detail"],
            [g.to_row() for g in gates])


def gates_summary(gates: Sequence[Gate]) -> tuple[list[str], list[list[str]]]:
    """One row per gate name (in order of first appearance): its threshold, how many of its
    models, seeds or pairs pass, and the failing ones with their values; the short companion
    of :func:`gates_table`."""
    by_name: dict[str, list[Gate]] = {}
    for g in gates:
        by_name.setdefault(g.gate, []).append(g)
    rows = [[name, " / ".join(dict.fromkeys(g.threshold for g in group)),
             f"{sum(g.passed for g in group)} of {len(group)}",
             "; ".join(f"{g.model} ({format_value(g.value)})" for g in group if not g.passed)
             or "-"] for name, group in by_name.items()]
    return ["gate", "threshold", "pass", "failing (value)"], rows


#: The rounding slack of every comparison with a threshold: a value exactly at a threshold
#: is on the side the threshold's text says.
SLACK = 1e-9


def at_most(value: float, limit: float) -> bool:
    return value <= limit + SLACK


def at_least(value: float, limit: float) -> bool:
    return value >= limit - SLACK
