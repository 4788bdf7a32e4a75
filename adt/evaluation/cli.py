"""Any checkpoint file under the protocol: :func:`evaluate_checkpoint` (ours or the
release's, the architecture read from its shapes), :func:`evaluate_released` (the authors'
released models) and the command line ``python -m adt.evaluate``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adt.attack.spec import AttackSpec
from adt.config.profiles import PROFILES, EvalSettings, get_profile
from adt.core.commands import add_progress, command_parser, int_at_least
from adt.core.data import DATASETS, DatasetNotFoundError, ImageDataset, load_dataset
from adt.core.progress import progress_mode
from adt.core.runtime import resolve_device
from adt.evaluation.checkpoints import LoadedCheckpoint, load_checkpoint, released_models
from adt.evaluation.checks import SanityChecks
from adt.evaluation.engine import robustness_table
from adt.evaluation.protocol import standard_attacks
from adt.evaluation.stored import reusable_table, table_config
from adt.evaluation.table import RobustnessTable
from adt.training.runs import state_hash

__all__ = ["checkpoint_attacks", "evaluate_checkpoint", "evaluate_released", "main"]


def checkpoint_attacks(settings: EvalSettings, epsilon: float, num_classes: int,
                       names: Sequence[str] | None = None) -> list[AttackSpec]:
    """The protocol's rows for a lone checkpoint (:func:`~adt.evaluation.protocol.standard_attacks`:
    the white-box rows and SPSA; no transfer sources), or the rows ``names`` (any case)
    of them; a cascade row brings the row it runs on (AutoAttack its gradient attacks)."""
    specs = standard_attacks(settings, epsilon, num_classes=num_classes)
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
    (never the run's own ``eval.json``)."""
    return path.with_name(path.stem + ".eval.json")


def evaluate_checkpoint(path: str | Path | LoadedCheckpoint, dataset: str = "cifar10", *,
                        attacks: Sequence[str] | None = None, n_examples: int | None = None,
                        data: ImageDataset | None = None, data_root: str | Path = "data",
                        device: str | torch.device = "auto", batch_size: int | None = None,
                        epsilon: float | None = None, settings: EvalSettings | None = None,
                        sanity: bool = True, output: str | Path | None = None,
                        reuse: bool = False, autocast: bool = True,
                        progress: bool = False) -> RobustnessTable:
    """The robustness table of any checkpoint (:func:`adt.evaluation.checkpoints.load_checkpoint`:
    the authors' released files, our ``checkpoint.pt`` or a run folder) on ``dataset``
    (read from ``data_root`` unless ``data`` is given) under ``settings`` (default: the
    paper's full protocol, AutoAttack "standard") at ``epsilon`` (default: the
    dataset's), on the first ``n_examples`` test images (default: the protocol's, capped
    at the split); ``attacks`` picks rows by name (:func:`checkpoint_attacks`).

    The table is saved to ``output`` (default ``<checkpoint>.eval.json``) with the
    checkpoint, its architecture and a hash of its weights; with ``reuse`` a stored
    table of the same attacks, examples, checks and weights is returned instead."""
    dev = resolve_device(device)
    loaded = path if isinstance(path, LoadedCheckpoint) else load_checkpoint(path, dataset,
                                                                              device=dev)
    settings = EvalSettings() if settings is None else settings
    epsilon = DATASETS[dataset].epsilon if epsilon is None else epsilon
    specs = checkpoint_attacks(settings, epsilon, DATASETS[dataset].num_classes, attacks)
    if data is None:
        data = load_dataset(dataset, root=data_root, device=dev)
    n = min(settings.n_examples, len(data.x_test)) if n_examples is None else n_examples
    checks = SanityChecks.from_settings(settings, epsilon) if sanity else None
    config = table_config(specs, n, checks)
    fingerprint = {"state_hash": state_hash(loaded.model), "architecture": str(loaded.architecture),
                   "dataset": dataset}
    out = _default_output(loaded.path) if output is None else Path(output)
    stored = reusable_table(out, config, fingerprint)[0] if reuse else None
    if stored is not None:
        return stored
    table = robustness_table(loaded.model, data, specs, n,
                             batch_size=settings.batch_size if batch_size is None else batch_size,
                             sanity=checks if checks is not None else False, autocast=autocast,
                             progress=progress)
    table.meta.update(checkpoint=str(loaded.path), architecture=str(loaded.architecture),
                      layout=loaded.layout, dataset=dataset, config=config,
                      run_fingerprint=fingerprint, **{f"run_{k}": v for k, v in loaded.meta.items()})
    table.save(out)
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


#: The first bytes of a file written by torch.save: a zip archive, or (before PyTorch 1.6)
#: a pickle.
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
            "a zip archive or a pickle); give a .pt file such as data/release/adt_exp.pt, "
            "or a run folder such as data/runs/quick/mnist5k/adt_exp-seed0")


def _parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = command_parser(
        "evaluate",
        "Evaluate any classifier checkpoint (the authors' released models, or a run of this "
        "artifact) under the paper's attacks; writes the robustness table as JSON and prints "
        "it.")
    parser.add_argument("--checkpoint", required=True,
                        help="a .pt file (e.g. data/release/adt_exp.pt) or a run folder "
                             "(required)")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS),
                        help="the dataset whose test images are attacked")
    rows = [s.name for s in checkpoint_attacks(EvalSettings(), 8 / 255, 10)]
    parser.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                        help=f"rows to run, by name (default: all: {', '.join(rows)})")
    parser.add_argument("--examples", type=int_at_least(1), default=None,
                        help="first N test images (default: the protocol's, at most the split)")
    parser.add_argument("--epsilon", type=_epsilon, default=None,
                        help="l_inf budget, e.g. 8/255 (default: the dataset's)")
    parser.add_argument("--protocol", default="paper", choices=sorted(PROFILES),
                        help="whose evaluation settings (steps, AutoAttack version, queries) to "
                             "use (default: paper, the full protocol with AutoAttack standard)")
    parser.add_argument("--data-root", default="data", help="where the dataset lives")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model and the attacks run (auto: CUDA if available)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=None,
                        help="default: the protocol's (200)")
    parser.add_argument("--no-sanity", action="store_true",
                        help="skip the checks against false robustness and their extra runs")
    parser.add_argument("--output", default=None,
                        help="JSON file of the table (default: <checkpoint>.eval.json)")
    add_progress(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available on this machine; use --device cpu")
    problem = _not_a_checkpoint(Path(args.checkpoint))
    if problem:
        parser.error(problem)
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adt.evaluate --checkpoint PATH --dataset cifar10 [--attacks ...]
    [--examples N] ...``: bad input (a missing file, another architecture, the wrong number
    of classes, a missing dataset, an unknown attack) is a usage error (exit code 2)."""
    parser, args = _parse(argv)
    settings = get_profile(args.protocol).eval
    dev = resolve_device(args.device)
    try:
        loaded = load_checkpoint(args.checkpoint, args.dataset, device=dev)
        epsilon = DATASETS[args.dataset].epsilon if args.epsilon is None else args.epsilon
        checkpoint_attacks(settings, epsilon, DATASETS[args.dataset].num_classes, args.attacks)
        data = load_dataset(args.dataset, root=args.data_root, device=dev)
    except (FileNotFoundError, DatasetNotFoundError, ValueError) as err:
        parser.error(str(err))
    if args.examples is not None and args.examples > len(data.x_test):
        parser.error(f"--examples {args.examples}, but {args.dataset!r} has only "
                     f"{len(data.x_test)} test images; pass --examples {len(data.x_test)} or less")
    print(f"{loaded.path}: {loaded.architecture} ({loaded.layout} layout), {args.dataset}, "
          f"epsilon {epsilon:.4g}, protocol {args.protocol!r} on {dev}", flush=True)
    table = evaluate_checkpoint(loaded, args.dataset, attacks=args.attacks,
                                n_examples=args.examples, data=data, device=dev,
                                batch_size=args.batch_size, epsilon=epsilon, settings=settings,
                                sanity=not args.no_sanity, output=args.output,
                                progress=progress_mode(args.progress) != "off")
    print(f"\n{table.to_markdown()}\n")
    print(f"A_rob {100 * table.robust_accuracy:.2f}% on {table.n_examples} test images; wrote "
          f"{args.output or _default_output(loaded.path)}")
    return 0

