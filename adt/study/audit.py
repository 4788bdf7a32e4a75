"""The gate audit: for every gate, when it was fixed, whether the results it gates had been
seen then, what it tests, which way it can withhold, and each headline verdict its firing
changed (from what to what).

The history (commits, what was seen) is a record, ``benchmarks/gate-audit.json``, written
from the commit history; the verdicts a gate changes are computed from the gates as chapter 6
applies them (:func:`changed_verdicts`), so they follow the committed results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adt.config.provenance import REPO_ROOT
from adt.study.verdicts import Gate, gated_verdict

__all__ = ["AUDIT_RECORD", "load_audit", "history_rows", "changed_verdicts"]

AUDIT_RECORD = REPO_ROOT / "benchmarks" / "gate-audit.json"

#: the record's "seen" values -> whether the gated results were known when the rule was set
_SEEN = {"before": "yes", "partly": "partly", "after": "no", "n/a": "n/a"}


def load_audit(path: str | Path = AUDIT_RECORD) -> list[dict[str, Any]]:
    """The audit record's gates (a list of dicts, one per gate)."""
    from adt.core.io import read_json

    return list(read_json(path)["records"])


def _seen(changes: Sequence[Mapping[str, Any]]) -> str:
    """One cell: were the gated results seen when the rule (or a later change) was set?"""
    cells = [f"{c['commit']}: {_SEEN.get(str(c.get('seen')), c.get('seen'))}" for c in changes
             if str(c.get("seen")) != "n/a"]
    return "; ".join(cells) or "n/a"


def history_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per active gate: name, kind, the commit that fixed it (and later changes), whether the
    results it gates had been seen at each, whether it tests the method itself, and which
    verdicts it can withhold."""
    rows = []
    for r in records:
        if str(r.get("status", "active")).startswith("removed"):
            continue
        changes = r.get("fixed_in", [])
        first = changes[0] if changes else {}
        later = ", ".join(c["commit"] for c in changes[1:]) or "-"
        method = r.get("tests_method_itself", {})
        withhold = r.get("can_withhold", {})
        rows.append([r["gate"], r.get("kind", ""),
                     f"{first.get('commit', '?')} ({first.get('date', '?')})", later,
                     _seen(changes),
                     "yes" if (method.get("value") if isinstance(method, Mapping) else method)
                     else "no",
                     ", ".join(withhold.get("directions", [])) if isinstance(withhold, Mapping)
                     else str(withhold)])
    return rows


def changed_verdicts(judged: Mapping[str, tuple[str, Sequence[Gate], Mapping[str, str] | None]]
                     ) -> list[list[str]]:
    """Per failed gate of each claim (``judged``: claim -> (statistical verdict, its gates,
    outcome spellings)): the gate, the claim, the verdict before gates, the reported verdict,
    and the verdict with this gate alone left out, which shows a gate hidden behind another
    that fails too."""
    rows = []
    for claim, (statistical, gates, outcomes) in judged.items():
        before = gated_verdict(statistical, [], outcomes)
        after = gated_verdict(statistical, gates, outcomes)
        for gate in gates:
            if gate.passed:
                continue
            without = gated_verdict(statistical, [g for g in gates if g is not gate], outcomes)
            rows.append([gate.gate, gate.model or "-", claim, before, after, without])
    return rows
