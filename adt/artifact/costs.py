"""What a training step of each method costs, measured: one process times full training
steps (:func:`adt.training.loop.train_step`: inner maximisation + classifier update) after a
warm-up, in interleaved repetitions, and counts the classifier's forward+backward passes
per image and the FLOPs of one real step (``torch.utils.flop_counter``'s formulas).
:func:`time_train_steps` gives the rows (images/s, ratios to PGD-AT), :func:`cost_ratios`
the controlled ratios behind the cost claims; :func:`reference_adt_exp_step` is an ADT_EXP
step written the way the authors' release does it, timed side by side. The command line
is :mod:`adt.artifact.bench`.

Counted cost: :func:`step_flops` counts the FLOPs of a training step of each method,
:func:`flops_ratios` divides them by PGD-AT's. The count needs shapes only, so it runs on the
``meta`` device too (the same count, no arithmetic): :func:`paper_flops_ratios` counts the
paper's own configuration (the ``paper`` profile: WRN-28-10, ngf 256) so, on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakTensorKeyDictionary

from adt.config.profiles import Profile, get_profile
from adt.core._checks import check_choice, check_int_at_least
from adt.core.data import DATASETS
from adt.core.models import MODELS, build_model
from adt.core.runtime import autocast, resolve_device
from adt.method.methods import LABELS, METHODS, REGISTRY, build_maximizer
from adt.training.loop import train_step

__all__ = ["time_train_steps", "cost_ratios", "flops_ratios", "step_flops", "paper_flops_ratios",
           "PAPER_PROFILE", "reference_adt_exp_step", "MODEL_DATA", "check_counts", "time_call",
           "random_classifier_batch", "synchronize"]

#: The classifier shapes the benchmark knows, with the dataset whose images they take.
MODEL_DATA = {"small_cnn": "mnist5k", "preact_resnet18": "cifar10", "wrn": "cifar10"}

#: The profile whose configuration the paper states its cost claims at: WRN-28-10 on
#: CIFAR-10, batch 64, generators of width 256 fed raw gradients, the release's T, k and
#: PGD/TRADES steps (its :class:`~adt.method.methods.MethodSettings` are the defaults).
PAPER_PROFILE = "paper"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_counts(warmup: int, steps: int, repeats: int) -> None:
    check_int_at_least(warmup, 0, "warmup", "2")
    check_int_at_least(steps, 1, "steps", "5")
    check_int_at_least(repeats, 1, "repeats", "3")


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int,
              repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` (after ``warmup``
    calls), by ``clock`` (wall time; ``time.thread_time``: this thread's CPU time, which the
    load of other processes does not enter)."""
    check_counts(warmup, steps, repeats)
    for _ in range(warmup):
        fn()
    synchronize(device)
    per_call = []
    for _ in range(repeats):
        started = clock()
        for _ in range(steps):
            fn()
        synchronize(device)
        per_call.append((clock() - started) / steps)
    return statistics.median(per_call)


def _is_meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


class _FlopCounter(TorchDispatchMode):
    """Sums the FLOPs of every matmul/convolution (forward and backward) that runs inside it,
    with the formulas of ``torch.utils.flop_counter``. (``FlopCounterMode`` itself tracks
    modules with hooks that break ``autograd.grad`` on leaf inputs, which attacks use.)

    On the ``meta`` device tensors have shapes, all the formulas need, but no values to read
    back (``bool(t)``, ``t.item()``: a step's batch checks). So the counter keeps *shadows*:
    CPU tensors with the values of the meta tensors that derive only from the given
    ``shadows`` (the batch) and factories, each such op run again on them; a value read on
    meta comes from its shadow, as a real step reads it. A value derived from the weights
    has none, and reading it raises. A write that cannot be mirrored drops the shadows of
    every tensor sharing the written storage.
    """

    def __init__(self, shadows: dict[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.total = 0
        self.shadows = WeakTensorKeyDictionary()
        for tensor, shadow in (shadows or {}).items():
            self.shadows[tensor] = shadow

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and _is_meta(args[0]):
            return self._read(args[0])
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        inputs = [t for t in tree_leaves((args, kwargs)) if _is_meta(t)]
        if inputs or any(_is_meta(t) for t in tree_leaves(out)):
            self._mirror(func, args, kwargs, out, inputs)
        return out

    def _read(self, tensor: torch.Tensor) -> Any:
        shadow = self.shadows.get(tensor)
        if shadow is None:
            raise RuntimeError(
                "a value computed from the model's weights was read on the meta device (a "
                "data-dependent step: .item(), bool(), int() of a tensor); its FLOPs cannot be "
                "counted there: count this step on a real device (device='cpu')")
        return shadow.item()

    def _mirror(self, func: Any, args: Any, kwargs: Any, out: Any,
                inputs: list[torch.Tensor]) -> None:
        """Run ``func`` again on the shadows when each of its meta inputs has one (none: a
        factory) and it writes into no tensor of a real device; else forget the shadows of
        what it writes."""
        mutable = func._schema.is_mutable
        real = [t for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and not _is_meta(t)]
        if all(t in self.shadows for t in inputs) and not (mutable and real):
            def shadow(value: Any) -> Any:
                if _is_meta(value):
                    return self.shadows[value]
                if isinstance(value, torch.device) and value.type == "meta":
                    return torch.device("cpu")
                return value
            mirrored = func(*tree_map(shadow, args), **tree_map(shadow, kwargs))
            for tensor, value in zip(tree_leaves(out), tree_leaves(mirrored), strict=True):
                if _is_meta(tensor) and isinstance(value, torch.Tensor):
                    self.shadows[tensor] = value
            return
        if mutable:
            written = {t.untyped_storage()._cdata for t in inputs}
            for tensor in [t for t in self.shadows if t.untyped_storage()._cdata in written]:
                del self.shadows[tensor]


def _count_flops(fn: Callable[[], Any],
                 shadows: dict[torch.Tensor, torch.Tensor] | None = None) -> int:
    with _FlopCounter(shadows) as counter:
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


def random_classifier_batch(model_name: str, batch_size: int, device: torch.device, profile: Profile,
           channels_last: bool, model_kwargs: dict[str, Any] | None = None
           ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Any]:
    """A classifier of ``model_name`` (``profile``'s kwargs when it is the profile's model)
    and a random batch of its dataset's shape on ``device``, with the dataset's spec. On the
    ``meta`` device the classifier is built there directly (no initialisation is computed)."""
    spec = DATASETS[MODEL_DATA[model_name]]
    c, h, _ = spec.image_shape
    kwargs = dict(model_kwargs if model_kwargs is not None else
                  (profile.model_kwargs if profile.model == model_name else {}))
    torch.manual_seed(0)
    with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
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
    check_counts(warmup, steps, repeats)
    amp = functools.partial(autocast, dev, fast)
    rows = []
    for method in methods:
        model, x, y, spec = random_classifier_batch(model_name, batch_size, dev, profile, fast, model_kwargs)
        maximizer = build_maximizer(method, profile.methods, spec, spec.epsilon).to(dev)
        if fast:
            maximizer = maximizer.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = functools.partial(train_step, model.train(), maximizer, optimizer, x, y, amp)
        rows.append(_measure(LABELS[method], method, step, dev, warmup, steps, repeats,
                             batch_size, maximizer.passes_per_image))
    if reference and "adt_exp" in methods:
        model, x, y, spec = random_classifier_batch(model_name, min(batch_size, 64), dev, profile, False,
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
                model_name: str | None = None, threads: int | None = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """A controlled cost benchmark for the cost claims: per repetition, the ratio of each
    method's per-image training-step time to ``baseline``'s in the same repetition.

    Each method's model and maximiser (``profile``'s, on random data of its dataset's
    shape) are built once and warmed up with ``warmup`` steps. Then, ``repeats`` times, the
    methods take ``steps`` training steps (:func:`adt.training.loop.train_step`) each, one method
    after the other, the order rotated by one place every repetition, so that drifts of the
    machine's speed (other work, heat, frequency) hit every method alike and the ratio is
    taken within a repetition. Returns method -> ``repeats`` ratios (``baseline``'s are
    exactly 1; it is timed even when not in ``methods``); :func:`adt.study.gates.cost_measured`
    judges whether the repetitions agree. The fast path (bf16 autocast, channels_last) is
    on for CUDA as in the trainer. On a CPU the steps run on ``threads`` threads (None: as
    set): at one, the machine's other work (the notebook's kernel, the launcher) lands on
    the other cores rather than inside a timed step. ``clock``: as :func:`time_call`.
    """
    if isinstance(profile, str):
        profile = get_profile(profile)
    dev = resolve_device(device)
    fast = dev.type == "cuda"
    model_name = model_name or profile.model
    check_choice(model_name, MODELS, "model")
    check_int_at_least(batch_size, 1, "batch_size", "64")
    check_counts(warmup, steps, repeats)
    order = list(dict.fromkeys([*methods, baseline]))
    for method in order:
        check_choice(method, REGISTRY, "method")
    amp = functools.partial(autocast, dev, fast)
    step_of: dict[str, Callable[[], Any]] = {}
    for method in order:
        model, x, y, spec = random_classifier_batch(model_name, batch_size, dev, profile, fast)
        maximizer = build_maximizer(method, profile.methods, spec, spec.epsilon).to(dev)
        if fast:
            maximizer = maximizer.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step_of[method] = functools.partial(train_step, model.train(), maximizer, optimizer,
                                            x, y, amp)
        for _ in range(warmup):
            step_of[method]()
    ratios: dict[str, list[float]] = {m: [] for m in order}
    before = torch.get_num_threads()
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(check_int_at_least(threads, 1, "threads", "1"))
    try:
        for rep in range(repeats):
            shift = rep % len(order)
            seconds = {m: time_call(step_of[m], dev, 0, steps, 1, clock)
                       for m in order[shift:] + order[:shift]}
            for m in order:  # the same batch for every method: the per-image ratio is this one
                ratios[m].append(seconds[m] / seconds[baseline])
    finally:
        torch.set_num_threads(before)
    return {m: ratios[m] for m in order}


def step_flops(profile: Profile | str, methods: Sequence[str], *, batch_size: int = 64,
               model_name: str | None = None, device: str | torch.device = "cpu"
               ) -> dict[str, int]:
    """The FLOPs of one training step (:func:`adt.training.loop.train_step`) of each method:
    every matmul and convolution, forward and backward, inner maximisation and the maximiser's
    networks included, for ``profile``'s classifier and method settings on a random batch of
    its dataset's shape. On the ``meta`` device (no data) the count is the real one
    (``tests/test_costs_paper.py``) without the arithmetic: a WRN-28-10 step in seconds."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    model_name = model_name or profile.model
    check_choice(model_name, MODELS, "model")
    check_int_at_least(batch_size, 1, "batch_size", "64")
    dev = resolve_device(device)
    flops = {}
    for method in dict.fromkeys(methods):
        check_choice(method, REGISTRY, "method")
        model, x, y, spec = random_classifier_batch(model_name, batch_size, dev, profile, False)
        maximizer = build_maximizer(method, profile.methods, spec, spec.epsilon).to(dev)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        amp = functools.partial(autocast, dev, False)
        # on meta, a batch of the same kind (images in [0, 1], labels) holds the values a
        # step reads back (its checks): the counter's shadows
        shadows = {x: torch.rand(x.shape, dtype=x.dtype),
                   y: torch.randint(0, spec.num_classes, y.shape)} if dev.type == "meta" else None
        flops[method] = _count_flops(functools.partial(train_step, model.train(), maximizer,
                                                       optimizer, x, y, amp), shadows)
    return flops


def flops_ratios(profile: Profile | str, methods: Sequence[str], *, baseline: str = "pgd_at",
                 batch_size: int = 64, model_name: str | None = None,
                 device: str | torch.device = "cpu") -> dict[str, float]:
    """Counted cost: the FLOPs of one training step of each method (:func:`step_flops`, on
    the CPU or, the same count, ``device="meta"``) over ``baseline``'s, on the same batch. A
    count, not a timing: the same on every machine and run; the cost claims are judged on it."""
    flops = step_flops(profile, [*methods, baseline], batch_size=batch_size,
                       model_name=model_name, device=device)
    return {m: flops[m] / flops[baseline] for m in flops}


def paper_flops_ratios(methods: Sequence[str] = METHODS, *, baseline: str = "pgd_at",
                       batch_size: int | None = None) -> dict[str, float]:
    """:func:`flops_ratios` at the configuration the paper states its cost claims at
    (:data:`PAPER_PROFILE`: WRN-28-10, CIFAR-10 shapes, batch 64, generators of width 256 fed
    raw gradients, T = 7, k = 5, PGD-7, TRADES-10), on the ``meta`` device: seconds on a CPU.
    Per image (the release's larger PGD-AT batch changes no ratio per image)."""
    profile = get_profile(PAPER_PROFILE)
    return flops_ratios(profile, methods, baseline=baseline,
                        batch_size=batch_size or profile.recipe.batch_size, device="meta")


def _measure(label: str, method: str, step: Callable[[], None], dev: torch.device, warmup: int,
             steps: int, repeats: int, batch_size: int, passes: int) -> dict[str, Any]:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = time_call(step, dev, warmup, steps, repeats)
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
