"""The stored tables of trained runs: :func:`evaluate_run` evaluates a run with its
profile's protocol and keeps the result next to the checkpoint as ``eval.json``, reused
while the run's weights and the protocol are those that made it (:func:`run_fingerprint`);
and the reference of the cheaper AutoAttack, the original AutoAttack on a random sample of
each run (``eval_full_autoattack.json``: :func:`full_autoattack_gap`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adt.attack.spec import CLEAN, AttackSpec, plain
from adt.config.profiles import Profile
from adt.core._checks import check_int_at_least
from adt.core.data import DATASETS, ImageDataset, load_dataset
from adt.core.runtime import device_of
from adt.evaluation.checks import SanityChecks
from adt.evaluation.engine import evaluation_examples, robustness_table
from adt.evaluation.protocol import (
    a_rob_cascade,
    full_autoattack,
    standard_attacks,
    white_box_attacks,
)
from adt.evaluation.sanity import report
from adt.evaluation.table import EVAL_FILE, RobustnessTable, load_table
from adt.training.runs import (
    DEFAULT_RUNS_ROOT,
    Run,
    identity_hash,
    run_dir,
    run_identity,
    state_hash,
)

FULL_AUTOATTACK_FILE = "eval_full_autoattack.json"
A_ROB_FILE = "eval_a_rob.json"

__all__ = ["evaluate_run", "evaluate_a_rob", "A_ROB_FILE", "full_autoattack_survivors", "full_autoattack_sample",
           "full_autoattack_gap", "eval_path", "run_fingerprint", "FULL_AUTOATTACK_FILE",
           "table_config", "reusable_table"]


def eval_path(profile: Profile, method: str, seed: int,
              runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """Where :func:`evaluate_run` keeps a run's table: next to its checkpoint."""
    return run_dir(profile, method, seed, runs_root) / EVAL_FILE



def table_config(attacks: Sequence[AttackSpec], n_examples: int, checks: SanityChecks | None
            ) -> dict[str, Any]:
    return {"attacks": [a.describe() for a in attacks], "n_examples": n_examples,
            "sanity": None if checks is None else plain(checks.to_dict())}


def run_fingerprint(run: Run) -> dict[str, Any]:
    """What produced a run's weights: a hash of its identity (profile settings, method,
    seed; :func:`~adt.training.runs.run_identity`), method, seed, final epoch, and a hash of the
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


def reusable_table(path: Path, config: dict[str, Any], fingerprint: dict[str, Any]
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
    (:func:`~adt.evaluation.protocol.standard_attacks` at the profile's epsilon, transfer attacks
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
    config = table_config(attacks, n, checks)
    fingerprint = run_fingerprint(run)
    if not force:
        stored, why = reusable_table(path, config, fingerprint)
        if stored is not None:
            report(stored, strict)
            return stored
        if path.is_file():
            warnings.warn(f"{path} is not reused: {why}; evaluating again", stacklevel=2)
    table = _attack_and_store(run, data, attacks, n, checks, path, config, fingerprint,
                              autocast=autocast, progress=progress)
    if strict:
        report(table, strict=True)
    return table


def evaluate_a_rob(run: Run, data: ImageDataset | None = None, *, force: bool = False,
                   autocast: bool = True, progress: bool = False) -> RobustnessTable:
    """The run's A_rob on its profile's evaluation images, by the cascade of
    :func:`~adt.evaluation.protocol.a_rob_cascade` (every white-box attack of the protocol,
    each on the survivors of the one before), kept as ``eval_a_rob.json`` beside the
    checkpoint and reused like :func:`evaluate_run`'s table. Its ``worst_case()`` is the
    per-example A_rob; its other rows are not per-attack accuracies."""
    profile = run.profile
    settings = profile.eval
    attacks = a_rob_cascade(settings, profile.train_epsilon,
                            num_classes=DATASETS[profile.dataset].num_classes)
    if data is None:
        data = load_dataset(profile.dataset, device=device_of(run.model))
    n = min(settings.n_examples, len(data.x_test))
    config, fingerprint = table_config(attacks, n, None), run_fingerprint(run)
    path = run.path / A_ROB_FILE
    stored = None if force else reusable_table(path, config, fingerprint)[0]
    if stored is not None:
        return stored
    return _attack_and_store(run, data, attacks, n, False, path, config, fingerprint,
                             autocast=autocast, progress=progress)


def _attack_and_store(run: Run, data: ImageDataset, attacks: Sequence[AttackSpec], n: int,
                      sanity: SanityChecks | bool, path: Path, config: dict[str, Any],
                      fingerprint: dict[str, Any], *, autocast: bool,
                      progress: bool) -> RobustnessTable:
    """Attack the run's model on the first ``n`` test images and keep the table at
    ``path`` with what made it (``config``, ``fingerprint``), for the reuse check."""
    profile = run.profile
    table = robustness_table(run.model, data, attacks, n, batch_size=profile.eval.batch_size,
                             sanity=sanity, autocast=autocast, progress=progress)
    table.meta.update(profile=profile.name, dataset=profile.dataset, method=run.method,
                      seed=run.seed, run=str(run.path), config=config,
                      run_fingerprint=fingerprint)
    table.save(path)
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
    (:func:`~adt.evaluation.protocol.full_autoattack`: APGD-CE, APGD-T and FAB-T at 100 iterations and
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
    x, y = evaluation_examples(data, table.n_examples, device)
    attacks = [CLEAN, *full_autoattack(profile.train_epsilon,
                                       DATASETS[profile.dataset].num_classes)]
    config = {**table_config(attacks, len(index), None), "examples": index.tolist()}
    fingerprint = run_fingerprint(run)
    path = run.path / FULL_AUTOATTACK_FILE
    stored = None if force else reusable_table(path, config, fingerprint)[0]
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
