"""Throughput benchmarks: what a training step of each method costs, and PGD evaluation speed.

    python -m adt.bench --model small_cnn --batch-size 128 --device cpu
    python -m adt.bench --model wrn --batch-size 128 --device cuda --steps 20
    python -m adt.bench --attacks --model small_cnn     # PGD-20: ours vs torchattacks
    python -m adt.bench --paper-flops --output benchmarks/flops-paper.json

The command line of the benchmarks. For every method it times full training steps
(:func:`adt.artifact.costs.time_train_steps`: inner maximisation + classifier update, in one
process) and prints images/s, forward+backward passes of the classifier per image, the
ratio of the step time to PGD-AT's beside the ratio of pass counts, peak memory, and the
achieved TFLOP/s, with a *reference-style* ADT_EXP step (the release's way) timed side by
side; ``--attacks`` times PGD-20, ours against torchattacks. ``--paper-flops`` times nothing:
it counts the FLOPs of one training step of every method against PGD-AT's at the
configuration the paper states its cost claims at (:func:`paper_flops`: WRN-28-10, CIFAR-10
shapes, generators of width 256, the release's T, k and PGD/TRADES steps, counted on the
``meta`` device in seconds) beside the same count at ``--profile`` (default ``quick``, the
proxy the chapters judge), checking there that the meta count equals the CPU's. Results go
to stdout; the JSON is written only when asked, with ``--output PATH`` (the committed
results are ``benchmarks/<device>-<model>.json`` and ``benchmarks/flops-paper.json``).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adt.artifact.costs import (
    MODEL_DATA,
    PAPER_PROFILE,
    check_counts,
    random_classifier_batch,
    step_flops,
    time_call,
    time_train_steps,
)
from adt.attack.functions import pgd
from adt.config.profiles import PROFILES, Profile, get_profile
from adt.core._checks import check_choice, check_int_at_least
from adt.core.commands import command_parser, int_at_least
from adt.core.io import write_json
from adt.core.models import MODELS
from adt.core.runtime import eval_mode, resolve_device
from adt.method.methods import LABELS, METHODS, build_maximizer

__all__ = ["benchmark_training", "benchmark_attacks", "paper_flops", "count_configuration",
           "format_table", "format_flops_table", "main", "CLAIMED_RATIOS", "MARGIN_FACTOR"]

#: The cost claims of the paper (Sec. 3): ADT_EXP about k times AT per training step (None:
#: the configuration's k), the amortised variants about as much as AT.
CLAIMED_RATIOS: dict[str, float | None] = {"adt_exp": None, "adt_exp_am": 1.0,
                                           "adt_imp_am": 1.0}
#: Chapter 6's margin of a cost claim: |log(ratio / claimed)| < log MARGIN_FACTOR.
MARGIN_FACTOR = 1.5


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


def count_configuration(profile: Profile | str, batch_size: int,
                        model_name: str | None = None) -> dict[str, Any]:
    """What a count of :func:`~adt.artifact.costs.step_flops` was taken at: the classifier (its parameters, and
    those a training step updates: WRN's unused ``sub_block1`` is in the first number
    only), the input shape, the batch, and the inner settings that set the cost (T, k, the
    PGD and TRADES steps, the generators' width, conditioning and noise), with the
    parameters of each maximiser's own networks and its forward+backward passes of the
    classifier per image. Built on the ``meta`` device."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    model_name = model_name or profile.model
    meta = torch.device("meta")
    model, x, y, spec = random_classifier_batch(model_name, 1, meta, profile, False)
    F.cross_entropy(model(x), y).backward()
    s = profile.methods
    with meta:
        maximizers = {m: build_maximizer(m, s, spec, spec.epsilon) for m in METHODS}
    return {"profile": profile.name, "model": model_name,
            "model_kwargs": dict(profile.model_kwargs) if profile.model == model_name else {},
            "parameters": sum(p.numel() for p in model.parameters()),
            "parameters_trained": sum(p.numel() for p in model.parameters()
                                      if p.grad is not None),
            "dataset": MODEL_DATA[model_name], "input_shape": list(spec.image_shape),
            "num_classes": spec.num_classes, "batch_size": batch_size,
            "pgd_steps": s.pgd_steps, "trades_steps": s.trades_steps, "adt_steps_T": s.adt_steps,
            "adt_num_samples_k": s.adt_num_samples, "am_ngf": s.am_ngf,
            "am_conditioning": s.am_conditioning, "imp_noise_dim": s.imp_noise_dim,
            "maximizer_parameters": {m: sum(p.numel() for p in mx.parameters())
                                     for m, mx in maximizers.items()},
            "passes_per_image": {m: mx.passes_per_image for m, mx in maximizers.items()}}


def _counted(profile: Profile, batch_size: int, check_on_cpu: bool) -> dict[str, Any]:
    """One configuration's counts: FLOPs per step and ratio to PGD-AT per method, counted on
    the meta device (and, with ``check_on_cpu``, again on the CPU, which must agree)."""
    config = count_configuration(profile, batch_size)
    flops = step_flops(profile, METHODS, batch_size=batch_size, device="meta")
    entry: dict[str, Any] = {"configuration": config, "counted_on": "meta", "methods": {
        m: {"label": LABELS[m], "flops_per_step": flops[m],
            "ratio_to_pgd_at": flops[m] / flops["pgd_at"],
            "passes_per_image": config["passes_per_image"][m],
            "pass_ratio_to_pgd_at": config["passes_per_image"][m]
            / config["passes_per_image"]["pgd_at"]} for m in METHODS}}
    if check_on_cpu:
        real = step_flops(profile, METHODS, batch_size=batch_size, device="cpu")
        entry["meta_count_equals_cpu_count"] = real == flops
        if real != flops:
            raise RuntimeError(f"the meta count differs from the CPU count at profile "
                               f"{profile.name!r}: {flops} against {real}")
    return entry


def _claims(counts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cost claim with its claimed ratio and, per configuration, the counted ratio, the
    factor between them and whether it is within :data:`MARGIN_FACTOR`."""
    rows = []
    for method, claimed in CLAIMED_RATIOS.items():
        row: dict[str, Any] = {"method": method, "label": LABELS[method],
                               "claim": "about k times AT" if claimed is None
                               else "about as much as AT"}
        for name, entry in counts.items():
            target = (entry["configuration"]["adt_num_samples_k"] if claimed is None
                      else claimed)
            ratio = entry["methods"][method]["ratio_to_pgd_at"]
            factor = math.exp(abs(math.log(ratio / target)))
            row[name] = {"claimed_ratio": target, "ratio": ratio, "factor_from_claim": factor,
                         "within_margin": factor < MARGIN_FACTOR}
        rows.append(row)
    return rows


def paper_flops(proxy: Profile | str = "quick", *, batch_size: int | None = None,
                check_on_cpu: bool = True) -> dict[str, Any]:
    """The counted cost of a training step of every method against PGD-AT's, at the paper's
    configuration (the ``paper`` profile: WRN-28-10, CIFAR-10 shapes, ngf 256, the release's
    inner settings) and at ``proxy``'s, both on the same code path
    (:func:`adt.artifact.costs.step_flops`), each on its profile's training batch unless
    ``batch_size`` is given; with the cost claims against both. ``check_on_cpu``: count the
    proxy on the CPU too and fail unless the meta count equals it."""
    proxy = get_profile(proxy) if isinstance(proxy, str) else proxy
    paper = get_profile(PAPER_PROFILE)
    counts = {"paper": _counted(paper, batch_size or paper.recipe.batch_size, False),
              "proxy": _counted(proxy, batch_size or proxy.recipe.batch_size, check_on_cpu)}
    return {"kind": "flops_paper",
            "what": "FLOPs of one training step (adt.training.loop.train_step: inner "
                    "maximisation, generators and classifier update; every matmul and "
                    "convolution, forward and backward, torch.utils.flop_counter's formulas) "
                    "of each method over PGD-AT's, every method on the same batch",
            "environment": {"torch": torch.__version__, "python": platform.python_version()},
            **counts, "margin_factor": MARGIN_FACTOR, "claims": _claims(counts)}


def _config_text(config: dict[str, Any]) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in config["model_kwargs"].items())
    shape = "x".join(map(str, config["input_shape"]))
    return (f"{config['profile']}: {config['model']}({kwargs}), {config['parameters_trained']:,} "
            f"parameters, {config['dataset']} {shape}, batch {config['batch_size']}, "
            f"ngf {config['am_ngf']} ({config['am_conditioning']}), T={config['adt_steps_T']}, "
            f"k={config['adt_num_samples_k']}, PGD-{config['pgd_steps']}, "
            f"TRADES-{config['trades_steps']}")


def format_flops_table(result: dict[str, Any]) -> str:
    """The counts of :func:`paper_flops` as a text table: GFLOPs per step and the ratio to
    PGD-AT at the paper's configuration and at the proxy's, then the claims."""
    paper, proxy = result["paper"], result["proxy"]
    header = (f"{'method':12s} {'paper GFLOP/step':>16s} {'paper /AT':>9s} "
              f"{'proxy GFLOP/step':>16s} {'proxy /AT':>9s} {'paper passes /AT':>16s}")
    lines = [f"paper = {_config_text(paper['configuration'])}",
             f"proxy = {_config_text(proxy['configuration'])}", "", header, "-" * len(header)]
    for m in paper["methods"]:
        a, b = paper["methods"][m], proxy["methods"][m]
        lines.append(f"{a['label']:12s} {a['flops_per_step'] / 1e9:16.1f} "
                     f"{a['ratio_to_pgd_at']:9.3f} {b['flops_per_step'] / 1e9:16.3f} "
                     f"{b['ratio_to_pgd_at']:9.3f} {a['pass_ratio_to_pgd_at']:16.3f}")
    lines.append("")
    for c in result["claims"]:
        lines.append(f"{c['label']} {c['claim']}: " + "; ".join(
            f"{name} x{c[name]['ratio']:.2f} against x{c[name]['claimed_ratio']:g} (factor "
            f"{c[name]['factor_from_claim']:.2f}, within x{result['margin_factor']:g}: "
            f"{'yes' if c[name]['within_margin'] else 'no'})" for name in ("paper", "proxy")))
    return "\n".join(lines)


def _write(result: dict[str, Any], output: Path) -> None:
    print(f"wrote {write_json(result, output)}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: a bad value ends in a usage error (exit code 2)."""
    parser = command_parser("bench", __doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small_cnn", choices=sorted(MODELS),
                        help="the architecture timed")
    parser.add_argument("--width", type=int_at_least(1), default=None,
                        help="SmallCNN width (default: the quick profile's)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=None,
                        help="images per step (default: 128; --paper-flops: each profile's "
                             "training batch, 64)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the steps run (auto: CUDA if available)")
    parser.add_argument("--steps", type=int_at_least(1), default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int_at_least(0), default=2,
                        help="untimed steps before each repeat")
    parser.add_argument("--repeats", type=int_at_least(1), default=3,
                        help="interleaved repetitions of the timing")
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                        help="profile whose method settings (T, k, ngf, ...) are used "
                             "(--paper-flops: the proxy counted beside the paper's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--attacks", action="store_true",
                      help="benchmark PGD-20 evaluation (ours vs torchattacks) instead")
    mode.add_argument("--paper-flops", action="store_true",
                      help="count FLOPs per training step at the paper's configuration "
                           "(WRN-28-10, CIFAR-10, ngf 256) and at --profile instead of timing "
                           "(e.g. --output benchmarks/flops-paper.json)")
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
    if args.paper_flops:
        started = time.perf_counter()
        result = paper_flops(profile, batch_size=args.batch_size)
        print(format_flops_table(result))
        print(f"counted in {time.perf_counter() - started:.1f} s")
        if output is not None:
            _write(result, output)
        return 0
    args.batch_size = args.batch_size or 128
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

