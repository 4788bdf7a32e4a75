"""Throughput benchmarks: what a training step of each method costs, and PGD evaluation speed.

    python -m adt.bench --model small_cnn --batch-size 128 --device cpu
    python -m adt.bench --model wrn --batch-size 128 --device cuda --steps 20
    python -m adt.bench --attacks --model small_cnn     # PGD-20: ours vs torchattacks

For every method the benchmark warms up, then times full training steps
(:func:`adt.train.train_step`: inner maximisation + classifier update) in one process,
and prints images/s, forward+backward passes of the classifier per image, the ratio
of the step time to PGD-AT's beside the ratio of pass counts, peak memory, and the
achieved TFLOP/s (FLOPs counted with ``torch.utils.flop_counter``'s formulas on one real step,
not guessed). It also times a *reference-style* ADT_EXP step written the way the
authors' release does it (k samples in a Python loop with ``retain_graph``, float32,
NCHW) so the speed-up is measured side by side. Results go to stdout; the JSON is
written only when asked, with ``--output PATH`` (the committed results are
``benchmarks/<device>-<model>.json``).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from adt._checks import check_choice, check_int_at_least
from adt.attacks import pgd
from adt.data import DATASETS
from adt.methods import LABELS, METHODS, build_maximizer
from adt.models import MODELS, build_model
from adt.profiles import PROFILES, Profile, get_profile
from adt.runtime import autocast, eval_mode, resolve_device
from adt.train import train_step

__all__ = ["time_train_steps", "cost_ratios", "reference_adt_exp_step",
           "benchmark_training", "benchmark_attacks", "main"]

#: The classifier shapes the benchmark knows, with the dataset whose images they take.
_MODEL_DATA = {"small_cnn": "mnist5k", "preact_resnet18": "cifar10", "wrn": "cifar10"}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_counts(warmup: int, steps: int, repeats: int) -> None:
    check_int_at_least(warmup, 0, "warmup", "2")
    check_int_at_least(steps, 1, "steps", "5")
    check_int_at_least(repeats, 1, "repeats", "3")


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int,
          repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` (after ``warmup`` calls)."""
    _check_counts(warmup, steps, repeats)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        _synchronize(device)
        per_call.append((time.perf_counter() - started) / steps)
    return statistics.median(per_call)


class _FlopCounter(TorchDispatchMode):
    """Sums the FLOPs of every matmul/convolution (forward and backward) that runs inside it,
    with the formulas of ``torch.utils.flop_counter``. (``FlopCounterMode`` itself tracks
    modules with hooks that break ``autograd.grad`` on leaf inputs, which attacks use.)"""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def _count_flops(fn: Callable[[], Any]) -> int:
    with _FlopCounter() as counter:
        fn()
    return counter.total


def reference_adt_exp_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                           y: torch.Tensor, *, epsilon: float, steps: int = 7,
                           num_samples: int = 5, lambda_: float = 0.01, lr: float = 0.3) -> None:
    """One ADT_EXP training step in the style of the authors' release, for comparison only.

    k Monte Carlo samples in a Python loop, each with its own forward and a
    ``backward(retain_graph=True)`` through the shared softplus, a torch Adam optimiser
    over (mu, v), float32 and NCHW throughout.
    """
    model.eval()
    mu = torch.zeros_like(x, requires_grad=True)
    v = torch.zeros_like(x, requires_grad=True)
    inner_opt = torch.optim.Adam([mu, v], lr=lr, betas=(0.0, 0.0))
    for _ in range(steps):
        inner_opt.zero_grad()
        sigma = F.softplus(v)
        for _ in range(num_samples):
            u = mu + sigma * torch.randn_like(x)
            x_adv = (x + epsilon * torch.tanh(u)).clamp(0.0, 1.0)
            entropy = (sigma.log() + torch.log(1 - torch.tanh(u) ** 2 + 1e-8)).mean()
            loss = -(F.cross_entropy(model(x_adv), y) + lambda_ * entropy) / num_samples
            loss.backward(retain_graph=True)
        inner_opt.step()
    model.train()
    with torch.no_grad():
        x_adv = (x + epsilon * torch.tanh(mu + F.softplus(v) * torch.randn_like(x))).clamp(0, 1)
    optimizer.zero_grad()
    F.cross_entropy(model(x_adv), y).backward()
    optimizer.step()


def _setup(model_name: str, batch_size: int, device: torch.device, profile: Profile,
           channels_last: bool, model_kwargs: dict[str, Any] | None = None
           ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Any]:
    spec = DATASETS[_MODEL_DATA[model_name]]
    c, h, _ = spec.image_shape
    kwargs = dict(model_kwargs if model_kwargs is not None else
                  (profile.model_kwargs if profile.model == model_name else {}))
    torch.manual_seed(0)
    model = build_model(model_name, c, spec.num_classes, h, **kwargs).to(device)
    x = torch.rand(batch_size, *spec.image_shape, device=device)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, y, spec


def time_train_steps(profile: Profile, methods: tuple[str, ...] = METHODS, *,
                     model_name: str | None = None, batch_size: int = 128,
                     device: str | torch.device = "auto", warmup: int = 2, steps: int = 5,
                     repeats: int = 3, fast_path: bool | None = None,
                     model_kwargs: dict[str, Any] | None = None,
                     reference: bool = True) -> list[dict[str, Any]]:
    """Time one training step of each method on random data; one row per method.

    ``fast_path`` (default: on for CUDA) is the trainer's: bf16 autocast (on CUDA only)
    and channels_last.
    """
    dev = resolve_device(device)
    fast = dev.type == "cuda" if fast_path is None else fast_path
    model_name = model_name or profile.model
    check_choice(model_name, MODELS, "model")
    check_int_at_least(batch_size, 1, "batch_size", "128")
    _check_counts(warmup, steps, repeats)
    amp = functools.partial(autocast, dev, fast)
    rows = []
    for method in methods:
        model, x, y, spec = _setup(model_name, batch_size, dev, profile, fast, model_kwargs)
        maximizer = build_maximizer(method, profile.methods, spec, spec.epsilon).to(dev)
        if fast:
            maximizer = maximizer.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = functools.partial(train_step, model.train(), maximizer, optimizer, x, y, amp)
        rows.append(_measure(LABELS[method], method, step, dev, warmup, steps, repeats,
                             batch_size, maximizer.passes_per_image))
    if reference and "adt_exp" in methods:
        model, x, y, spec = _setup(model_name, min(batch_size, 64), dev, profile, False,
                                   model_kwargs)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        s = profile.methods

        def ref_step() -> None:
            reference_adt_exp_step(model, optimizer, x, y, epsilon=spec.epsilon,
                                   steps=s.adt_steps, num_samples=s.adt_num_samples,
                                   lambda_=s.adt_lambda, lr=s.adt_lr)

        passes = build_maximizer("adt_exp", s, spec, spec.epsilon).passes_per_image
        rows.append(_measure("ADT_EXP (reference-style loop)", "adt_exp_reference", ref_step, dev,
                             warmup, steps, repeats, len(x), passes))
    _add_ratios(rows)
    return rows


def cost_ratios(profile: Profile | str, methods: tuple[str, ...] | list[str], *,
                baseline: str = "pgd_at", batch_size: int = 64, repeats: int = 5,
                steps: int = 3, warmup: int = 1, device: str | torch.device = "cpu",
                model_name: str | None = None) -> dict[str, list[float]]:
    """A controlled cost benchmark for the cost claims: per repetition, the ratio of each
    method's per-image training-step time to ``baseline``'s in the same repetition.

    Each method's model and maximiser (``profile``'s, on random data of its dataset's
    shape) are built once and warmed up with ``warmup`` steps. Then, ``repeats`` times, the
    methods take ``steps`` training steps (:func:`adt.train.train_step`) each, one method
    after the other, the order rotated by one place every repetition, so that drifts of the
    machine's speed (other work, heat, frequency) hit every method alike and the ratio is
    taken within a repetition. Returns method -> ``repeats`` ratios (``baseline``'s are
    exactly 1; it is timed even when not in ``methods``); :func:`adt.gates.cost_measured`
    judges whether the repetitions agree. The fast path (bf16 autocast, channels_last) is
    on for CUDA as in the trainer.
    """
    if isinstance(profile, str):
        profile = get_profile(profile)
    dev = resolve_device(device)
    fast = dev.type == "cuda"
    model_name = model_name or profile.model
    check_choice(model_name, MODELS, "model")
    check_int_at_least(batch_size, 1, "batch_size", "64")
    _check_counts(warmup, steps, repeats)
    order = list(dict.fromkeys([*methods, baseline]))
    for method in order:
        check_choice(method, METHODS, "method")
    amp = functools.partial(autocast, dev, fast)
    step_of: dict[str, Callable[[], Any]] = {}
    for method in order:
        model, x, y, spec = _setup(model_name, batch_size, dev, profile, fast)
        maximizer = build_maximizer(method, profile.methods, spec, spec.epsilon).to(dev)
        if fast:
            maximizer = maximizer.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step_of[method] = functools.partial(train_step, model.train(), maximizer, optimizer,
                                            x, y, amp)
        for _ in range(warmup):
            step_of[method]()
    ratios: dict[str, list[float]] = {m: [] for m in order}
    for rep in range(repeats):
        shift = rep % len(order)
        seconds = {m: _time(step_of[m], dev, 0, steps, 1) for m in order[shift:] + order[:shift]}
        for m in order:  # the same batch for every method: the per-image ratio is this one
            ratios[m].append(seconds[m] / seconds[baseline])
    return {m: ratios[m] for m in order}


def _measure(label: str, method: str, step: Callable[[], None], dev: torch.device, warmup: int,
             steps: int, repeats: int, batch_size: int, passes: int) -> dict[str, Any]:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = _time(step, dev, warmup, steps, repeats)
    flops = _count_flops(step)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return {"method": method, "label": label, "batch_size": batch_size,
            "step_seconds": seconds, "images_per_second": batch_size / seconds,
            "passes_per_image": passes, "flops_per_step": flops,
            "tflops_per_second": flops / seconds / 1e12, "peak_memory_gib": peak}


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["method"] == "pgd_at"), None)
    for r in rows:
        if base is None:
            r["time_ratio_to_pgd"] = r["pass_ratio_to_pgd"] = None
            continue
        per_image = r["step_seconds"] / r["batch_size"]
        base_per_image = base["step_seconds"] / base["batch_size"]
        r["time_ratio_to_pgd"] = per_image / base_per_image
        r["pass_ratio_to_pgd"] = r["passes_per_image"] / base["passes_per_image"]
    ours = next((r for r in rows if r["method"] == "adt_exp"), None)
    ref = next((r for r in rows if r["method"] == "adt_exp_reference"), None)
    if ours and ref:
        ref["our_speedup_over_this"] = ours["images_per_second"] / ref["images_per_second"]


def benchmark_attacks(model_name: str = "small_cnn", *, batch_size: int = 256,
                      steps: int = 20, device: str | torch.device = "auto", warmup: int = 1,
                      repeats: int = 3, profile: Profile | None = None) -> dict[str, Any]:
    """Images/s of PGD-``steps`` with :func:`adt.attacks.pgd` and torchattacks' PGD, same model."""
    import torchattacks

    check_choice(model_name, MODELS, "model")
    check_int_at_least(batch_size, 1, "batch_size", "256")
    _check_counts(warmup, steps, repeats)
    dev = resolve_device(device)
    profile = profile or get_profile("quick")
    model, x, y, spec = _setup(model_name, batch_size, dev, profile, False)
    eps = spec.epsilon
    model.eval()
    attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    runs: dict[str, list[float]] = {"ours": [], "theirs": []}
    with eval_mode(model):
        # interleaved, so that drifts of the machine's speed hit both alike
        for _ in range(repeats):
            runs["ours"].append(_time(lambda: pgd(model, x, y, epsilon=eps, step_size=eps / 4,
                                                  steps=steps), dev, warmup, 1, 1))
            runs["theirs"].append(_time(lambda: attack(x, y), dev, warmup, 1, 1))
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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: a bad count ends in a usage error (exit code 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small_cnn", choices=sorted(MODELS))
    parser.add_argument("--width", type=int, default=None,
                        help="SmallCNN width (default: the quick profile's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                        help="profile whose method settings (T, k, ngf, ...) are used")
    parser.add_argument("--attacks", action="store_true",
                        help="benchmark PGD-20 evaluation (ours vs torchattacks) instead")
    parser.add_argument("--output", default=None,
                        help="write the JSON here (e.g. benchmarks/cpu-small_cnn.json, the "
                             "committed results); default: print only")
    args = parser.parse_args(argv)
    for option, minimum in (("batch_size", 1), ("steps", 1), ("warmup", 0), ("repeats", 1),
                            ("width", 1)):
        value = getattr(args, option)
        if value is not None and value < minimum:
            parser.error(f"--{option.replace('_', '-')} {value} must be >= {minimum}")
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


if __name__ == "__main__":
    raise SystemExit(main())
