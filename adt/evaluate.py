"""The evaluation runner: attacks a model with a protocol and fills its robustness table.

:func:`robustness_table` runs a list of :class:`~adt.protocol.AttackSpec` on the first
``n`` test examples (eval mode, batched, on the model's device, bf16 autocast on CUDA),
plus the extra runs of the sanity checks (:mod:`adt.sanity`), and returns a
:class:`~adt.table.RobustnessTable` whose per-example correctness matrix every number
is recomputed from. A failed check is a warning
(:class:`~adt.sanity.GradientMaskingWarning`), a ``flags`` entry in the table, or an
error with ``strict=True``.

:func:`evaluate_run` evaluates a trained run with its profile's protocol and keeps the
result next to the checkpoint as ``eval.json``; :func:`pgd_accuracy` gives the points
of the accuracy curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adt._checks import check_int_at_least
from adt.checkpoints import LoadedCheckpoint, load_checkpoint, released_models
from adt.data import DATASETS, DatasetNotFoundError, ImageDataset, load_dataset, to_float
from adt.primitives import check_batch, correct_predictions
from adt.profiles import PROFILES, EvalSettings, Profile, get_profile
from adt.protocol import (
    CLEAN,
    AttackSpec,
    full_autoattack,
    pgd_spec,
    plain,
    standard_attacks,
    white_box_attacks,
)
from adt.runs import DEFAULT_RUNS_ROOT, Run, identity_hash, run_dir, run_identity, state_hash
from adt.runtime import autocast as bf16_autocast
from adt.runtime import device_of, isolated_rng, preserved_modes, resolve_device
from adt.sanity import SanityChecks, report, run_checks
from adt.table import EVAL_FILE, RobustnessTable, load_table

FULL_AUTOATTACK_FILE = "eval_full_autoattack.json"

__all__ = ["robustness_table", "evaluate_run", "full_autoattack_survivors",
           "full_autoattack_sample", "full_autoattack_gap", "eval_path",
           "run_fingerprint", "pgd_accuracy", "FULL_AUTOATTACK_FILE",
           "check_deterministic", "RandomizedModelError", "checkpoint_attacks",
           "evaluate_checkpoint", "evaluate_released", "main"]


def eval_path(profile: Profile, method: str, seed: int,
              runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """Where :func:`evaluate_run` keeps a run's table: next to its checkpoint."""
    return run_dir(profile, method, seed, runs_root) / EVAL_FILE


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
    x = to_float(x) if x.dtype == torch.uint8 else x
    check_batch(x, y)  # finite floats in [0, 1], one label each (one host sync)
    return x, y


def _checked_specs(attacks: Sequence[AttackSpec]) -> list[AttackSpec]:
    """The rows to evaluate: the clean row first (added when missing), unique names."""
    attacks = list(attacks)
    if not attacks or not all(isinstance(a, AttackSpec) for a in attacks):
        raise ValueError("attacks must be a non-empty list of AttackSpec; build one with "
                         "adt.protocol.standard_attacks(profile.eval, epsilon)")
    names = [a.name for a in attacks]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"attack names must be unique, {duplicated} repeat; rename the rows")
    if not any(a.kind == "clean" for a in attacks):
        attacks.insert(0, CLEAN)
    for i, a in enumerate(attacks):
        if a.survivors_of is not None and a.survivors_of not in names[:i]:
            raise ValueError(f"AttackSpec {a.name!r} runs on the survivors of "
                             f"{a.survivors_of!r}, which is not an earlier row; put that row "
                             "first")
    return attacks


class RandomizedModelError(ValueError):
    """The model's outputs differ between two identical calls (random transforms, dropout
    left on): white-box attacks would report a robustness it does not have."""


def check_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`RandomizedModelError` when two identical calls of ``model`` on ``x``
    disagree (one host sync)."""
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    gap = (first - second).abs().amax()
    if float(gap) > 1e-4 * (1.0 + float(first.abs().amax())):
        raise RandomizedModelError(
            f"the model's logits differ by up to {float(gap):.3g} between two identical calls "
            "in eval mode: it is randomised (random input transforms, or dropout left on). "
            "Gradient attacks on one draw overstate the robustness of such a model, so no "
            "robust accuracy is reported. Make it deterministic for evaluation, or attack it "
            "with expectation over transformation (average the gradients over many draws, "
            "Athalye et al. 2018) with your own AttackSpec.")


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


def _evaluate_row(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int, autocast: bool) -> torch.Tensor:
    """Per-example correctness under one attack; its outputs are checked against the
    epsilon ball and [0, 1] (one host sync per row)."""
    device = x.device
    n = len(x) if spec.n_examples is None else min(spec.n_examples, len(x))
    eps = spec.settings.get("epsilon", 0.0 if spec.attack is None else math.inf)
    excess = [torch.zeros((), device=device)]
    pool = {"target_pool": (x, y)} if spec.uses_pool else {}

    def attacked(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with bf16_autocast(device, autocast and not spec.float32):
            x_adv = spec(model, xb, yb, **pool)
        excess[0] = torch.maximum(excess[0], torch.stack([
            ((x_adv - xb).abs() - eps).amax(), -x_adv.amin(), x_adv.amax() - 1]).amax())
        return x_adv

    correct = correct_predictions(model, x[:n], y[:n], batch_size=batch_size, perturb=attacked,
                                  autocast=functools.partial(bf16_autocast, device, autocast))
    if float(excess[0]) > 1e-5:
        raise RuntimeError(f"attack {spec.name!r} returned images outside the epsilon={eps} ball "
                           f"or [0, 1] (by {float(excess[0]):.3g}); fix the attack function")
    return correct


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
    (:class:`~adt.sanity.GradientMaskingWarning`) or, with ``strict``, raises
    :class:`~adt.sanity.GradientMaskingError`.
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
        check_deterministic(model, x[:batch_size])
        for i, spec in enumerate(tqdm(specs, desc="attacks", disable=not progress)):
            started = time.perf_counter()
            if spec.survivors_of is None:
                row = _evaluate_row(model, spec, x, y, batch_size, autocast).cpu()
            else:  # a cascade: the earlier row AND this attack on that row's survivors
                row = correct[[s.name for s in specs].index(spec.survivors_of)].clone()
                alive = row.nonzero().squeeze(1)
                if len(alive):
                    index = alive.to(device)
                    row[alive] = _evaluate_row(model, spec, x[index], y[index], batch_size,
                                               autocast).cpu()
            correct[i, :len(row)] = row
            n_evaluated.append(len(row))
            seconds.append(time.perf_counter() - started)
    epsilons = {s.settings.get("epsilon") for s in specs if s.kind == "white"} - {None}
    table = RobustnessTable(
        [s.describe() for s in specs], correct, n_evaluated, seconds, sanity=checks, roles=roles,
        meta={"epsilon": epsilons.pop() if len(epsilons) == 1 else None,
              "model": type(model).__name__, "device": str(device),
              "autocast": autocast and device.type == "cuda", "batch_size": batch_size,
              "seed": seed, "torch": torch.__version__,
              "examples": f"the first {len(x)} test examples"})
    table.checks = run_checks(table)
    report(table, strict)
    return table


def _config(attacks: Sequence[AttackSpec], n_examples: int, checks: SanityChecks | None
            ) -> dict[str, Any]:
    return {"attacks": [a.describe() for a in attacks], "n_examples": n_examples,
            "sanity": None if checks is None else plain(checks.to_dict())}


def run_fingerprint(run: Run) -> dict[str, Any]:
    """What produced a run's weights: a hash of its identity (profile settings, method,
    seed; :func:`~adt.runs.run_identity`), method, seed, final epoch, and a hash of the
    model's state. A stored ``eval.json`` is reused only when all of these match."""
    history = run.metrics.get("history") or [{}]
    return {"profile_hash": identity_hash(run_identity(run.profile, run.method, run.seed)),
            "method": run.method, "seed": run.seed, "epoch": history[-1].get("epoch"),
            "state_hash": state_hash(run.model)}


def _stale_because(stored: RobustnessTable, config: dict[str, Any],
                   fingerprint: dict[str, Any]) -> str | None:
    """Why a stored table cannot stand for this run and protocol (None: it can)."""
    if stored.meta.get("config") != config:
        return "it was computed with other attacks, examples or checks"
    made_by = stored.meta.get("run_fingerprint")
    if not isinstance(made_by, dict):
        return "it does not record which run produced it"
    differing = [k for k in fingerprint if made_by.get(k) != fingerprint[k]]
    if differing:
        return ("it was computed for another run (differing: " + ", ".join(
            f"{k} {made_by.get(k)!r} vs {fingerprint[k]!r}" for k in differing) + ")")
    return None


def _stored_table(path: Path, config: dict[str, Any], fingerprint: dict[str, Any]
                  ) -> tuple[RobustnessTable | None, str]:
    """The table stored at ``path`` if it stands for this protocol and these weights, else
    None and why not (no file, unreadable, :func:`_stale_because`)."""
    if not path.is_file():
        return None, "there is none"
    try:
        stored = load_table(path)
    except ValueError as err:  # not JSON, not a table: named in the message
        return None, f"it cannot be read ({err})"
    why = _stale_because(stored, config, fingerprint)
    return (stored, "") if why is None else (None, why)


def evaluate_run(run: Run, data: ImageDataset | None = None, *,
                 sources: Mapping[str, nn.Module] | None = None, n_examples: int | None = None,
                 force: bool = False, strict: bool = False, autocast: bool = True,
                 progress: bool = True, black_box: bool = True) -> RobustnessTable:
    """The robustness table of a trained run under its profile's protocol
    (:func:`~adt.protocol.standard_attacks` at the profile's epsilon, transfer attacks
    from ``sources``; ``black_box=False``: the white-box rows only), saved as ``eval.json`` in the run directory with the run's
    :func:`run_fingerprint`. A stored table is loaded instead of attacking again only
    when it has the same attacks, examples and checks and was computed for this very run
    (same profile settings, method, seed, epoch and weights); otherwise it is recomputed,
    with a warning saying why (``force`` recomputes always). ``n_examples`` defaults to
    the profile's, capped at the test split."""
    profile = run.profile
    settings, epsilon = profile.eval, profile.train_epsilon
    num_classes = DATASETS[profile.dataset].num_classes
    attacks = (standard_attacks(settings, epsilon, num_classes=num_classes, sources=sources)
               if black_box else white_box_attacks(settings, epsilon, num_classes=num_classes))
    checks = SanityChecks.from_settings(settings, epsilon)
    path = run.path / EVAL_FILE
    if data is None:
        data = load_dataset(profile.dataset, device=device_of(run.model))
    n = min(settings.n_examples if n_examples is None else n_examples, len(data.x_test))
    config = _config(attacks, n, checks)
    fingerprint = run_fingerprint(run)
    if not force:
        stored, why = _stored_table(path, config, fingerprint)
        if stored is not None:
            report(stored, strict)
            return stored
        if path.is_file():
            warnings.warn(f"{path} is not reused: {why}; evaluating again", stacklevel=2)
    table = robustness_table(run.model, data, attacks, n, batch_size=settings.batch_size,
                             sanity=checks, autocast=autocast, progress=progress)
    table.meta.update(profile=profile.name, dataset=profile.dataset, method=run.method,
                      seed=run.seed, run=str(run.path), config=config,
                      run_fingerprint=fingerprint)
    table.save(path)
    if strict:
        report(table, strict=True)
    return table


def full_autoattack_sample(n_examples: int, k: int, seed: int) -> torch.Tensor:
    """The examples (sorted indices into a table's ``n_examples``) that the original
    AutoAttack reference covers for the run of seed ``seed``: all of them when ``k >=
    n_examples``, else a uniform random sample of ``k`` drawn with the seed, a different
    one per seed, so that pooled over seeds the reference represents the whole evaluation
    rather than its first images."""
    check_int_at_least(n_examples, 1, "n_examples", "500")
    check_int_at_least(k, 1, "full_autoattack_examples", "100")
    if k >= n_examples:
        return torch.arange(n_examples)
    generator = torch.Generator().manual_seed(1_000 + seed)
    return torch.randperm(n_examples, generator=generator)[:k].sort().values


def full_autoattack_survivors(run: Run, table: RobustnessTable, data: ImageDataset | None = None,
                              *, force: bool = False, autocast: bool = True,
                              progress: bool = True) -> torch.Tensor:
    """Per example of the run's reference sample (:func:`full_autoattack_sample`, of
    ``profile.eval.full_autoattack_examples`` of the ``table``'s examples): robust under
    every attack of its A_rob AND the original AutoAttack
    (:func:`~adt.protocol.full_autoattack`: APGD-CE, APGD-T and FAB-T at 100 iterations and
    9 targets, then Square at 5000 queries).

    The original AutoAttack runs only on the sampled examples that survive A_rob (the
    others are broken already), so the mean of ``table.worst_case()[sample]`` minus the
    mean of the result is exactly how much a profile's cheaper protocol overstates A_rob
    against the original on the sample. The result has the sample's length, in the order
    of :func:`full_autoattack_sample`. The run is kept as ``eval_full_autoattack.json``
    and reused while the survivors are the same.
    """
    profile = run.profile
    sample = full_autoattack_sample(table.n_examples, profile.eval.full_autoattack_examples,
                                    run.seed)
    survivors = table.worst_case()[sample]
    index = sample[survivors]
    out = torch.zeros_like(survivors)
    if len(index) == 0:
        return out
    if data is None:
        data = load_dataset(profile.dataset, device=device_of(run.model))
    device = device_of(run.model)
    x, y = _examples(data, table.n_examples, device)
    attacks = [CLEAN, *full_autoattack(profile.train_epsilon,
                                       DATASETS[profile.dataset].num_classes)]
    config = {**_config(attacks, len(index), None), "examples": index.tolist()}
    fingerprint = run_fingerprint(run)
    path = run.path / FULL_AUTOATTACK_FILE
    stored = None if force else _stored_table(path, config, fingerprint)[0]
    if stored is None:
        stored = robustness_table(run.model, (x[index.to(device)], y[index.to(device)]),
                                  attacks, batch_size=profile.eval.batch_size, sanity=False,
                                  autocast=autocast, progress=progress)
        stored.meta.update(profile=profile.name, method=run.method, seed=run.seed,
                           run=str(run.path), config=config, run_fingerprint=fingerprint)
        stored.save(path)
    out[survivors.nonzero().squeeze(1)] = stored.worst_case()
    return out


def full_autoattack_gap(runs: Sequence[Run], tables: Sequence[RobustnessTable],
                        data: ImageDataset | None = None, *, force: bool = False,
                        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A_rob and A_rob + the original AutoAttack (:func:`full_autoattack_survivors`) per
    example of every seed's reference sample, pooled over ``runs`` (one method's seeds, in
    the order of ``tables``): two boolean vectors of the same length, whose mean difference
    is how much A_rob overstates robustness against the original AutoAttack."""
    if len(runs) != len(tables) or not runs:
        raise ValueError(f"{len(runs)} runs and {len(tables)} tables: give one table per run "
                         "(and at least one)")
    on_sample, robust = [], []
    for run, table in zip(runs, tables, strict=True):
        sample = full_autoattack_sample(table.n_examples,
                                        run.profile.eval.full_autoattack_examples, run.seed)
        on_sample.append(table.worst_case()[sample])
        robust.append(full_autoattack_survivors(run, table, data, force=force,
                                                progress=progress))
    return torch.cat(on_sample), torch.cat(robust)


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 step_size: float, steps: int, batch_size: int = 500, autocast: bool = True,
                 seed: int = 0) -> float:
    """Accuracy of ``model`` (in eval mode, modes restored) under PGD with these settings;
    the points of the accuracy-vs-epsilon and accuracy-vs-steps curves."""
    device = device_of(model)
    check_batch(x, y)
    spec = pgd_spec("PGD", epsilon, step_size / epsilon, steps)
    with preserved_modes(model), isolated_rng(device, seed):
        model.eval()
        correct = _evaluate_row(model, spec, x.to(device), y.to(device), batch_size, autocast)
    return float(correct.float().mean())


# ----------------------------------------------------------------------------- any checkpoint

def checkpoint_attacks(settings: EvalSettings, epsilon: float, num_classes: int,
                       names: Sequence[str] | None = None) -> list[AttackSpec]:
    """The protocol's rows for a lone checkpoint (:func:`~adt.protocol.standard_attacks`:
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
    """The robustness table of any checkpoint (:func:`adt.checkpoints.load_checkpoint`:
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
    config = _config(specs, n, checks)
    fingerprint = {"state_hash": state_hash(loaded.model), "architecture": str(loaded.architecture),
                   "dataset": dataset}
    out = _default_output(loaded.path) if output is None else Path(output)
    stored = _stored_table(out, config, fingerprint)[0] if reuse else None
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
    (:func:`adt.checkpoints.released_models`)."""
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


def _parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m adt.evaluate",
        description="Evaluate any classifier checkpoint (the authors' released models, or a run "
                    "of this artifact) under the paper's attacks; writes the robustness table "
                    "as JSON and prints it.")
    parser.add_argument("--checkpoint", required=True,
                        help="a .pt file (e.g. data/release/adt_exp.pt) or a run folder")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS))
    parser.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                        help="rows to run, by name (default: all: Clean, FGSM, PGD-20, PGD-100, "
                             "MIM, C&W, FeaAttack, AutoAttack, SPSA)")
    parser.add_argument("--examples", type=int, default=None,
                        help="first N test images (default: the protocol's, at most the split)")
    parser.add_argument("--epsilon", type=_epsilon, default=None,
                        help="l_inf budget, e.g. 8/255 (default: the dataset's)")
    parser.add_argument("--protocol", default="paper", choices=sorted(PROFILES),
                        help="whose evaluation settings (steps, AutoAttack version, queries) to "
                             "use (default: paper, the full protocol with AutoAttack standard)")
    parser.add_argument("--data-root", default="data", help="where the dataset lives")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the protocol's (200)")
    parser.add_argument("--no-sanity", action="store_true",
                        help="skip the checks against false robustness and their extra runs")
    parser.add_argument("--output", default=None,
                        help="JSON file of the table (default: <checkpoint>.eval.json)")
    args = parser.parse_args(argv)
    for option in ("examples", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} {value} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available on this machine; use --device cpu")
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
                                sanity=not args.no_sanity, output=args.output, progress=True)
    print(f"\n{table.to_markdown()}\n")
    print(f"A_rob {100 * table.robust_accuracy:.2f}% on {table.n_examples} test images; wrote "
          f"{args.output or _default_output(loaded.path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
