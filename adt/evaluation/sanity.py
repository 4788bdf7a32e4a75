"""Checks against false robustness (Athalye et al. 2018; Carlini et al. 2019, "On
evaluating adversarial robustness", Sec. 5), as small plain functions.

Each check reads a table's per-example correctness matrix (no attack runs here) and
returns a :class:`CheckResult`:

(a) :func:`more_steps_help` and :func:`restarts_help`: more PGD steps, or random
    restarts, must not raise the accuracy;
(b) :func:`large_epsilon_breaks`: an attack with a large budget (default epsilon 0.5,
    enough to turn every image in [0, 1] into the same grey image) must drive the
    accuracy to about zero;
(c) :func:`white_beats_black`: white-box attacks must not be weaker than black-box ones
    (transfer, SPSA);
(d) :func:`autoattack_beats_pgd`: AutoAttack must not be weaker than PGD;
(e) :func:`score_based_only`: a score-based attack (Square, SPSA) must not break more than
    a few examples that every gradient-based attack missed: those examples are the
    signature of gradient masking, and the check names them;
(f) :func:`pgd_close_to_autoattack`: PGD-many must not be above AutoAttack by more than
    ``max_autoattack_gap`` (5 points): otherwise the PGD columns are unreliable for the
    model.

Comparisons of two attacks on the same examples use a one-sided McNemar test
(:func:`significantly_higher`): the rise is flagged when (up - down) > z * sqrt(up +
down) and (up - down) / n > tolerance, with up (down) the examples robust under the
supposedly stronger attack and not (only) under the weaker one; so a few examples of
noise never trip a check.

:class:`SanityChecks` holds the settings and names the extra runs the checks need
(:meth:`SanityChecks.specs`); :func:`run_checks` runs them all; :func:`report` warns
(:class:`GradientMaskingWarning`) or raises (:class:`GradientMaskingError`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from adt.evaluation.checks import CheckResult, SanityChecks
from adt.evaluation.table import RobustnessTable

__all__ = ["GradientMaskingWarning", "GradientMaskingError",
           "significantly_higher", "more_steps_help", "restarts_help", "large_epsilon_breaks",
           "white_beats_black", "autoattack_beats_pgd", "score_based_only",
           "pgd_close_to_autoattack", "run_checks", "pooled_checks", "POOLED", "report"]

#: The checks whose per-seed rule (a fixed threshold on 200 images, no noise band) moves with
#: the last bits of a CPU: :func:`pooled_checks` decides them over every seed's images, at
#: the one-sided 95 % confidence bound.
POOLED = ("pgd_vs_autoattack", "score_only")


class GradientMaskingWarning(UserWarning):
    """A sanity check of the robustness table failed: the robustness may be false."""


class GradientMaskingError(RuntimeError):
    """Raised instead of the warning with ``strict=True``."""


def _result(name: str, failed: bool | None, message: str, **values: Any) -> CheckResult:
    status = "skipped" if failed is None else "failed" if failed else "passed"
    return CheckResult(name, status, message, values)


def significantly_higher(stronger: torch.Tensor, weaker: torch.Tensor, checks: SanityChecks
                         ) -> tuple[bool, dict[str, Any]]:
    """Whether the accuracy under ``stronger`` (per-example correctness) is significantly
    above that under ``weaker`` on the same examples (one-sided McNemar, see module doc)."""
    up = int((stronger & ~weaker).sum())
    down = int((~stronger & weaker).sum())
    n = len(stronger)
    rise = (up - down) / n
    flagged = (up - down) > checks.z * math.sqrt(up + down) and rise > checks.tolerance
    return flagged, {"accuracy": float(stronger.float().mean()),
                     "reference_accuracy": float(weaker.float().mean()),
                     "rise": rise, "n": n, "up": up, "down": down}


def _no_rise(table: RobustnessTable, checks: SanityChecks, roles: dict[str, str], role: str,
             what: str) -> CheckResult:
    flagged, values = significantly_higher(table.row(roles[role]), table.row(roles["few"]),
                                            checks)
    return _result(f"pgd_{role}", flagged, f"{roles[role]} vs {roles['few']}: accuracy must not "
                   f"rise with {what}", **values)


def more_steps_help(table: RobustnessTable, checks: SanityChecks,
                    roles: dict[str, str]) -> CheckResult:
    """(a) PGD-many must not be weaker than PGD-few."""
    return _no_rise(table, checks, roles, "many", "more steps")


def restarts_help(table: RobustnessTable, checks: SanityChecks,
                  roles: dict[str, str]) -> CheckResult:
    """(a) PGD-few with restarts must not be weaker than PGD-few."""
    return _no_rise(table, checks, roles, "restarts", "random restarts")


def large_epsilon_breaks(table: RobustnessTable, checks: SanityChecks,
                         roles: dict[str, str]) -> CheckResult:
    """(b) PGD at a large epsilon must leave about no accuracy."""
    large = table.accuracy_of(roles["large"])
    return _result("large_epsilon", large > checks.max_large_accuracy,
                   f"{roles['large']}: accuracy must fall to about 0 (<= "
                   f"{checks.max_large_accuracy:g})", accuracy=large)


def white_beats_black(table: RobustnessTable, checks: SanityChecks) -> list[CheckResult]:
    """(c) The worst case over the white-box rows must not be weaker than any black-box row."""
    black = [n for n, k in zip(table.names, table.kinds, strict=True) if k == "black"]
    if not black:
        return [_result("white_vs_black", None, "no black-box rows in the table")]
    worst = table.worst_case()
    out = []
    for name in black:
        row = table.row(name)
        flagged, values = significantly_higher(worst[:len(row)], row, checks)
        out.append(_result(f"white_vs_black[{name}]", flagged, "worst-case white-box accuracy "
                           f"must not exceed the black-box {name}", **values))
    return out


def autoattack_beats_pgd(table: RobustnessTable, checks: SanityChecks,
                         roles: dict[str, str]) -> list[CheckResult]:
    """(d) AutoAttack must not be weaker than PGD-few."""
    auto = [s["name"] for s in table.specs if s["attack"] == "autoattack"]
    if not auto:
        return [_result("autoattack_vs_pgd", None, "no AutoAttack row in the table")]
    out = []
    for name in auto:
        flagged, values = significantly_higher(table.row(name), table.row(roles["few"]), checks)
        out.append(_result(f"autoattack_vs_pgd[{name}]", flagged,
                           f"{name} must not be weaker than {roles['few']}", **values))
    return out


def score_based_only(table: RobustnessTable, checks: SanityChecks) -> list[CheckResult]:
    """(e) Examples broken by a score-based attack (Square inside AutoAttack, SPSA) but
    correct under the clean input and every gradient-based white-box attack: more than
    ``max_score_only`` of the examples flags the model, and the result names them."""
    specs = table.specs
    gradient = [s["name"] for s in specs if s["kind"] in ("clean", "white")
                and not s.get("score_based")]
    scored = [s["name"] for s in specs if s.get("score_based") and s["kind"] != "sanity"]
    if not scored:
        return [_result("score_only", None, "no score-based attack in the table")]
    survivors = table.worst_case(gradient)
    out = []
    for name in scored:
        row = table.row(name)
        broken = (~row & survivors[:len(row)]).nonzero().squeeze(1).tolist()
        out.append(_result(f"score_only[{name}]", len(broken) > checks.max_score_only * len(row),
                           f"{name} must not break examples that every gradient attack "
                           f"missed (at most {checks.max_score_only:.0%})",
                           count=len(broken), n=len(row), examples=broken))
    return out


def pgd_close_to_autoattack(table: RobustnessTable, checks: SanityChecks,
                            roles: dict[str, str]) -> list[CheckResult]:
    """(f) PGD-many must not overstate the robustness found by AutoAttack by more than
    ``max_autoattack_gap``; a failure marks the PGD columns unreliable for this model."""
    cascades = _cascades(table)
    if not cascades:
        return [_result("pgd_vs_autoattack", None, "no AutoAttack cascade in the table")]
    pgd_accuracy = table.accuracy_of(roles["many"])
    out = []
    for name in cascades:
        gap = pgd_accuracy - table.accuracy_of(name)
        out.append(_result(f"pgd_vs_autoattack[{name}]", gap > checks.max_autoattack_gap,
                           f"{roles['many']} must not be above {name} by more than "
                           f"{checks.max_autoattack_gap:.0%} (else the PGD columns are "
                           "unreliable for this model)", gap=gap, pgd=pgd_accuracy,
                           autoattack=table.accuracy_of(name)))
    return out


def run_checks(table: RobustnessTable) -> list[CheckResult]:
    """Every check, (a)-(d), on a table's correctness matrix (none when the table was made
    without checks)."""
    checks, roles = table.sanity, table.roles
    if checks is None:
        return []
    return [more_steps_help(table, checks, roles), restarts_help(table, checks, roles),
            large_epsilon_breaks(table, checks, roles), *white_beats_black(table, checks),
            *autoattack_beats_pgd(table, checks, roles), *score_based_only(table, checks),
            *pgd_close_to_autoattack(table, checks, roles)]


def _cascades(table: RobustnessTable) -> list[str]:
    return [s["name"] for s in table.specs if s.get("survivors_of") and s["kind"] == "white"]


def pooled_checks(tables: Sequence[RobustnessTable], level: float = 0.95) -> list[CheckResult]:
    """A model's checks over all its seeds (``tables``): the per-seed results of every check
    with a noise band (the McNemar checks, (a)-(d)), and (e) and (f) decided once on every
    seed's images together, at the one-sided ``level`` confidence bound, so that a flag
    must survive the images' sampling noise (a few images, or a CPU's last bits, cannot raise
    or drop it):

    - (f) PGD-many is above the AutoAttack cascade by more than ``max_autoattack_gap`` at the
      *lower* bound of the paired gap: (up - down - z sqrt(up + down)) / n, up (down) the
      images PGD leaves correct and AutoAttack breaks (the reverse);
    - (e) score-based-only breaks exceed ``max_score_only`` of the images at the lower
      Clopper-Pearson bound of their rate.

    Each pooled result's values hold the point estimate, the bound and the threshold."""
    from scipy.stats import beta, norm

    tables = [t for t in tables if t.sanity is not None]
    if not tables:
        return []
    out = [c for t in tables for c in t.checks if c.name.split("[", 1)[0] not in POOLED]
    checks, z = tables[0].sanity, float(norm.ppf(level))
    for name in _cascades(tables[0]):
        pgd_rows = torch.cat([t.row(t.roles["many"]) for t in tables])
        auto_rows = torch.cat([t.row(name) for t in tables])
        up, down = int((pgd_rows & ~auto_rows).sum()), int((~pgd_rows & auto_rows).sum())
        n = len(pgd_rows)
        gap, lower = (up - down) / n, (up - down - z * math.sqrt(up + down)) / n
        out.append(_result(f"pgd_vs_autoattack[{name}]", lower > checks.max_autoattack_gap,
                           f"PGD-many must not be above {name} by more than "
                           f"{checks.max_autoattack_gap:.0%} at the {level:.0%} lower bound, "
                           f"over {len(tables)} seed(s)", gap=gap, lower_bound=lower, n=n,
                           threshold=checks.max_autoattack_gap))
    scored = dict.fromkeys(s["name"] for t in tables for s in t.specs
                           if s.get("score_based") and s["kind"] != "sanity")
    gradient = [s["name"] for s in tables[0].specs if s["kind"] in ("clean", "white")
                and not s.get("score_based")]
    for name in scored:  # on the seeds whose table has the row (SPSA: the first seed's)
        having = [t for t in tables if name in t.names]
        rows = [(t.row(name), t.worst_case(gradient)) for t in having]
        count = sum(int((~row & alive[:len(row)]).sum()) for row, alive in rows)
        n = sum(len(row) for row, _ in rows)
        lower = float(beta.ppf(1 - level, count, n - count + 1)) if count else 0.0
        out.append(_result(f"score_only[{name}]", lower > checks.max_score_only,
                           f"{name} must not break more than {checks.max_score_only:.0%} of the "
                           f"images every gradient attack missed, at the {level:.0%} lower "
                           f"bound, over {len(having)} seed(s)", count=count, n=n,
                           rate=count / n, lower_bound=lower, threshold=checks.max_score_only))
    return out


def report(table: RobustnessTable, strict: bool, stacklevel: int = 3) -> None:
    """Warn (or raise, strict) when a check failed."""
    failed = [c for c in table.checks if c.failed]
    if not failed:
        return
    message = ("possible gradient masking / false robustness: sanity checks failed: "
               + "; ".join(map(str, failed)) + ". Do not report these accuracies as robustness.")
    if strict:
        raise GradientMaskingError(message)
    warnings.warn(message, GradientMaskingWarning, stacklevel=stacklevel)
