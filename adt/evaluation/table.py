"""The robustness table: per-example correctness under every attack, A_rob, and lookups.

``correct[i, j]`` says whether example j is classified correctly under attack i, so
every number is recomputed from the matrix, never stored apart:

* accuracy of each attack = mean of its row;
* A_rob (the paper's Table 1) = accuracy against the per-example worst case over the
  clean input and every white-box attack: an example counts robust only if it is
  classified correctly under all of them. Black-box attacks (transfer, SPSA) are
  reported in their own rows and do not enter A_rob.

Callers find rows by attack and source (:meth:`RobustnessTable.lookup`), never by
rebuilding a row's name. A table is saved as ``eval.json`` next to a run's checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adt.core.io import read_json, write_json
from adt.evaluation.checks import CheckResult, SanityChecks

__all__ = ["RobustnessTable", "load_table", "EVAL_FILE"]

EVAL_FILE = "eval.json"
_FORMAT = 1


def _crafting_attack(spec: Mapping[str, Any]) -> str | None:
    """The attack a row runs: for a transfer row, the one it crafts with on its source."""
    if spec["attack"] == "transfer":
        return spec["settings"].get("attack")
    return spec["attack"]


@dataclass
class RobustnessTable:
    """Rows of attacks, their per-example correctness, and the sanity checks.

    ``specs`` are the rows' :meth:`~adt.attack.spec.AttackSpec.describe` dicts; only the
    first ``n_evaluated[i]`` entries of row i are measured (black-box rows may cover a
    prefix), the rest are False. ``sanity`` and ``roles`` are the checks' settings and the
    row that plays each of their roles; ``checks`` their results.
    """

    specs: list[dict[str, Any]]
    correct: torch.Tensor
    n_evaluated: list[int]
    seconds: list[float]
    sanity: SanityChecks | None = None
    roles: dict[str, str] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.specs]

    @property
    def kinds(self) -> list[str]:
        return [s["kind"] for s in self.specs]

    @property
    def n_examples(self) -> int:
        return self.correct.shape[1]

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no row {name!r} in the table; rows: {', '.join(self.names)}")
        return self.names.index(name)

    def names_of(self, *kinds: str) -> list[str]:
        """The rows of the given kinds, in table order (e.g. ``names_of("clean", "white")``)."""
        return [n for n, k in zip(self.names, self.kinds, strict=True) if k in kinds]

    def lookup(self, attack: str, *, source: str | None = None, **settings: Any) -> str:
        """The name of the one reported row that runs ``attack`` (a function name such as
        "pgd", "mim", "spsa"; for a transfer row the attack crafted on the source) from
        ``source`` (None: the evaluated model itself) with the given settings, e.g.
        ``lookup("pgd", steps=20)`` or ``lookup("mim", source="AT (PGD)")``."""
        found = [s["name"] for s in self.specs
                 if s["kind"] != "sanity" and _crafting_attack(s) == attack
                 and s["source"] == source
                 and all(s["settings"].get(k) == v for k, v in settings.items())]
        if len(found) != 1:
            raise KeyError(f"{len(found)} rows run {attack!r} from {source!r} with {settings}: "
                           f"{found or 'none'}; rows: {', '.join(self.names)}")
        return found[0]

    def row(self, name: str) -> torch.Tensor:
        """Per-example correctness under attack ``name`` (its evaluated examples only)."""
        i = self._index(name)
        return self.correct[i, :self.n_evaluated[i]]

    def accuracy_of(self, name: str) -> float:
        row = self.row(name)
        return int(row.sum()) / len(row)

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracy per attack, sanity-check runs left out."""
        return {n: self.accuracy_of(n) for n, k in zip(self.names, self.kinds, strict=True)
                if k != "sanity"}

    def worst_case(self, names: Sequence[str] | None = None) -> torch.Tensor:
        """Per example: correct under every attack in ``names`` (default: clean and every
        white-box row, i.e. the examples counted by A_rob)."""
        if names is None:
            names = self.names_of("clean", "white")
        rows = [self._index(n) for n in names]
        if not rows:
            raise ValueError("worst_case over no attacks; name at least one row")
        if any(self.n_evaluated[i] != self.n_examples for i in rows):
            raise ValueError("worst_case needs rows covering every example; black-box rows "
                             "on a subset can be compared with row(name) instead")
        return self.correct[rows].all(0)

    @property
    def robust_accuracy(self) -> float:
        """A_rob: accuracy against the per-example worst case over clean + white-box rows."""
        worst = self.worst_case()
        return int(worst.sum()) / len(worst)

    @property
    def flags(self) -> list[str]:
        return [c.name for c in self.checks if c.failed]

    @property
    def gradient_masking_suspected(self) -> bool:
        return bool(self.flags)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per reported attack (sanity runs left out), then A_rob."""
        out = [{"attack": n, "kind": k, "accuracy": self.accuracy_of(n),
                "n_examples": self.n_evaluated[i], "seconds": self.seconds[i]}
               for i, (n, k) in enumerate(zip(self.names, self.kinds, strict=True))
               if k != "sanity"]
        return out + [{"attack": "A_rob", "kind": "worst case", "accuracy": self.robust_accuracy,
                       "n_examples": self.n_examples, "seconds": sum(self.seconds)}]

    def to_markdown(self) -> str:
        lines = ["| attack | kind | examples | accuracy (%) | time (s) |",
                 "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['attack']} | {r['kind']} | {r['n_examples']} | "
                  f"{100 * r['accuracy']:.2f} | {r['seconds']:.1f} |" for r in self.rows()]
        if self.flags:
            lines.append(f"\n**Gradient masking suspected**: failed checks {', '.join(self.flags)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "epsilon": self.meta.get("epsilon"),
            "n_examples": self.n_examples,
            "accuracy": self.accuracy,
            "robust_accuracy": self.robust_accuracy,
            "gradient_masking_suspected": self.gradient_masking_suspected,
            "flags": self.flags,
            "checks": [c.to_dict() for c in self.checks],
            "attacks": [{**s, "n_evaluated": n, "seconds": t} for s, n, t
                        in zip(self.specs, self.n_evaluated, self.seconds, strict=True)],
            "correct": {s["name"]: "".join("1" if c else "0" for c in row[:n].tolist())
                        for s, row, n in zip(self.specs, self.correct, self.n_evaluated,
                                             strict=True)},
            "sanity": None if self.sanity is None else {"settings": self.sanity.to_dict(),
                                                        "rows": self.roles},
            "timing": {"total_s": sum(self.seconds),
                       "per_attack_s": dict(zip(self.names, self.seconds, strict=True))},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, blob: Mapping[str, Any]) -> RobustnessTable:
        if blob.get("format") != _FORMAT:
            raise ValueError(f"not a robustness table of this artifact (format "
                             f"{blob.get('format')!r}); evaluate again to rewrite it")
        specs = [{k: v for k, v in a.items() if k not in ("n_evaluated", "seconds")}
                 for a in blob["attacks"]]
        correct = torch.zeros(len(specs), blob["n_examples"], dtype=torch.bool)
        for i, spec in enumerate(specs):
            bits = blob["correct"][spec["name"]]
            correct[i, :len(bits)] = torch.tensor([b == "1" for b in bits], dtype=torch.bool)
        sanity = blob.get("sanity")
        return cls(specs, correct, [a["n_evaluated"] for a in blob["attacks"]],
                   [a["seconds"] for a in blob["attacks"]],
                   None if sanity is None else SanityChecks.from_dict(sanity["settings"]),
                   {} if sanity is None else dict(sanity["rows"]),
                   [CheckResult.from_dict(c) for c in blob.get("checks", [])],
                   dict(blob.get("meta", {})))

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically)."""
        return write_json(self.to_dict(), path)


def load_table(path: str | Path) -> RobustnessTable:
    """A table written by :meth:`RobustnessTable.save`; ``path`` may be a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no robustness table at {path}; evaluate the run first: "
                                "adt.evaluate_run(run)")
    fix = "delete it; adt.evaluate_run(run) computes it again"
    blob = read_json(path, fix)
    try:
        return RobustnessTable.from_dict(blob)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a robustness table of this artifact "
                         f"({type(err).__name__}: {err}); {fix}") from err
