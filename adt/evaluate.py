"""The robustness table: accuracy per attack, A_rob, and checks against false robustness.

:func:`robustness_table` runs a list of :class:`AttackSpec` on the first ``n`` test
examples (eval mode, batched, on the model's device, bf16 autocast on CUDA) and keeps
the per-example correctness matrix (attacks x examples), so every number can be
recomputed without attacking again:

* accuracy of each attack = mean of its row;
* A_rob (the paper's Table 1) = accuracy against the per-example worst case over the
  clean input and every white-box attack: an example counts robust only if it is
  classified correctly under all of them. Black-box attacks (transfer, SPSA) are
  reported in their own rows and do not enter A_rob.

Sanity checks (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
robustness", Sec. 5) run with every table; a failed one is a warning
(:class:`GradientMaskingWarning`), a ``flags`` entry and ``gradient_masking_suspected``
in the table, or an error with ``strict=True``:

(a) more PGD steps, or random restarts, must not raise the accuracy;
(b) an attack with a large budget (default epsilon 0.5, enough to turn every image in
    [0, 1] into the same grey image) must drive the accuracy to about zero;
(c) white-box attacks must not be weaker than black-box ones (transfer, SPSA);
(d) AutoAttack must not be weaker than PGD.

Comparisons of two attacks on the same examples use a one-sided McNemar test: the
rise is flagged when (up - down) > z * sqrt(up + down) and (up - down) / n >
tolerance, with up (down) the examples robust under the supposedly stronger attack and
not (only) under the weaker one; so a few examples of noise never trip a check.

:func:`evaluate_run` evaluates a trained run with its profile's protocol and keeps
the result next to the checkpoint as ``eval.json`` (:func:`load_table` reads it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adt._checks import check_epsilon, check_int_at_least, check_positive
from adt.attacks import (
    Attack,
    autoattack,
    cw,
    fea_attack,
    fgsm,
    isolated_rng,
    mim,
    pgd,
    preserved_modes,
    spsa,
    transfer,
    with_restarts,
)
from adt.data import DATASETS, ImageDataset, load_dataset, to_float
from adt.io import read_json, write_json
from adt.models import device_of
from adt.profiles import EvalSettings, Profile
from adt.train import DEFAULT_RUNS_ROOT, Run, run_dir

__all__ = ["AttackSpec", "CLEAN", "SanityChecks", "RobustnessTable", "GradientMaskingWarning",
           "GradientMaskingError", "white_box_attacks", "black_box_attacks", "standard_attacks",
           "robustness_table", "check_table", "evaluate_run", "eval_path", "load_table",
           "EVAL_FILE"]

EVAL_FILE = "eval.json"
KINDS = ("clean", "white", "black", "sanity")
_FORMAT = 1


class GradientMaskingWarning(UserWarning):
    """A sanity check of the robustness table failed: the robustness may be false."""


class GradientMaskingError(RuntimeError):
    """Raised instead of the warning with ``strict=True``."""


# ----------------------------------------------------------------------------- attack specs

def _callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    return getattr(fn, "__name__", type(fn).__name__)


def _plain(value: Any) -> Any:
    """A JSON-able description of a setting (functions and models by name)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, nn.Module):
        return type(value).__name__
    if callable(value):
        return _callable_name(value)
    return repr(value)


@dataclass(frozen=True)
class AttackSpec:
    """One row of the table: ``attack(model, x, y, **settings)`` (None: the clean input).

    ``kind`` is "clean", "white" (enters A_rob), "black" (transfer, SPSA; reported
    apart) or "sanity" (extra runs of the sanity checks). Black-box rows may run on the
    first ``n_examples`` only (SPSA is expensive); ``float32`` crafts without autocast;
    ``source`` names the source model of a transfer attack; ``uses_pool`` passes the
    whole evaluated set as ``target_pool`` (FeaAttack's target images: one batch may
    hold a single class).
    """

    name: str
    attack: Attack | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "white"
    n_examples: int | None = None
    float32: bool = False
    source: str | None = None
    uses_pool: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"AttackSpec name={self.name!r} must be a non-empty string, e.g. "
                             "'PGD-20'")
        if self.kind not in KINDS:
            raise ValueError(f"AttackSpec {self.name!r}: kind={self.kind!r}; allowed: "
                             f"{', '.join(KINDS)}")
        if (self.attack is None) != (self.kind == "clean"):
            raise ValueError(f"AttackSpec {self.name!r}: kind 'clean' goes with attack=None and "
                             "every other kind needs an attack function; use CLEAN for the "
                             "clean row")
        if self.attack is not None and not callable(self.attack):
            raise ValueError(f"AttackSpec {self.name!r}: attack={self.attack!r} is not callable; "
                             "pass a function such as adt.attacks.pgd")
        if self.n_examples is not None:
            check_int_at_least(self.n_examples, 1, f"n_examples of {self.name!r}", "1000")
            if self.kind in ("clean", "white"):
                raise ValueError(f"AttackSpec {self.name!r}: a {self.kind} row enters A_rob, so "
                                 "it must cover every example; drop n_examples (only black-box "
                                 "rows may use a subset)")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 **extra: Any) -> torch.Tensor:
        return x if self.attack is None else self.attack(model, x, y, **self.settings, **extra)

    def describe(self) -> dict[str, Any]:
        """The row's settings as plain JSON (written to eval.json)."""
        return {"name": self.name, "kind": self.kind,
                "attack": None if self.attack is None else _callable_name(self.attack),
                "settings": {k: _plain(v) for k, v in self.settings.items()},
                "n_examples": self.n_examples, "float32": self.float32, "source": self.source,
                "uses_pool": self.uses_pool}

    def same_run(self, other: AttackSpec) -> bool:
        """Whether the two specs run the same attack on the same examples."""
        return (self.attack is other.attack and dict(self.settings) == dict(other.settings)
                and self.n_examples == other.n_examples and self.float32 == other.float32
                and self.uses_pool == other.uses_pool)


CLEAN = AttackSpec("Clean", None, kind="clean")


def _pgd_spec(name: str, epsilon: float, step_fraction: float, steps: int,
              kind: str = "white") -> AttackSpec:
    return AttackSpec(name, pgd, {"epsilon": epsilon, "step_size": step_fraction * epsilon,
                                  "steps": steps, "random_start": True}, kind=kind)


def _autoattack_spec(settings: EvalSettings, epsilon: float, num_classes: int) -> AttackSpec:
    """"standard": the original AutoAttack; "cheap": APGD-CE + APGD-T (3 targets) with as
    many iterations as the longest PGD of the profile."""
    cheap = settings.autoattack == "cheap"
    return AttackSpec("AutoAttack", autoattack, {
        "epsilon": epsilon, "version": settings.autoattack, "num_classes": num_classes,
        "steps": max(settings.pgd_steps) if cheap else 100,
        "targets": min(3 if cheap else 9, num_classes - 1)})


def white_box_attacks(settings: EvalSettings, epsilon: float, *,
                      num_classes: int = 10) -> list[AttackSpec]:
    """The paper's white-box rows (REFERENCE.md): clean, FGSM, PGD-k for each k in
    ``settings.pgd_steps`` (20 and 100), MIM, C&W, FeaAttack, AutoAttack; step sizes are
    fractions of ``epsilon`` (``settings.step_fraction``, ``settings.fea_step_fraction``)."""
    check_epsilon(epsilon)
    step = settings.step_fraction * epsilon
    return [
        CLEAN,
        AttackSpec("FGSM", fgsm, {"epsilon": epsilon}),
        *(_pgd_spec(f"PGD-{k}", epsilon, settings.step_fraction, k) for k in settings.pgd_steps),
        AttackSpec("MIM", mim, {"epsilon": epsilon, "step_size": step,
                                "steps": settings.mim_steps, "decay": 1.0}),
        AttackSpec("C&W", cw, {"epsilon": epsilon, "step_size": step, "steps": settings.cw_steps,
                               "kappa": settings.cw_kappa}),
        AttackSpec("FeaAttack", fea_attack, {
            "epsilon": epsilon, "step_size": settings.fea_step_fraction * epsilon,
            "steps": settings.fea_steps, "targets": settings.fea_targets}, uses_pool=True),
        _autoattack_spec(settings, epsilon, num_classes),
    ]


def black_box_attacks(settings: EvalSettings, epsilon: float, *,
                      sources: Mapping[str, nn.Module] | None = None,
                      include_spsa: bool = True) -> list[AttackSpec]:
    """The paper's black-box rows: PGD (the profile's shortest) and MIM transferred from
    each model in ``sources`` (name -> model), and SPSA on the first
    ``settings.spsa_examples`` examples."""
    check_epsilon(epsilon)
    step = settings.step_fraction * epsilon
    k = min(settings.pgd_steps)
    specs = []
    for name, source in (sources or {}).items():
        crafted = functools.partial(transfer, source)
        specs += [
            AttackSpec(f"Transfer PGD-{k} from {name}", crafted, {
                "attack": pgd, "epsilon": epsilon, "step_size": step, "steps": k},
                kind="black", source=name),
            AttackSpec(f"Transfer MIM from {name}", crafted, {
                "attack": mim, "epsilon": epsilon, "step_size": step,
                "steps": settings.mim_steps}, kind="black", source=name)]
    if include_spsa:
        specs.append(AttackSpec("SPSA", spsa, {
            "epsilon": epsilon, "lr": settings.spsa_lr, "delta": settings.spsa_delta,
            "iterations": settings.spsa_iterations, "samples": settings.spsa_samples},
            kind="black", n_examples=settings.spsa_examples, float32=True))
    return specs


def standard_attacks(settings: EvalSettings, epsilon: float, *, num_classes: int = 10,
                     sources: Mapping[str, nn.Module] | None = None) -> list[AttackSpec]:
    """White-box rows, then black-box rows: the whole protocol of REFERENCE.md."""
    return (white_box_attacks(settings, epsilon, num_classes=num_classes)
            + black_box_attacks(settings, epsilon, sources=sources))


# ----------------------------------------------------------------------------- sanity checks

@dataclass(frozen=True)
class SanityChecks:
    """Settings of the checks against false robustness (see the module docstring).

    PGD runs use ``step_fraction * epsilon`` steps; ``steps`` = (few, many) for check
    (a); ``restarts`` restarts of PGD-few for (a); PGD-``large_steps`` at
    ``large_epsilon`` must leave at most ``max_large_accuracy`` for (b); ``z`` and
    ``tolerance`` set the noise band of the pairwise comparisons.
    """

    epsilon: float
    step_fraction: float = 0.25
    steps: tuple[int, int] = (20, 100)
    restarts: int = 5
    large_epsilon: float = 0.5
    large_steps: int = 20
    max_large_accuracy: float = 0.05
    tolerance: float = 0.01
    z: float = 3.0

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon, "sanity epsilon")
        check_positive(self.step_fraction, "sanity step_fraction", "0.25")
        if len(self.steps) != 2 or self.steps[0] > self.steps[1]:
            raise ValueError(f"sanity steps={self.steps!r} must be (few, many) with few <= many, "
                             "e.g. (20, 100)")
        for steps in self.steps:
            check_int_at_least(steps, 1, "sanity steps", "(20, 100)")
        check_int_at_least(self.restarts, 1, "sanity restarts", "5")
        check_epsilon(self.large_epsilon, "large_epsilon")
        if self.large_epsilon <= self.epsilon:
            raise ValueError(f"large_epsilon={self.large_epsilon} must exceed epsilon="
                             f"{self.epsilon}; use e.g. 0.5 (any image can be made grey)")
        check_int_at_least(self.large_steps, 1, "large_steps", "20")
        if not 0.0 <= self.max_large_accuracy < 1.0:
            raise ValueError(f"max_large_accuracy={self.max_large_accuracy} must be in [0, 1); "
                             "use e.g. 0.05")
        if self.tolerance < 0 or self.z < 0:
            raise ValueError(f"tolerance={self.tolerance} and z={self.z} must be >= 0; use e.g. "
                             "0.01 and 3")

    @classmethod
    def from_settings(cls, settings: EvalSettings, epsilon: float) -> SanityChecks:
        """The checks for a profile: its PGD steps (shortest, longest), step size and
        ``sanity_restarts``; the large-epsilon PGD takes max(10, shortest) steps."""
        few, many = min(settings.pgd_steps), max(settings.pgd_steps)
        return cls(epsilon=epsilon, step_fraction=settings.step_fraction, steps=(few, many),
                   restarts=settings.sanity_restarts, large_steps=max(10, few))

    def specs(self) -> dict[str, AttackSpec]:
        """The runs the checks need, by role (rows of the table are reused when equal)."""
        few, many = self.steps
        base = _pgd_spec(f"PGD-{few}", self.epsilon, self.step_fraction, few, kind="sanity")
        return {
            "few": base,
            "many": _pgd_spec(f"PGD-{many}", self.epsilon, self.step_fraction, many,
                              kind="sanity"),
            "restarts": dataclasses.replace(base, name=f"PGD-{few} x{self.restarts} restarts",
                                            attack=with_restarts(pgd, self.restarts)),
            "large": _pgd_spec(f"PGD-{self.large_steps} at eps={self.large_epsilon:g}",
                               self.large_epsilon, self.step_fraction, self.large_steps,
                               kind="sanity"),
        }


def _higher(stronger: torch.Tensor, weaker: torch.Tensor, checks: SanityChecks
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


def _result(name: str, failed: bool | None, message: str, **values: Any) -> dict[str, Any]:
    status = "skipped" if failed is None else "failed" if failed else "passed"
    return {"name": name, "status": status, "message": message, **values}


def check_table(table: RobustnessTable) -> list[dict[str, Any]]:
    """Run the sanity checks (a)-(d) on a table's correctness matrix (no attacks run)."""
    if table.sanity is None:
        return []
    checks = SanityChecks(**{**table.sanity["settings"],
                             "steps": tuple(table.sanity["settings"]["steps"])})
    roles = table.sanity["rows"]
    few = table.row(roles["few"])
    out = []
    for role, what in (("many", "more steps"), ("restarts", "random restarts")):
        flagged, values = _higher(table.row(roles[role]), few, checks)
        out.append(_result(f"pgd_{role}", flagged, f"{roles[role]} vs {roles['few']}: accuracy "
                           f"must not rise with {what}", **values))
    large = table.accuracy_of(roles["large"])
    out.append(_result("large_epsilon", large > checks.max_large_accuracy,
                       f"{roles['large']}: accuracy must fall to about 0 (<= "
                       f"{checks.max_large_accuracy:g})", accuracy=large))
    worst = table.worst_case()
    black = [n for n, k in zip(table.names, table.kinds, strict=True) if k == "black"]
    for name in black:
        row = table.row(name)
        flagged, values = _higher(worst[:len(row)], row, checks)
        out.append(_result(f"white_vs_black[{name}]", flagged, "worst-case white-box accuracy "
                           f"must not exceed the black-box {name}", **values))
    if not black:
        out.append(_result("white_vs_black", None, "no black-box rows in the table"))
    auto = [s["name"] for s in table.specs if s["attack"] == "autoattack"]
    for name in auto:
        flagged, values = _higher(table.row(name), few, checks)
        out.append(_result(f"autoattack_vs_pgd[{name}]", flagged,
                           f"{name} must not be weaker than {roles['few']}", **values))
    if not auto:
        out.append(_result("autoattack_vs_pgd", None, "no AutoAttack row in the table"))
    return out


# ----------------------------------------------------------------------------- the table

@dataclass
class RobustnessTable:
    """Rows of attacks, their per-example correctness, and the sanity checks.

    ``correct[i, j]`` says whether example j is classified correctly under attack i;
    only the first ``n_evaluated[i]`` entries of a row are measured (black-box rows may
    cover a prefix), the rest are False.
    """

    specs: list[dict[str, Any]]
    correct: torch.Tensor
    n_evaluated: list[int]
    seconds: list[float]
    sanity: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
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
            names = [n for n, k in zip(self.names, self.kinds, strict=True)
                     if k in ("clean", "white")]
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
        return [c["name"] for c in self.checks if c["status"] == "failed"]

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
            "checks": self.checks,
            "attacks": [{**s, "n_evaluated": n, "seconds": t} for s, n, t
                        in zip(self.specs, self.n_evaluated, self.seconds, strict=True)],
            "correct": {s["name"]: "".join("1" if c else "0" for c in row[:n].tolist())
                        for s, row, n in zip(self.specs, self.correct, self.n_evaluated,
                                             strict=True)},
            "sanity": self.sanity,
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
        return cls(specs, correct, [a["n_evaluated"] for a in blob["attacks"]],
                   [a["seconds"] for a in blob["attacks"]], blob.get("sanity"),
                   list(blob.get("checks", [])), dict(blob.get("meta", {})))

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
                                "adt.evaluate.evaluate_run(run)")
    return RobustnessTable.from_dict(read_json(path))


def eval_path(profile: Profile, method: str, seed: int,
              runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """Where :func:`evaluate_run` keeps a run's table: next to its checkpoint."""
    return run_dir(profile, method, seed, runs_root) / EVAL_FILE


# ----------------------------------------------------------------------------- evaluation

def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled; nothing on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _examples(data: ImageDataset | tuple[torch.Tensor, torch.Tensor], n: int | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (floats in [0, 1]) and labels, on ``device``."""
    if isinstance(data, ImageDataset):
        x, y = data.x_test, data.y_test
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    else:
        raise ValueError(f"data must be an ImageDataset or a pair (x, y) of tensors, got "
                         f"{type(data).__name__}; e.g. adt.data.load_dataset('mnist5k')")
    if n is not None:
        check_int_at_least(n, 1, "n_examples", "1000")
        if n > len(x):
            raise ValueError(f"n_examples={n} but only {len(x)} test examples are available; "
                             f"pass n_examples <= {len(x)} (or None for all)")
    x, y = x[:n].to(device), y[:n].to(device)
    if len(x) == 0:
        raise ValueError("data holds no test examples; pass a dataset with a test split")
    return (to_float(x) if x.dtype == torch.uint8 else x), y


def _checked_specs(attacks: Sequence[AttackSpec]) -> list[AttackSpec]:
    """The rows to evaluate: the clean row first (added when missing), unique names."""
    attacks = list(attacks)
    if not attacks or not all(isinstance(a, AttackSpec) for a in attacks):
        raise ValueError("attacks must be a non-empty list of AttackSpec; build one with "
                         "adt.evaluate.standard_attacks(profile.eval, epsilon)")
    names = [a.name for a in attacks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"attack names must be unique, {duplicated} repeat; rename the rows")
    if not any(a.kind == "clean" for a in attacks):
        attacks.insert(0, CLEAN)
    return attacks


def _default_sanity(specs: Sequence[AttackSpec]) -> SanityChecks:
    """SanityChecks at the (single) epsilon of the white-box rows."""
    eps = {s.settings.get("epsilon") for s in specs if s.kind == "white"} - {None}
    if len(eps) != 1:
        raise ValueError(f"sanity=True needs one epsilon among the white-box rows, found "
                         f"{sorted(eps) or 'none'}; pass sanity=SanityChecks(epsilon=...) or "
                         "sanity=False")
    return SanityChecks(epsilon=eps.pop())


def _plan_sanity(checks: SanityChecks, specs: list[AttackSpec]
                 ) -> tuple[list[AttackSpec], dict[str, str]]:
    """Extra rows the checks need (rows already in the table are reused) and the name of
    the row playing each role."""
    extra, roles = [], {}
    for role, wanted in checks.specs().items():
        same = next((s for s in specs + extra if s.same_run(wanted)), None)
        if same is None:
            taken = {s.name for s in specs + extra}
            same = wanted if wanted.name not in taken else dataclasses.replace(
                wanted, name=f"{wanted.name} (sanity)")
            extra.append(same)
        roles[role] = same.name
    return extra, roles


def _even_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """ceil(n / batch_size) contiguous batches of nearly equal size (no tiny last batch)."""
    bounds = torch.linspace(0, n, -(-n // batch_size) + 1).round().long().tolist()
    yield from zip(bounds[:-1], bounds[1:], strict=True)


def _evaluate_row(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int, autocast: bool) -> torch.Tensor:
    """Per-example correctness under one attack; its outputs are checked against the
    epsilon ball and [0, 1] (one host sync per row)."""
    device = x.device
    n = len(x) if spec.n_examples is None else min(spec.n_examples, len(x))
    eps = spec.settings.get("epsilon", 0.0 if spec.attack is None else math.inf)
    correct, excess = [], torch.zeros((), device=device)
    pool = {"target_pool": (x, y)} if spec.uses_pool else {}
    for lo, hi in _even_batches(n, batch_size):
        xb, yb = x[lo:hi], y[lo:hi]
        with _autocast(device, autocast and not spec.float32):
            x_adv = spec(model, xb, yb, **pool)
        excess = torch.maximum(excess, torch.stack([
            ((x_adv - xb).abs() - eps).amax(), -x_adv.amin(), x_adv.amax() - 1]).amax())
        with _autocast(device, autocast), torch.no_grad():
            correct.append(model(x_adv).argmax(1) == yb)
    if float(excess) > 1e-5:
        raise RuntimeError(f"attack {spec.name!r} returned images outside the epsilon={eps} ball "
                           f"or [0, 1] (by {float(excess):.3g}); fix the attack function")
    return torch.cat(correct)


def _report(table: RobustnessTable, strict: bool) -> None:
    """Warn (or raise, strict) when a sanity check failed."""
    if not table.flags:
        return
    failed = [c for c in table.checks if c["status"] == "failed"]
    message = ("possible gradient masking / false robustness: sanity checks failed: "
               + "; ".join(f"{c['name']} ({c['message']}: {_values(c)})" for c in failed)
               + ". Do not report these accuracies as robustness.")
    if strict:
        raise GradientMaskingError(message)
    warnings.warn(message, GradientMaskingWarning, stacklevel=3)


def _values(check: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in check.items() if k not in ("name", "status", "message"))


def robustness_table(model: nn.Module, data: ImageDataset | tuple[torch.Tensor, torch.Tensor],
                     attacks: Sequence[AttackSpec], n_examples: int | None = None, *,
                     batch_size: int = 200, sanity: SanityChecks | bool = True,
                     strict: bool = False, autocast: bool = True, seed: int = 0,
                     progress: bool = False) -> RobustnessTable:
    """Accuracy of ``model`` under each attack on the first ``n_examples`` test examples
    of ``data`` (an ImageDataset, or a pair (x, y) with images in [0, 1] or uint8), A_rob,
    and the sanity checks (``sanity=False`` skips them; True uses
    ``SanityChecks(epsilon)`` at the white-box rows' epsilon).

    The model runs in eval mode (every module's mode is restored afterwards), on its own
    device, in batches of about ``batch_size``, under bf16 autocast on CUDA when
    ``autocast``. The global RNG is reseeded with ``seed`` inside and restored after, so a
    table is reproducible and leaves no trace. A failed sanity check warns
    (:class:`GradientMaskingWarning`) or, with ``strict``, raises
    :class:`GradientMaskingError`.
    """
    specs = _checked_specs(attacks)
    check_int_at_least(batch_size, 1, "batch_size", "200")
    device = device_of(model)
    x, y = _examples(data, n_examples, device)
    checks = (_default_sanity(specs) if sanity is True else sanity) if sanity else None
    roles: dict[str, str] = {}
    if checks is not None:
        extra, roles = _plan_sanity(checks, specs)
        specs = specs + extra
    correct = torch.zeros(len(specs), len(x), dtype=torch.bool)
    n_evaluated, seconds = [], []
    with preserved_modes(model), isolated_rng(device, seed):
        model.eval()
        for i, spec in enumerate(tqdm(specs, desc="attacks", disable=not progress)):
            started = time.perf_counter()
            row = _evaluate_row(model, spec, x, y, batch_size, autocast).cpu()
            correct[i, :len(row)] = row
            n_evaluated.append(len(row))
            seconds.append(time.perf_counter() - started)
    epsilons = {s.settings.get("epsilon") for s in specs if s.kind == "white"} - {None}
    table = RobustnessTable(
        [s.describe() for s in specs], correct, n_evaluated, seconds,
        sanity=None if checks is None else {"settings": dataclasses.asdict(checks),
                                            "rows": roles},
        meta={"epsilon": epsilons.pop() if len(epsilons) == 1 else None,
              "model": type(model).__name__, "device": str(device),
              "autocast": autocast and device.type == "cuda", "batch_size": batch_size,
              "seed": seed, "torch": torch.__version__,
              "examples": f"the first {len(x)} test examples"})
    table.checks = check_table(table)
    _report(table, strict)
    return table


def _config(attacks: Sequence[AttackSpec], n_examples: int, checks: SanityChecks
            ) -> dict[str, Any]:
    return {"attacks": [a.describe() for a in attacks], "n_examples": n_examples,
            "sanity": _plain_dict(dataclasses.asdict(checks))}


def _plain_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in d.items()}


def evaluate_run(run: Run, data: ImageDataset | None = None, *,
                 sources: Mapping[str, nn.Module] | None = None, n_examples: int | None = None,
                 force: bool = False, strict: bool = False, autocast: bool = True,
                 progress: bool = True) -> RobustnessTable:
    """The robustness table of a trained run under its profile's protocol
    (:func:`standard_attacks` at the profile's epsilon, transfer attacks from
    ``sources``), saved as ``eval.json`` in the run directory. A stored table with the
    same attacks, examples and checks is loaded instead of attacking again (``force``
    recomputes). ``n_examples`` defaults to the profile's, capped at the test split."""
    profile = run.profile
    settings = profile.eval
    epsilon = profile.train_epsilon
    attacks = standard_attacks(settings, epsilon, num_classes=DATASETS[profile.dataset].num_classes,
                               sources=sources)
    checks = SanityChecks.from_settings(settings, epsilon)
    path = run.path / EVAL_FILE
    if data is None:
        data = load_dataset(profile.dataset, device=device_of(run.model))
    n = min(settings.n_examples if n_examples is None else n_examples, len(data.x_test))
    config = _config(attacks, n, checks)
    if path.is_file() and not force:
        stored = load_table(path)
        if stored.meta.get("config") == config:
            _report(stored, strict)
            return stored
    table = robustness_table(run.model, data, attacks, n, batch_size=settings.batch_size,
                             sanity=checks, autocast=autocast, progress=progress)
    table.meta.update(profile=profile.name, dataset=profile.dataset, method=run.method,
                      seed=run.seed, run=str(run.path), config=config)
    table.save(path)
    if strict:
        _report(table, strict=True)
    return table


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 step_size: float, steps: int, batch_size: int = 500, autocast: bool = True,
                 seed: int = 0) -> float:
    """Accuracy of ``model`` (in eval mode, modes restored) under PGD with these settings;
    the points of the accuracy-vs-epsilon and accuracy-vs-steps curves."""
    device = device_of(model)
    spec = _pgd_spec("PGD", epsilon, step_size / epsilon, steps)
    with preserved_modes(model), isolated_rng(device, seed):
        model.eval()
        correct = _evaluate_row(model, spec, x.to(device), y.to(device), batch_size, autocast)
    return float(correct.float().mean())
