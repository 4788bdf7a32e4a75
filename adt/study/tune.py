"""Choosing a CPU profile's training recipe on held-out training images, never on the test set.

The rule is fixed before any result of an ADT method is read, and it looks at the
baselines only, so the method under test cannot steer it:

1. Hold out the last ``validation_examples`` training images as a validation split
   (:func:`validation_split`); train on the rest.
2. For every (learning rate, epochs) of the grid, train PGD-AT and TRADES (seed 0) with
   :func:`recipe_for`'s schedule, and measure each on the validation split under
   APGD-CE+T (AutoAttack's gradient attacks, the cheap version): the **score** of a
   setting is the mean of the two accuracies. The monitor of each run watches the
   validation images too.
3. A setting is **eligible** when both baselines pass the *flat_last_epochs* gate (named *converged* in the record) of
   :mod:`adt.study.gates` on their validation monitor (the last two epochs within 3 points, and
   trained: clean accuracy at least 0.5) **on every seed of the profile**. Seeds after the
   first are trained only for settings that pass on the first (a setting that fails one
   seed is not eligible whatever the others do); they are not scored.
4. The chosen setting is the cheapest eligible one (fewest epochs, then lowest learning
   rate) whose score is within ``tolerance`` (1 point) of the best eligible score; every
   method then trains with it. With no eligible setting, the rule says so and takes the
   cheapest within 1 point of the best of all.

``python -m adt.tune --profile quick`` runs the grid (reusing finished runs and their
validation results, ``validation.json`` in each run folder) and writes
``benchmarks/tune-<profile>.json``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adt.config.profiles import Profile, get_profile
from adt.core._checks import check_int_at_least
from adt.core.data import ImageDataset, load_dataset
from adt.core.io import read_json, write_json
from adt.evaluation.protocol import autoattack_specs
from adt.method.methods import METHODS
from adt.study.gates import flat_last_epochs
from adt.training.runs import DEFAULT_RUNS_ROOT

__all__ = ["GRID", "TUNED_ON", "validation_split", "recipe_for", "choose",
           "default_validation_examples", "tune", "output_path", "main"]

#: The grid of the quick profile's sweep: learning rates x epochs.
#: Five epochs are left out: with the decay over the last fifth, one epoch runs at the final
#: rate, and the *converged* gate needs two there, so no 5-epoch point can be eligible.
GRID: dict[str, tuple[Any, ...]] = {"lr": (0.02, 0.05, 0.1), "epochs": (8,)}
#: The methods the rule looks at: the baselines, never an ADT variant.
TUNED_ON = ("pgd_at", "trades")


def validation_split(data: ImageDataset, validation_examples: int) -> ImageDataset:
    """``data`` with its last ``validation_examples`` training images moved to the test
    split (the test images are dropped), so the trainer's monitor and every evaluation of
    this dataset see only held-out training images."""
    n = len(data.x_train)
    check_int_at_least(validation_examples, 1, "validation_examples", "1000")
    if validation_examples >= n:
        raise ValueError(f"validation_examples={validation_examples} leaves no training "
                         f"image of the {n}; hold out fewer, e.g. {n // 4}")
    keep = n - validation_examples
    return ImageDataset(data.spec, data.x_train[:keep], data.y_train[:keep],
                        data.x_train[keep:], data.y_train[keep:])


def recipe_for(epochs: int, lr: float) -> dict[str, Any]:
    """The schedule every grid point uses: the learning rate ramped up over the first
    epoch, the epsilon ramp over the first 2 epochs, the learning rate divided by 10 for
    the last fifth of the epochs (at least one), as the release's last two of 76. (The
    SmallCNN has no batch normalisation; without the warm-up, 2 of 6 of the first quick
    recipe's seed-2 runs died at chance in their first epoch: REPRODUCTION.md.)"""
    decay = max(1, round(epochs / 5))
    return {"epochs": epochs, "lr": lr, "lr_milestones": (epochs - decay,),
            "epsilon_warmup_epochs": 2, "lr_warmup_epochs": 1}


def choose(scores: dict[tuple[float, int], float], tolerance: float = 0.01,
           eligible: set[tuple[float, int]] | None = None) -> tuple[float, int]:
    """The rule (module docstring, steps 3-4): among the ``eligible`` grid points (all when
    None or when none is), the cheapest (fewest epochs, then lowest lr) whose score is
    within ``tolerance`` of the best."""
    if not scores:
        raise ValueError("no scores to choose from; run the grid first")
    pool = {k: v for k, v in scores.items() if k in eligible} if eligible else {}
    pool = pool or scores
    best = max(pool.values())
    near = [key for key, score in pool.items() if score >= best - tolerance]
    return min(near, key=lambda key: (key[1], key[0]))


def default_validation_examples(profile: Profile) -> int:
    """1000 held-out images, or a quarter of the profile's training images if it has fewer
    than 4000 (the smoke profile's 256)."""
    return 1000 if profile.train_examples is None else min(1000, profile.train_examples // 4)


def tune(profile: str | Profile = "quick", *, validation_examples: int | None = None,
         grid: dict[str, Sequence[Any]] | None = None, methods: Sequence[str] = TUNED_ON,
         seed: int = 0, runs_root: str | Path = DEFAULT_RUNS_ROOT, device: str = "cpu",
         progress: bool = False) -> dict[str, Any]:
    """Run the grid (module docstring) and return every point's validation accuracies,
    its score and the chosen setting."""
    from adt.evaluation.engine import robustness_table
    from adt.training.loop import train

    base = get_profile(profile)
    if validation_examples is None:
        validation_examples = default_validation_examples(base)
    grid = dict(grid or GRID)
    data = load_dataset(base.dataset, device=device)
    n_train = (base.train_examples or len(data.x_train))
    data = validation_split(data.subset(train=n_train), validation_examples)
    gradient, _ = autoattack_specs(base.eval, base.train_epsilon, data.spec.num_classes)
    points, scores, eligible = [], {}, set()
    for lr, epochs in itertools.product(grid["lr"], grid["epochs"]):
        variant = base.replace(train_examples=n_train - validation_examples,
                               monitor_examples=validation_examples,
                               recipe=recipe_for(epochs, lr))
        accuracy = {}
        for method in methods:
            run = train(variant, method, seed, data=data, device=device, runs_root=runs_root,
                        progress=progress)
            stored = run.path / "validation.json"
            if stored.is_file() and read_json(stored).get("attack") == gradient.describe():
                result = read_json(stored)
            else:
                table = robustness_table(run.model, data, [gradient], sanity=False,
                                         batch_size=base.eval.batch_size)
                result = {"attack": gradient.describe(),
                          "clean": float(table.row("Clean").float().mean()),
                          "robust": table.robust_accuracy}
                write_json(result, stored)
            accuracy[method] = {"clean": result["clean"], gradient.name: result["robust"],
                                "monitor_pgd": [h["pgd_accuracy"]
                                                for h in run.metrics["history"]],
                                "train_time_s": sum(h["train_time_s"]
                                                    for h in run.metrics["history"]),
                                "converged": flat_last_epochs(run.metrics["history"]).passed}
        converged_on = {method: [seed] for method in methods if accuracy[method]["converged"]}
        if len(converged_on) == len(methods):
            for other in base.seeds:
                if other == seed:
                    continue
                for method in methods:
                    run = train(variant, method, other, data=data, device=device,
                                runs_root=runs_root, progress=progress)
                    if flat_last_epochs(run.metrics["history"]).passed:
                        converged_on[method].append(other)
                    accuracy[method].setdefault("monitor_pgd_other_seeds", {})[other] = [
                        h["pgd_accuracy"] for h in run.metrics["history"]]
        for method in methods:
            accuracy[method]["converged_on_seeds"] = sorted(converged_on.get(method, []))
        score = sum(a[gradient.name] for a in accuracy.values()) / len(accuracy)
        scores[lr, epochs] = score
        if all(len(a["converged_on_seeds"]) == len(set(base.seeds) | {seed})
               for a in accuracy.values()):
            eligible.add((lr, epochs))
        points.append({"lr": lr, "epochs": epochs, "score": score, "accuracy": accuracy,
                       "eligible": (lr, epochs) in eligible})
        if progress:
            print(f"lr {lr:g}, {epochs} epochs: score {100 * score:.1f}", flush=True)
    lr, epochs = choose(scores, eligible=eligible)
    return {"profile": base.name, "seed": seed, "validation_examples": validation_examples,
            "train_examples": n_train - validation_examples, "methods": list(methods),
            "attack": gradient.describe(), "rule": __doc__.split("The rule")[1].strip(),
            "points": points, "any_eligible": bool(eligible),
            "chosen": {"lr": lr, "epochs": epochs,
                                         "recipe": recipe_for(epochs, lr)}}


def output_path(profile: str, methods: Sequence[str]) -> str:
    """benchmarks/tune-<profile>.json for the baselines' rule, and
    benchmarks/tune-<profile>-<methods>.json when the rule is applied to other methods (the
    fair trial applies it to ADT_EXP on its own validation score)."""
    suffix = "" if tuple(methods) == TUNED_ON else "-" + "-".join(methods)
    return f"benchmarks/tune-{profile}{suffix}.json"


def main(argv: list[str] | None = None) -> int:
    """``python -m adt.tune``: bad input ends in a usage error (exit code 2) before any work."""
    from adt.config.profiles import PROFILES
    from adt.core.commands import add_runs_root, command_parser, device_name, int_at_least
    from adt.core.runtime import resolve_device

    parser = command_parser("tune", __doc__)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose recipe is chosen")
    parser.add_argument("--validation-examples", type=int_at_least(1), default=None,
                        metavar="N", help="training images held out as the validation split "
                                          "(default: 1000, or a quarter of a smaller "
                                          "profile's training images)")
    parser.add_argument("--methods", nargs="+", default=list(TUNED_ON),
                        choices=[m for m in METHODS if m != "standard"],
                        help="the methods whose mean validation score the rule maximises "
                             "(the baselines chose the profiles' recipe; the fair trial "
                             "applies the same rule to adt_exp alone)")
    add_runs_root(parser, str(DEFAULT_RUNS_ROOT))
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--output", default=None,
                        help="JSON file (default: benchmarks/tune-<profile>.json)")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    profile = get_profile(args.profile)
    n_train = profile.train_examples
    if args.validation_examples is not None and n_train and args.validation_examples >= n_train:
        parser.error(f"--validation-examples {args.validation_examples} leaves no training "
                     f"image of profile {args.profile!r}'s {n_train}; hold out fewer, e.g. "
                     f"{default_validation_examples(profile)}")
    result = tune(args.profile, validation_examples=args.validation_examples,
                  methods=tuple(args.methods), runs_root=Path(args.runs_root) / "tune",
                  device=args.device, progress=True)
    output = write_json(result, args.output or output_path(args.profile, args.methods))
    print(f"chosen: lr {result['chosen']['lr']:g}, {result['chosen']['epochs']} epochs; "
          f"wrote {output}")
    return 0
