"""Any checkpoint file under the protocol: :func:`evaluate_checkpoint` (ours or the
release's, the architecture read from its shapes), :func:`evaluate_released` (the authors'
released models) and the command line ``python -m adt.evaluate``.

A run of this artifact (a committed ``run.pt``, a ``checkpoint.pt`` or their folders) names
its dataset and profile: they are the defaults of ``--dataset`` and ``--protocol`` (for
other files, CIFAR-10 and the paper's protocol). Before any attack, the command checks its
inputs (the ``--output`` location included) and prints an estimate of the time the table
takes (:func:`estimate_evaluation`: each row's passes of the model times a pass timed on
it). ``--protocol autoattack`` is the fast one: the authors' AutoAttack alone.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adt.attack.spec import AttackSpec
from adt.config.profiles import PROFILES, EvalSettings, get_profile
from adt.core.commands import USER_ERRORS, add_progress, command_parser, int_at_least
from adt.core.data import DATASETS, DatasetNotFoundError, ImageDataset, load_dataset, to_float
from adt.core.progress import duration, progress_mode
from adt.core.runtime import resolve_device
from adt.evaluation.checkpoints import (
    LoadedCheckpoint,
    check_dataset,
    load_checkpoint,
    released_models,
)
from adt.evaluation.checks import SanityChecks
from adt.evaluation.engine import robustness_table
from adt.evaluation.protocol import (
    AUTOATTACK_PROTOCOL,
    Estimate,
    autoattack_protocol,
    estimate_table,
    standard_attacks,
)
from adt.evaluation.stored import reusable_table, table_config
from adt.evaluation.table import RobustnessTable
from adt.training.archive import ARCHIVE_ROOT
from adt.training.runs import state_hash

__all__ = ["PROTOCOLS", "checkpoint_attacks", "evaluate_checkpoint", "evaluate_released",
           "estimate_evaluation", "output_problem", "plan_evaluation", "EvaluationPlan",
           "main"]

#: ``--protocol``: a profile's evaluation settings, or the original AutoAttack alone.
PROTOCOLS = (*PROFILES, AUTOATTACK_PROTOCOL)
#: Where the tables of committed runs go by default (the archive is not written).
EVALUATIONS = ARCHIVE_ROOT.parent / "evaluations"
#: The protocol and dataset of a file that names neither (the authors' release).
DEFAULT_PROTOCOL, DEFAULT_DATASET = "paper", "cifar10"


def checkpoint_attacks(settings: EvalSettings, epsilon: float, num_classes: int,
                       names: Sequence[str] | None = None, *,
                       protocol: str | None = None) -> list[AttackSpec]:
    """The protocol's rows for a lone checkpoint (:func:`~adt.evaluation.protocol.standard_attacks`:
    the white-box rows and SPSA; no transfer sources; with ``protocol="autoattack"``, the
    original AutoAttack alone), or the rows ``names`` (any case) of them; a cascade row
    brings the row it runs on (AutoAttack its gradient attacks)."""
    specs = (autoattack_protocol(epsilon, num_classes) if protocol == AUTOATTACK_PROTOCOL
             else standard_attacks(settings, epsilon, num_classes=num_classes))
    if names is None:
        return specs
    by_name = {s.name.lower(): s for s in specs}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown or not names:
        raise ValueError(f"unknown attack(s) {unknown or names!r}; available: "
                         f"{', '.join(s.name for s in specs)} (give one or more of these)")
    wanted = {by_name[n.lower()].name for n in names}
    wanted |= {s.survivors_of for s in specs if s.name in wanted and s.survivors_of}
    return [s for s in specs if s.name in wanted]


def _default_output(path: Path) -> Path:
    """``<checkpoint>.eval.json`` beside a file; in a run folder, ``checkpoint.eval.json``
    (never the run's own ``eval.json``); for a committed run, the same name under
    ``data/evaluations/`` (the archive is left as committed)."""
    try:
        relative = path.resolve().relative_to(ARCHIVE_ROOT.resolve())
    except ValueError:
        return path.with_name(path.stem + ".eval.json")
    return EVALUATIONS / relative.with_name(relative.stem + ".eval.json")


def output_problem(path: str | Path, option: str = "--output") -> str | None:
    """Why the table cannot be written to ``path`` (None: it can), checked before any
    work with a probe file (which leaves nothing behind) in its nearest existing folder."""
    path = Path(path)
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if path.is_dir():
        return f"{option} {path} is a folder; give a file name, e.g. {path / 'table.json'}"
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        return (f"{option} {path} cannot be written ({err.strerror or err}: {folder}); give a "
                "file in a writable folder, e.g. table.json")
    return None


@dataclass(frozen=True)
class EvaluationPlan:
    """What :func:`evaluate_checkpoint` runs, resolved and checked before any attack: the
    dataset and protocol (given, or named by the run), their settings, the rows, the
    examples, whether the sanity checks run, and where the table goes."""

    loaded: LoadedCheckpoint
    dataset: str
    protocol: str
    settings: EvalSettings
    epsilon: float
    specs: list[AttackSpec]
    n_examples: int | None
    sanity: bool
    output: Path
    inferred: tuple[str, ...]  # the options taken from the run's metadata

    @property
    def checks(self) -> SanityChecks | None:
        return SanityChecks.from_settings(self.settings, self.epsilon) if self.sanity else None

    def examples(self, data: ImageDataset) -> int:
        """The images evaluated: the given number, else the protocol's, capped at the split."""
        return (min(self.settings.n_examples, len(data.x_test)) if self.n_examples is None
                else self.n_examples)


def _own_profile(loaded: LoadedCheckpoint) -> str | None:
    profile = loaded.meta.get("profile")
    return profile if profile in PROFILES else None


def plan_evaluation(loaded: LoadedCheckpoint, dataset: str | None = None, *,
                    protocol: str | None = None, attacks: Sequence[str] | None = None,
                    n_examples: int | None = None, epsilon: float | None = None,
                    settings: EvalSettings | None = None, sanity: bool = True,
                    output: str | Path | None = None) -> EvaluationPlan:
    """Resolve an evaluation of ``loaded``: ``dataset`` and ``protocol`` default to those
    its run names (else CIFAR-10 and the paper's); ``settings`` to the protocol's profile's
    (for ``"autoattack"``, the run's profile's or the paper's, for the examples and batch
    size). ValueError when the protocol, the dataset, the rows or ``output`` are wrong."""
    inferred = []
    if dataset is None:
        dataset = loaded.meta.get("dataset") or DEFAULT_DATASET
        inferred += ["dataset"] if loaded.meta.get("dataset") else []
    check_dataset(loaded.architecture, dataset, loaded.path)
    if protocol is None:
        protocol = _own_profile(loaded) or DEFAULT_PROTOCOL
        inferred += ["protocol"] if _own_profile(loaded) else []
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    base = protocol if protocol in PROFILES else (_own_profile(loaded) or DEFAULT_PROTOCOL)
    settings = get_profile(base).eval if settings is None else settings
    epsilon = DATASETS[dataset].epsilon if epsilon is None else epsilon
    specs = checkpoint_attacks(settings, epsilon, DATASETS[dataset].num_classes, attacks,
                               protocol=protocol)
    out = _default_output(loaded.path) if output is None else Path(output)
    problem = output_problem(out, "--output" if output is not None else "the default output")
    if problem:
        raise ValueError(problem + ("" if output is not None else "; pass --output FILE"))
    return EvaluationPlan(loaded, dataset, protocol, settings, epsilon, specs, n_examples,
                          sanity and protocol != AUTOATTACK_PROTOCOL, out, tuple(inferred))


def estimate_evaluation(plan: EvaluationPlan, data: ImageDataset,
                        batch_size: int | None = None) -> Estimate:
    """An estimate of the seconds the table of ``plan`` takes
    (:func:`~adt.evaluation.protocol.estimate_table`: each row's passes of the model, the
    sanity checks' runs included, times passes timed on the model just now)."""
    n = plan.examples(data)
    batch = min(n, plan.settings.batch_size if batch_size is None else batch_size)
    return estimate_table(plan.loaded.model, to_float(data.x_test[:batch]),
                          data.y_test[:batch], plan.specs, n, plan.checks,
                          DATASETS[plan.dataset].num_classes)


def _faster(plan: EvaluationPlan, estimate: Estimate) -> str | None:
    """A line naming faster settings when the table takes more than two minutes: the
    original AutoAttack alone when it is faster here, fewer examples, rows or checks."""
    if estimate.seconds <= 120:
        return None
    options = []
    if plan.protocol != AUTOATTACK_PROTOCOL:
        seconds = estimate.again(autoattack_protocol(plan.epsilon,
                                                     DATASETS[plan.dataset].num_classes))
        if seconds < 0.8 * estimate.seconds:
            options.append(f"--protocol autoattack (the original AutoAttack alone, about "
                           f"{duration(seconds)})")
    sanity = ["--no-sanity"] if plan.sanity else []
    return "faster: " + ", ".join([*options, "fewer --examples", "--attacks NAME ...", *sanity])


def evaluate_checkpoint(path: str | Path | LoadedCheckpoint, dataset: str | None = None, *,
                        attacks: Sequence[str] | None = None, n_examples: int | None = None,
                        data: ImageDataset | None = None, data_root: str | Path = "data",
                        device: str | torch.device = "auto", batch_size: int | None = None,
                        epsilon: float | None = None, settings: EvalSettings | None = None,
                        protocol: str | None = None, sanity: bool = True,
                        output: str | Path | None = None, reuse: bool = False,
                        autocast: bool = True, progress: bool = False) -> RobustnessTable:
    """The robustness table of any checkpoint (:func:`adt.evaluation.checkpoints.load_checkpoint`:
    the authors' released files, our ``checkpoint.pt``, a committed ``run.pt`` or a run
    folder) on ``dataset`` (default: the run's, else CIFAR-10; read from ``data_root``
    unless ``data`` is given) under ``protocol`` (a profile's name, or ``"autoattack"``:
    the original AutoAttack alone, without the sanity checks; default: the run's profile,
    else "paper", the full protocol with AutoAttack "standard"; ``settings`` overrides its
    settings) at ``epsilon`` (default: the dataset's), on the first ``n_examples`` test
    images (default: the protocol's, capped at the split); ``attacks`` picks rows by name
    (:func:`checkpoint_attacks`).

    The table is saved to ``output`` (default ``<checkpoint>.eval.json``; for a committed
    run, under ``data/evaluations/``) with the checkpoint, its architecture and a hash of
    its weights; with ``reuse`` a stored table of the same attacks, examples, checks and
    weights is returned instead."""
    dev = resolve_device(device)
    loaded = path if isinstance(path, LoadedCheckpoint) else load_checkpoint(path, dataset,
                                                                              device=dev)
    plan = plan_evaluation(loaded, dataset, protocol=protocol, attacks=attacks,
                           n_examples=n_examples, epsilon=epsilon, settings=settings,
                           sanity=sanity, output=output)
    if data is None:
        data = load_dataset(plan.dataset, root=data_root, device=dev)
    return _run(plan, data, batch_size, reuse, autocast, progress)


def _run(plan: EvaluationPlan, data: ImageDataset, batch_size: int | None, reuse: bool,
         autocast: bool, progress: bool) -> RobustnessTable:
    """Attack and store (or reuse) the table of a resolved plan."""
    loaded, n, checks = plan.loaded, plan.examples(data), plan.checks
    config = table_config(plan.specs, n, checks)
    fingerprint = {"state_hash": state_hash(loaded.model), "architecture": str(loaded.architecture),
                   "dataset": plan.dataset}
    stored = reusable_table(plan.output, config, fingerprint)[0] if reuse else None
    if stored is not None:
        return stored
    table = robustness_table(loaded.model, data, plan.specs, n,
                             batch_size=plan.settings.batch_size if batch_size is None
                             else batch_size, sanity=checks if checks is not None else False,
                             autocast=autocast, progress=progress)
    table.meta.update(checkpoint=str(loaded.path), architecture=str(loaded.architecture),
                      layout=loaded.layout, dataset=plan.dataset, protocol=plan.protocol,
                      config=config, run_fingerprint=fingerprint,
                      **{f"run_{k}": v for k, v in loaded.meta.items()})
    table.save(plan.output)
    return table


def evaluate_released(root: str | Path = "data", **kwargs: Any) -> dict[str, RobustnessTable]:
    """The tables of the authors' released CIFAR-10 models (``root/release/*.pt``, each
    saved beside its file as ``<name>.eval.json`` and reused while valid), by file name;
    ``kwargs`` go to :func:`evaluate_checkpoint`. Raises FileNotFoundError saying exactly
    what to download where when the files or CIFAR-10 are missing
    (:func:`adt.evaluation.checkpoints.released_models`)."""
    status = released_models(root)
    if not status.ready:
        raise FileNotFoundError(status.summary())
    dev = resolve_device(kwargs.pop("device", "auto"))
    kwargs.setdefault("reuse", True)
    data = load_dataset("cifar10", root=root, device=dev)
    return {path.stem: evaluate_checkpoint(path, "cifar10", data=data, device=dev, **kwargs)
            for path in status.files}


def _epsilon(text: str) -> float:
    """A budget as a number or a fraction: "0.031", "8/255"."""
    try:
        top, _, bottom = text.partition("/")
        value = float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction such as "
                                         "8/255") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"epsilon {text} must lie in (0, 1] (images are in "
                                         "[0, 1]); e.g. 8/255")
    return value


#: The first bytes of a file written by torch.save: a zip archive, or a pickle (< 1.6).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint file (None when it may be one, or is a folder)."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_TORCH_MAGIC):
        return None
    return (f"--checkpoint {path} is not a PyTorch checkpoint (a file written by torch.save: "
            "a zip archive or a pickle); give a .pt file such as data/release/adt-exp.pt, "
            "or a run folder such as data/archive/quick/mnist5k/adt_exp-seed0 (the committed "
            "runs: docs/models.md)")


def _parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = command_parser(
        "evaluate",
        "Evaluate any classifier checkpoint (the authors' released models, or a run of this "
        "artifact, e.g. a committed one of docs/models.md) under the paper's attacks; "
        "prints an estimate of the time first, then writes the robustness table as JSON and "
        "prints it.")
    parser.add_argument("--checkpoint", required=True,
                        help="a .pt file (e.g. data/release/adt-exp.pt), a run folder (e.g. "
                             "data/archive/quick/mnist5k/adt_exp-seed0) or its run.pt or "
                             "checkpoint.pt (required)")
    parser.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                        help="the dataset whose test images are attacked (default: the one "
                             f"a run names, else {DEFAULT_DATASET})")
    rows = [s.name for s in checkpoint_attacks(EvalSettings(), 8 / 255, 10)]
    parser.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                        help=f"rows to run, by name (default: all: {', '.join(rows)})")
    parser.add_argument("--examples", type=int_at_least(1), default=None,
                        help="first N test images (default: the protocol's, at most the split)")
    parser.add_argument("--epsilon", type=_epsilon, default=None,
                        help="l_inf budget, e.g. 8/255 (default: the dataset's)")
    parser.add_argument("--protocol", default=None, choices=PROTOCOLS,
                        help="a profile's evaluation settings (steps, AutoAttack version, "
                             "queries), or autoattack: the authors' original AutoAttack "
                             "alone (RobustBench's metric; no other attack, no sanity checks: "
                             "the fast one) (default: the profile a run names, else "
                             f"{DEFAULT_PROTOCOL}, the full protocol with AutoAttack standard)")
    parser.add_argument("--data-root", default="data", help="where the dataset lives")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model and the attacks run (auto: CUDA if available)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=None,
                        help="default: the protocol's (200)")
    parser.add_argument("--no-sanity", action="store_true",
                        help="skip the checks against false robustness and their extra runs")
    parser.add_argument("--output", default=None,
                        help="JSON file of the table (default: <checkpoint>.eval.json; for a "
                             "committed run, under data/evaluations/)")
    add_progress(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available on this machine; use --device cpu")
    problem = _not_a_checkpoint(Path(args.checkpoint)) or (
        output_problem(args.output) if args.output is not None else None)
    if problem:
        parser.error(problem)
    return parser, args


def _plan_from(args: argparse.Namespace, dev: torch.device
               ) -> tuple[EvaluationPlan, ImageDataset]:
    """The checked plan and the dataset of the command line's arguments (raises the
    errors that are usage errors: a missing file, another architecture, a missing
    dataset, an unknown attack, an output that cannot be written)."""
    loaded = load_checkpoint(args.checkpoint, args.dataset, device=dev)
    plan = plan_evaluation(loaded, args.dataset, protocol=args.protocol, attacks=args.attacks,
                           n_examples=args.examples, epsilon=args.epsilon,
                           sanity=not args.no_sanity, output=args.output)
    data = load_dataset(plan.dataset, root=args.data_root, device=dev)
    if args.examples is not None and args.examples > len(data.x_test):
        raise ValueError(f"--examples {args.examples}, but {plan.dataset!r} has only "
                         f"{len(data.x_test)} test images; pass --examples "
                         f"{len(data.x_test)} or less")
    return plan, data


def _describe(plan: EvaluationPlan, n: int, dev: torch.device) -> str:
    loaded = plan.loaded
    origin = (f" (from the run's metadata: {', '.join(plan.inferred)})" if plan.inferred
              else "")
    return (f"{loaded.path}: {loaded.architecture} ({loaded.layout} layout), {plan.dataset}, "
            f"epsilon {plan.epsilon:.4g}, protocol {plan.protocol!r}{origin}, {n} test "
            f"images, rows {', '.join(dict.fromkeys(['Clean', *(s.name for s in plan.specs)]))}"
            f"{'' if plan.sanity else ', no sanity checks'} on {dev}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adt.evaluate --checkpoint PATH [--dataset D] [--protocol P] [--attacks
    ...] [--examples N] ...``: bad input (a missing file, another architecture, the wrong
    number of classes, a missing dataset, an unknown attack, an output that cannot be
    written) is a usage error (exit code 2), found before any attack or output."""
    parser, args = _parse(argv)
    dev = resolve_device(args.device)
    try:
        plan, data = _plan_from(args, dev)
    except (*USER_ERRORS, DatasetNotFoundError) as err:
        parser.error(str(err))
    print(_describe(plan, plan.examples(data), dev), flush=True)
    estimate = estimate_evaluation(plan, data, args.batch_size)
    for line in filter(None, (estimate.line(), _faster(plan, estimate))):
        print(line, flush=True)
    table = _run(plan, data, args.batch_size, False, True,
                 progress_mode(args.progress) != "off")
    print(f"\n{table.to_markdown()}\n")
    print(f"A_rob {100 * table.robust_accuracy:.2f}% on {table.n_examples} test images; wrote "
          f"{plan.output}")
    return 0
