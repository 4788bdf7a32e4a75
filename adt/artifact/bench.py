"""Throughput benchmarks: what a training step of each method costs, and PGD evaluation speed.

    python -m adt.bench --model small_cnn --batch-size 128 --device cpu
    python -m adt.bench --model wrn --batch-size 128 --device cuda --steps 20
    python -m adt.bench --attacks --model small_cnn     # PGD-20: ours vs torchattacks

The command line of the benchmarks. For every method it times full training steps
(:func:`adt.artifact.costs.time_train_steps`: inner maximisation + classifier update, in one
process) and prints images/s, forward+backward passes of the classifier per image, the
ratio of the step time to PGD-AT's beside the ratio of pass counts, peak memory, and the
achieved TFLOP/s, with a *reference-style* ADT_EXP step (the release's way) timed side by
side; ``--attacks`` times PGD-20, ours against torchattacks. Results go to stdout; the JSON
is written only when asked, with ``--output PATH`` (the committed results are
``benchmarks/<device>-<model>.json``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from adt.artifact.costs import check_counts, random_classifier_batch, time_call, time_train_steps
from adt.attack.functions import pgd
from adt.config.profiles import PROFILES, Profile, get_profile
from adt.core._checks import check_choice, check_int_at_least
from adt.core.commands import command_parser, int_at_least
from adt.core.io import write_json
from adt.core.models import MODELS
from adt.core.runtime import eval_mode, resolve_device

__all__ = ["benchmark_training", "benchmark_attacks", "format_table", "main"]


def benchmark_attacks(model_name: str = "small_cnn", *, batch_size: int = 256,
                      steps: int = 20, device: str | torch.device = "auto", warmup: int = 1,
                      repeats: int = 3, profile: Profile | None = None) -> dict[str, Any]:
    """Images/s of PGD-``steps`` with :func:`adt.attack.functions.pgd` and torchattacks' PGD, same model."""
    import torchattacks

    check_choice(model_name, MODELS, "model")
    check_int_at_least(batch_size, 1, "batch_size", "256")
    check_counts(warmup, steps, repeats)
    dev = resolve_device(device)
    profile = profile or get_profile("quick")
    model, x, y, spec = random_classifier_batch(model_name, batch_size, dev, profile, False)
    eps = spec.epsilon
    model.eval()
    attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    runs: dict[str, list[float]] = {"ours": [], "theirs": []}
    with eval_mode(model):
        # interleaved, so that drifts of the machine's speed hit both alike
        for _ in range(repeats):
            runs["ours"].append(time_call(lambda: pgd(model, x, y, epsilon=eps, step_size=eps / 4,
                                                  steps=steps), dev, warmup, 1, 1))
            runs["theirs"].append(time_call(lambda: attack(x, y), dev, warmup, 1, 1))
    ours, theirs = statistics.median(runs["ours"]), statistics.median(runs["theirs"])
    return {"model": model_name, "batch_size": batch_size, "steps": steps, "device": str(dev),
            "ours_images_per_second": batch_size / ours,
            "torchattacks_images_per_second": batch_size / theirs,
            "speedup": theirs / ours}


def _environment(dev: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(dev), "threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine()}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def format_table(rows: list[dict[str, Any]]) -> str:
    def f(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (f"{'method':32s} {'batch':>5s} {'img/s':>9s} {'passes':>6s} {'time/PGD':>8s} "
              f"{'passes/PGD':>10s} {'TFLOP/s':>8s} {'peak GiB':>8s}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['label']:32s} {r['batch_size']:5d} {r['images_per_second']:9.1f} "
                     f"{r['passes_per_image']:6d} {f(r['time_ratio_to_pgd'], '8.2f')} "
                     f"{f(r['pass_ratio_to_pgd'], '10.2f')} {r['tflops_per_second']:8.3g} "
                     f"{f(r['peak_memory_gib'], '8.2f')}")
    return "\n".join(lines)


def benchmark_training(model_name: str, batch_size: int, device: str, *, steps: int, warmup: int,
                       repeats: int, profile: Profile, output: Path | None,
                       model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run :func:`time_train_steps`, print the table and write the JSON; returns the result."""
    dev = resolve_device(device)
    rows = time_train_steps(profile, model_name=model_name, batch_size=batch_size, device=dev,
                            steps=steps, warmup=warmup, repeats=repeats,
                            model_kwargs=model_kwargs)
    result = {"kind": "training", "model": model_name,
              "model_kwargs": model_kwargs if model_kwargs is not None else
              (dict(profile.model_kwargs) if profile.model == model_name else {}),
              "profile_for_method_settings": profile.name, "environment": _environment(dev),
              "rows": rows}
    print(format_table(rows))
    ref = next((r for r in rows if r["method"] == "adt_exp_reference"), None)
    if ref:
        print(f"ADT_EXP speed-up over the reference-style step: {ref['our_speedup_over_this']:.2f}x")
    if output is not None:
        _write(result, output)
    return result


def _write(result: dict[str, Any], output: Path) -> None:
    print(f"wrote {write_json(result, output)}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: a bad value ends in a usage error (exit code 2)."""
    parser = command_parser("bench", __doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small_cnn", choices=sorted(MODELS),
                        help="the architecture timed")
    parser.add_argument("--width", type=int_at_least(1), default=None,
                        help="SmallCNN width (default: the quick profile's)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=128,
                        help="images per step")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the steps run (auto: CUDA if available)")
    parser.add_argument("--steps", type=int_at_least(1), default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int_at_least(0), default=2,
                        help="untimed steps before each repeat")
    parser.add_argument("--repeats", type=int_at_least(1), default=3,
                        help="interleaved repetitions of the timing")
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                        help="profile whose method settings (T, k, ngf, ...) are used")
    parser.add_argument("--attacks", action="store_true",
                        help="benchmark PGD-20 evaluation (ours vs torchattacks) instead")
    parser.add_argument("--output", default=None,
                        help="write the JSON here (e.g. benchmarks/cpu-small_cnn.json, the "
                             "committed results; default: print only)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available on this machine; use "
                     "--device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    profile = get_profile(args.profile)
    dev = resolve_device(args.device)
    output = None if args.output in (None, "none") else Path(args.output)
    if args.attacks:
        result = benchmark_attacks(args.model, batch_size=args.batch_size, device=dev,
                                   warmup=args.warmup, repeats=args.repeats, profile=profile)
        result["environment"] = _environment(dev)
        print(f"PGD-{result['steps']} on {args.model}, batch {args.batch_size}, {dev}: ours "
              f"{result['ours_images_per_second']:.1f} img/s, torchattacks "
              f"{result['torchattacks_images_per_second']:.1f} img/s, ratio "
              f"{result['speedup']:.2f}x")
        if output is not None:
            _write(result, output)
        return 0
    kwargs = {"width": args.width} if args.width and args.model == "small_cnn" else None
    benchmark_training(args.model, args.batch_size, args.device, steps=args.steps,
                       warmup=args.warmup, repeats=args.repeats, profile=profile, output=output,
                       model_kwargs=kwargs)
    return 0

