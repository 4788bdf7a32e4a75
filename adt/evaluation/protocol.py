"""Which attacks a robustness table runs: the paper's protocol, sized by a profile.

:func:`white_box_attacks` gives the clean row and the rows of every attack of
:data:`adt.attack.catalogue.PROTOCOL` (each attack's record builds its own rows from the
profile's :class:`~adt.config.profiles.EvalSettings`), :func:`black_box_attacks` the
transfer rows and SPSA, :func:`standard_attacks` both: REPRODUCTION.md, "Evaluation
protocol". The rows are :class:`~adt.attack.spec.AttackSpec`s. :func:`autoattack_protocol`
is the authors' AutoAttack alone (RobustBench's metric), the fast protocol of a lone
checkpoint.

:func:`row_passes` says how many passes of the model each row makes per batch of images,
from its settings (steps, targets, queries, samples): with a pass timed on the model,
:func:`estimate_seconds` estimates how long a table takes before it starts.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adt.attack.catalogue import AUTOATTACK, PROTOCOL, SPSA, AutoAttackSettings, row_caption
from adt.attack.functions import mim, original_autoattack, pgd
from adt.attack.spec import CLEAN, AttackSpec, callable_name
from adt.config.profiles import EvalSettings
from adt.core._checks import check_epsilon
from adt.core.progress import duration
from adt.evaluation.checks import SanityChecks

__all__ = ["autoattack_specs", "full_autoattack", "white_box_attacks", "a_rob_cascade",
           "black_box_attacks", "standard_attacks", "describe_protocol", "AUTOATTACK_PROTOCOL",
           "autoattack_protocol", "row_passes", "estimate_seconds", "LIBRARY_OVERHEAD",
           "SQUARE_QUERY", "SPSA_SAMPLE", "time_passes", "Estimate", "estimate_table",
           "sanity_rows"]

#: The name of the fast protocol of a lone checkpoint: the original AutoAttack alone.
AUTOATTACK_PROTOCOL = "autoattack"


def autoattack_specs(settings: EvalSettings | AutoAttackSettings, epsilon: float,
                     num_classes: int) -> tuple[AttackSpec, AttackSpec]:
    """AutoAttack as two rows (:data:`adt.attack.catalogue.AUTOATTACK`): its gradient
    attacks, then "AutoAttack": Square on that row's survivors, i.e. the whole cascade.
    With the defaults, the original "standard" AutoAttack."""
    gradient, cascade = AUTOATTACK.specs(settings, epsilon, num_classes)
    return gradient, cascade


def full_autoattack(epsilon: float, num_classes: int = 10) -> tuple[AttackSpec]:
    """The original "standard" AutoAttack, run by its authors' own code
    (:func:`~adt.attack.functions.original_autoattack`: APGD-CE, APGD-T, FAB-T at 100
    iterations and 9 targets, then Square at 5000 queries): the reference the quick
    profile's cheaper protocol is measured against. ``num_classes`` is the dataset's
    (pyautoattack targets min(9, classes - 1) classes itself)."""
    check_epsilon(epsilon)
    return (AttackSpec("Original AutoAttack (pyautoattack)", original_autoattack,
                       {"epsilon": epsilon}, float32=True),)


def white_box_attacks(settings: EvalSettings, epsilon: float, *,
                      num_classes: int = 10) -> list[AttackSpec]:
    """The paper's white-box rows: clean, then the rows of each attack of the protocol
    (:data:`adt.attack.catalogue.PROTOCOL`: FGSM, PGD-k for each k in
    ``settings.pgd_steps``, MIM, C&W, FeaAttack, AutoAttack's gradient attacks and its
    cascade with Square), each built from its own fields of ``settings``."""
    check_epsilon(epsilon)
    return [CLEAN, *(spec for attack in PROTOCOL
                     for spec in attack.specs(settings, epsilon, num_classes))]


def a_rob_cascade(settings: EvalSettings, epsilon: float, *,
                  num_classes: int = 10) -> list[AttackSpec]:
    """A_rob alone, as one cascade: the white-box rows of :func:`white_box_attacks`, the
    AutoAttack rows first (they break the most examples), each later row run only on the
    survivors of the row before it (FeaAttack, which draws its target images from the whole
    evaluated set, runs on every image). A_rob (the per-example worst case over every row,
    :meth:`RobustnessTable.worst_case`) is then that of the whole table, at the cost of
    attacking survivors only; the rows are not per-attack accuracies, and no sanity check
    is planned on them (the budget study)."""
    rows = white_box_attacks(settings, epsilon, num_classes=num_classes)
    clean, attacks = rows[0], rows[1:]
    autoattack = [s for s in attacks if s.name.startswith(("APGD", "AutoAttack"))]
    ordered = autoattack + [s for s in attacks if s not in autoattack]
    chain, previous = [clean], clean.name
    for spec in ordered:
        if spec.uses_pool:  # FeaAttack draws its targets from every evaluated image
            chain.append(spec)
            continue
        # AutoAttack's own cascade row runs on its gradient row's survivors already
        after = spec.survivors_of or previous
        chain.append(dataclasses.replace(spec, survivors_of=after))
        previous = spec.name
    return chain


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
        specs += [
            AttackSpec(f"Transfer PGD-{k} from {name}", pgd, {
                "epsilon": epsilon, "step_size": step, "steps": k},
                kind="black", source=name, source_model=source),
            AttackSpec(f"Transfer MIM from {name}", mim, {
                "epsilon": epsilon, "step_size": step, "steps": settings.mim_steps},
                kind="black", source=name, source_model=source)]
    if include_spsa:
        specs += SPSA.specs(settings, epsilon)
    return specs


def standard_attacks(settings: EvalSettings, epsilon: float, *, num_classes: int = 10,
                     sources: Mapping[str, nn.Module] | None = None) -> list[AttackSpec]:
    """White-box rows, then black-box rows: the whole protocol."""
    return (white_box_attacks(settings, epsilon, num_classes=num_classes)
            + black_box_attacks(settings, epsilon, sources=sources))


def describe_protocol(specs: Sequence[Mapping[str, Any]], epsilon: float | None = None) -> str:
    """One sentence naming the attacks in A_rob with their steps, targets and queries, for
    a table's caption; ``specs`` are :meth:`AttackSpec.describe` dicts (a table's
    ``specs``)."""
    rows = [row_caption(s, epsilon) for s in specs if s["kind"] == "white"]
    return "A_rob: the per-example worst case over clean and " + "; ".join(rows)


def autoattack_protocol(epsilon: float, num_classes: int = 10) -> list[AttackSpec]:
    """The authors' AutoAttack alone, RobustBench's metric: the clean row, then the
    original "standard" AutoAttack (:func:`full_autoattack`), whose accuracy is the
    robust accuracy. No other attack, no checks against false robustness."""
    return [CLEAN, *full_autoattack(epsilon, num_classes)]


#: Forward-backward passes an iteration of the attack libraries' loops costs (torchattacks'
#: and pyautoattack's APGD and FAB check, project and schedule steps around each pass), a
#: query of Square, and a perturbation of SPSA (two forward passes of the batch and the
#: arithmetic on the perturbed copies): measured on the quick SmallCNN, 20 images, one
#: thread of the 2-core CPU (APGD-CE+T 12.4 s for 400 iterations against a forward-backward
#: pass of 24 ms; Square 13.9 s for 1000 queries; SPSA 25.8 s for 640 perturbations).
LIBRARY_OVERHEAD, SQUARE_QUERY, SPSA_SAMPLE = 1.5, 0.6, 1.5
_RESTARTS = re.compile(r"_x(\d+)_restarts$")


def _library_passes(s: Mapping[str, Any], targets: int) -> float:
    """torchattacks' AutoAttack parts (:func:`~adt.attack.functions.autoattack`):
    APGD-CE and APGD-T (``targets``), FAB-T for the "standard" and "gradient" versions,
    Square for "standard"; in forward-backward passes."""
    steps, version = s.get("steps", 100), s.get("version", "standard")
    iterations = steps * (1 + targets) + (steps * targets if version != "cheap" else 0)
    queries = s.get("square_queries", 5000) if version == "standard" else 0
    return iterations * LIBRARY_OVERHEAD + queries * SQUARE_QUERY


def row_passes(spec: AttackSpec, num_classes: int = 10) -> tuple[float, float]:
    """The passes of the model one row makes per batch of images: (forward-backward
    passes, forward passes), from its settings. An estimate: every example is assumed to
    stay in every attack to its end (the libraries' attacks stop early on broken ones);
    the attack libraries' iterations, Square's queries and SPSA's perturbations count as
    the forward-backward passes they were measured to cost (:data:`LIBRARY_OVERHEAD`,
    :data:`SQUARE_QUERY`, :data:`SPSA_SAMPLE`)."""
    if spec.attack is None:
        return 0.0, 1.0
    s, name = spec.settings, callable_name(spec.attack)
    targets = min(int(s.get("targets", 9)), num_classes - 1)
    restarts = _RESTARTS.search(name)
    if restarts:  # a sanity run: PGD repeated from random starts
        runs = int(restarts.group(1))
        return runs * float(s.get("steps", 1)), float(runs)
    if name in ("fgsm", "pgd", "mim", "cw"):
        return float(s.get("steps", 1)), 1.0
    if name == "fea_attack":
        return float(s["targets"] * s["steps"]), float(s["targets"] + 1)
    if name == "autoattack":
        return _library_passes(s, targets), 1.0
    if name == "square":
        return s.get("queries", 5000) * SQUARE_QUERY, 1.0
    if name == "spsa":
        return SPSA_SAMPLE * s.get("iterations", 100) * s.get("samples", 256), 1.0
    if name == "original_autoattack":  # "standard": 100 iterations, 9 targets, 5000 queries
        return _library_passes({"steps": 100, "version": "standard"},
                               min(9, num_classes - 1)), 1.0
    return float(s.get("steps", 1)), 1.0  # an attack of one's own: its steps, if it has any


def estimate_seconds(specs: Sequence[AttackSpec], n_examples: int, batch_size: int,
                     pass_seconds: tuple[float, float], num_classes: int = 10) -> float:
    """The seconds a table of ``specs`` on ``n_examples`` images should take: each row's
    :func:`row_passes` times the seconds of one forward-backward and one forward pass of
    the model on a batch of ``min(n_examples, batch_size)`` images (``pass_seconds``,
    timed on the model), times the batches its images fill (a black-box row's own
    ``n_examples`` cap counted). An upper estimate for a model that attacks break early."""
    batch = max(1, min(n_examples, batch_size))
    backward, forward = pass_seconds
    total = 0.0
    for spec in specs:
        images = n_examples if spec.n_examples is None else min(spec.n_examples, n_examples)
        gradient, forwards = row_passes(spec, num_classes)
        total += images / batch * (gradient * backward + forwards * forward)
    return total


def _synchronized(device: torch.device) -> Callable[[], float]:
    """A clock that waits for the device's queued work first."""
    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return clock


def time_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5,
                window: float = 0.3) -> tuple[float, float]:
    """Seconds of one forward-backward pass (the gradient of the loss in the input, as the
    attacks take it) and of one forward pass of ``model`` on the batch ``x``: the median
    of at least ``repeats`` after a warm-up, more (up to 25) until they span ``window``
    seconds, so that a busy machine's stalls do not decide it. The model's mode is left
    as it was."""
    clock = _synchronized(x.device)

    def backward() -> None:
        with torch.enable_grad():
            delta = x.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(model(delta), y), delta)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    seconds = []
    for step in (backward, forward):
        step()  # warm-up: allocations, kernel choice
        runs: list[float] = []
        while len(runs) < repeats or (sum(runs) < window and len(runs) < 25):
            started = clock()
            step()
            runs.append(clock() - started)
        seconds.append(statistics.median(runs))
    return seconds[0], seconds[1]


def sanity_rows(checks: SanityChecks | None, specs: Sequence[AttackSpec]) -> list[AttackSpec]:
    """The extra runs the sanity checks add to ``specs`` (those not already among them)."""
    extra: list[AttackSpec] = []
    for wanted in (checks.specs().values() if checks is not None else ()):
        if not any(wanted.same_run(s) for s in (*specs, *extra)):
            extra.append(wanted)
    return extra


@dataclass(frozen=True)
class Estimate:
    """How long a table should take (:func:`estimate_table`): ``seconds``, from ``passes``
    (seconds of one forward-backward and one forward pass on ``batch`` images) for
    ``n_examples`` images of ``num_classes`` classes."""

    seconds: float
    passes: tuple[float, float]
    batch: int
    n_examples: int
    num_classes: int

    def again(self, specs: Sequence[AttackSpec]) -> float:
        """The estimate for other rows on the same images (no new timing)."""
        return estimate_seconds(specs, self.n_examples, self.batch, self.passes,
                                self.num_classes)

    def line(self) -> str:
        """One line saying the estimate and how it was made."""
        backward, forward = (1000 * t for t in self.passes)
        return (f"estimated time: about {duration(self.seconds)} (an estimate: the passes each "
                f"attack makes times one forward-backward pass of {backward:.3g} ms and one "
                f"forward pass of {forward:.3g} ms on {self.batch} images, timed just now; "
                "within about a factor of two where measured, less where attacks break images "
                "early, further off when other work competes for the cores)")


def estimate_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   specs: Sequence[AttackSpec], n_examples: int,
                   checks: SanityChecks | None = None, num_classes: int = 10) -> Estimate:
    """How long a table of ``specs`` (and the runs of ``checks``) on ``n_examples`` images
    should take: :func:`estimate_seconds` with a pass of ``model`` timed now on the batch
    ``x``, ``y`` (floats in [0, 1], moved to the model's device)."""
    device = next(model.parameters()).device
    passes = time_passes(model, x.to(device), y.to(device))
    rows = [*specs, *sanity_rows(checks, specs)]
    return Estimate(estimate_seconds(rows, n_examples, len(x), passes, num_classes), passes,
                    len(x), n_examples, num_classes)
