"""Named experiment profiles: one validated, frozen dataclass each.

| profile   | where          | data, model                           | purpose                         |
|-----------|----------------|---------------------------------------|---------------------------------|
| `smoke`   | CPU, CI, nbval | mnist5k subset, SmallCNN, 1 epoch     | every cell runs, fast           |
| `quick`   | CPU            | mnist5k, SmallCNN                     | every table and figure, minutes |
| `fashion` | GPU            | Fashion-MNIST 60k, PreActResNet18     | real numbers at scale           |
| `cifar`   | one GPU        | CIFAR-10, PreActResNet18, 30 epochs   | the paper's claim, an afternoon |
| `paper`   | GPU            | CIFAR-10, WRN-28-10, release's recipe | the paper's tables              |

Step sizes of attacks are given as fractions of epsilon (the paper's 2/255 at 8/255
is 0.25), so a profile stays meaningful when its dataset (and epsilon) changes.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adt.attack.catalogue import ATTACK_SETTINGS
from adt.core._checks import (
    check_choice,
    check_epsilon,
    check_fraction,
    check_int_at_least,
    check_nonnegative,
    check_positive,
)
from adt.core.data import DATASETS
from adt.core.models import MODELS
from adt.method.methods import REGISTRY, MethodSettings

__all__ = ["Recipe", "EvalSettings", "Profile", "PROFILES", "get_profile"]

def _set(obj: Any, **values: Any) -> None:
    """Store checked values (plain Python numbers) on a frozen dataclass."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


#: Constructor arguments the trainer sets from the dataset (never from ``model_kwargs``).
_FROM_DATASET = ("self", "in_channels", "num_classes", "image_size")


def _check_model_kwargs(model: str, kwargs: Mapping[str, Any]) -> None:
    """Every key of ``model_kwargs`` is an argument of the model's constructor."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"model_kwargs={kwargs!r} must be a mapping of constructor arguments, "
                         "e.g. {'width': 16}")
    allowed = [name for name, p in inspect.signature(MODELS[model]).parameters.items()
               if name not in _FROM_DATASET and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"model_kwargs {unknown} are not arguments of model {model!r} "
                         f"({MODELS[model].__name__}); allowed: {allowed or 'none'}")


@dataclass(frozen=True)
class Recipe:
    """The outer minimisation: SGD with momentum and a step-decay schedule."""

    epochs: int = 76
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    # lr *= lr_gamma once this many epochs are done: (74,) runs epochs 75 and 76 (numbered
    # from 1) at 0.01, as the release does
    lr_milestones: tuple[int, ...] = (74,)
    lr_gamma: float = 0.1
    epsilon_warmup_epochs: int = 0  # linear ramp of the training epsilon over these epochs
    # linear ramp of the learning rate from lr/steps to lr over these epochs, step by step;
    # 0 (the release's): none
    lr_warmup_epochs: int = 0
    batch_size_overrides: Mapping[str, int] = field(default_factory=dict)  # method -> batch

    def __post_init__(self) -> None:
        _set(self, epochs=check_int_at_least(self.epochs, 1, "epochs", "76"),
             batch_size=check_int_at_least(self.batch_size, 1, "batch_size", "64"),
             lr=check_positive(self.lr, "lr", "0.1"),
             momentum=check_fraction(self.momentum, "momentum", "0.9"),
             weight_decay=check_nonnegative(self.weight_decay, "weight_decay", "2e-4"),
             lr_milestones=tuple(check_int_at_least(m, 1, "lr_milestones entry", "(74,)")
                                 for m in self.lr_milestones),
             lr_gamma=check_positive(self.lr_gamma, "lr_gamma", "0.1"),
             epsilon_warmup_epochs=check_int_at_least(
                 self.epsilon_warmup_epochs, 0, "epsilon_warmup_epochs", "0"),
             lr_warmup_epochs=check_int_at_least(self.lr_warmup_epochs, 0,
                                                 "lr_warmup_epochs", "1"))
        if self.lr_milestones and self.lr_warmup_epochs > min(self.lr_milestones):
            raise ValueError(f"lr_warmup_epochs={self.lr_warmup_epochs} runs past the first "
                             f"learning-rate decay (lr_milestones={self.lr_milestones}); "
                             "warm up for at most that many epochs")
        for method, batch in self.batch_size_overrides.items():
            check_choice(method, REGISTRY, "method in batch_size_overrides")
            check_int_at_least(batch, 1, f"batch_size_overrides[{method!r}]", "128")

    def batch_size_for(self, method: str) -> int:
        return self.batch_size_overrides.get(method, self.batch_size)


@dataclass(frozen=True)
class EvalSettings(*ATTACK_SETTINGS):
    """The evaluation protocol (REPRODUCTION.md, "Evaluation protocol"), sized per profile.

    Built from the settings of each attack of the protocol (their fields are inherited from
    :data:`adt.attack.catalogue.ATTACK_SETTINGS`: ``pgd_steps``, ``step_fraction``,
    ``mim_steps``, ``cw_steps``, ``cw_kappa``, ``fea_*``, ``autoattack*``,
    ``square_queries``, ``spsa_*``), and these, shared by every table and figure.
    """

    n_examples: int = 10_000
    batch_size: int = 200
    # also run the original AutoAttack on seed 0 and report the gap to it (CPU profiles
    # whose AutoAttack is cheaper than the original)
    full_autoattack_reference: bool = False
    full_autoattack_examples: int = 10_000  # the reference runs on survivors among these
    sanity_restarts: int = 5
    # dense where robust models' accuracy falls fastest (around and just above epsilon)
    curve_epsilon_multipliers: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0,
                                                    2.5, 3.0)
    curve_steps: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    figure_examples: int = 100  # Figure 1, Figure 2, attack power
    figure_samples: int = 100  # PGD restarts / distribution draws per example
    surface_grid: int = 61  # odd: the clean point is on the grid
    # the loss surfaces span +-surface_scale * epsilon along each axis (the paper's 10 eps
    # leaves the eps-box a small patch in the middle of a mostly clipped plane)
    surface_scale: float = 2.0
    hessian_iterations: int = 20

    def check(self) -> None:
        check_int_at_least(self.n_examples, 1, "n_examples", "1000")
        check_int_at_least(self.batch_size, 1, "eval batch_size", "200")
        for steps in self.curve_steps:
            check_int_at_least(steps, 1, "curve_steps", "20")
        check_positive(self.surface_scale, "surface_scale", "2.0")
        for name, example in (("sanity_restarts", "5"), ("figure_examples", "100"),
                              ("full_autoattack_examples", "200"),
                              ("figure_samples", "100"), ("surface_grid", "41"),
                              ("hessian_iterations", "20")):
            check_int_at_least(getattr(self, name), 1, name, example)
        for multiplier in self.curve_epsilon_multipliers:
            check_positive(multiplier, "curve_epsilon_multipliers entry", "1.0")


@dataclass(frozen=True)
class Profile:
    """Everything a notebook needs to train and evaluate every method on one dataset."""

    name: str
    description: str
    dataset: str
    model: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_examples: int | None = None  # None: the whole training split
    monitor_examples: int = 500  # test images for the per-epoch clean/PGD accuracy
    monitor_pgd_steps: int = 10
    epsilon: float | None = None  # None: the dataset's (REPRODUCTION.md)
    recipe: Recipe = field(default_factory=Recipe)
    methods: MethodSettings = field(default_factory=MethodSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    seeds: tuple[int, ...] = (0,)
    # seeds of the ablation runs of chapter 6; () runs none (quick: their cost goes to the
    # budget check instead)
    ablation_seeds: tuple[int, ...] = (0,)
    device: str = "auto"  # "auto": cuda when available, else cpu
    compile: bool = False  # torch.compile the classifier (meant for CUDA; works on any device)
    temporary_output: bool = False  # write figures to a temporary folder (smoke)

    def __post_init__(self) -> None:
        check_choice(self.dataset, DATASETS, "dataset")
        check_choice(self.model, MODELS, "model")
        if self.epsilon is not None:
            _set(self, epsilon=check_epsilon(self.epsilon))
        if self.train_examples is not None:
            _set(self, train_examples=check_int_at_least(self.train_examples, 1,
                                                         "train_examples", "4000"))
        _set(self, monitor_examples=check_int_at_least(self.monitor_examples, 1,
                                                       "monitor_examples", "500"),
             monitor_pgd_steps=check_int_at_least(self.monitor_pgd_steps, 1,
                                                  "monitor_pgd_steps", "10"))
        if not self.seeds:
            raise ValueError("seeds=() is empty; give at least one seed, e.g. (0,)")
        _set(self, seeds=tuple(check_int_at_least(seed, 0, "seed", "0") for seed in self.seeds))
        _set(self, ablation_seeds=tuple(check_int_at_least(seed, 0, "ablation seed", "0")
                                        for seed in self.ablation_seeds))
        check_choice(self.device, ("auto", "cpu", "cuda"), "device")
        _check_model_kwargs(self.model, self.model_kwargs)

    @property
    def train_epsilon(self) -> float:
        return self.epsilon if self.epsilon is not None else DATASETS[self.dataset].epsilon

    def replace(self, **changes: Any) -> Profile:
        """A copy with fields changed; nested settings take dicts: ``replace(recipe={'epochs': 2})``."""
        for key in ("recipe", "methods", "eval"):
            if isinstance(changes.get(key), Mapping):
                current = getattr(self, key)
                allowed = [f.name for f in dataclasses.fields(current)]
                unknown_nested = set(changes[key]) - set(allowed)
                if unknown_nested:
                    raise ValueError(f"unknown {key} field(s) {sorted(unknown_nested)}; "
                                     f"allowed: {allowed}")
                changes[key] = dataclasses.replace(current, **changes[key])
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown profile field(s) {sorted(unknown)}; allowed: "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def with_budget(self, factor: int) -> Profile:
        """The same schedule ``factor`` times as long (the "stable under budget" gate of
        ``adt.study.gates``): epochs, learning-rate milestones and the epsilon ramp scaled."""
        factor = check_int_at_least(factor, 1, "budget factor", "2")
        r = self.recipe
        return self.replace(recipe={
            "epochs": r.epochs * factor,
            "lr_milestones": tuple(m * factor for m in r.lr_milestones),
            "epsilon_warmup_epochs": r.epsilon_warmup_epochs * factor})

    def to_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if isinstance(obj, Mapping):
                return {k: plain(v) for k, v in obj.items()}
            if isinstance(obj, tuple | list):
                return [plain(v) for v in obj]
            return obj
        return plain({f.name: (dataclasses.asdict(getattr(self, f.name))
                               if dataclasses.is_dataclass(getattr(self, f.name))
                               else getattr(self, f.name)) for f in dataclasses.fields(self)})


_SMOKE = Profile(
    name="smoke",
    description="every cell runs on a CPU in seconds; numbers are meaningless",
    dataset="mnist5k", model="small_cnn", model_kwargs={"width": 8, "hidden": 32},
    train_examples=256, monitor_examples=64, monitor_pgd_steps=2,
    recipe=Recipe(epochs=1, batch_size=64, lr=0.05, lr_milestones=()),
    methods=MethodSettings(adt_steps=2, adt_num_samples=2, am_ngf=4, imp_noise_dim=8),
    eval=EvalSettings(n_examples=32, batch_size=32, pgd_steps=(2, 4), mim_steps=2, cw_steps=2,
                      fea_steps=2, fea_targets=2, autoattack="cheap", autoattack_steps=4,
                      autoattack_targets=2, square_queries=20, spsa_examples=8,
                      spsa_iterations=2, spsa_samples=16, sanity_restarts=2,
                      curve_epsilon_multipliers=(0.5, 1.0, 3.0), curve_steps=(1, 2, 4),
                      figure_examples=4, figure_samples=8, surface_grid=9,
                      hessian_iterations=4),
    temporary_output=True,
)

_QUICK = Profile(
    name="quick",
    description="every table and figure, 3 seeds, on a 2-core CPU (mnist5k, SmallCNN; "
                "the recipe chosen on held-out training images by adt.tune)",
    dataset="mnist5k", model="small_cnn", model_kwargs={"width": 16, "hidden": 100},
    monitor_examples=500,
    # benchmarks/tune-quick.json: the rule of adt.tune (baselines only, validation split)
    recipe=Recipe(epochs=8, batch_size=64, lr=0.02, lr_milestones=(6,),
                  epsilon_warmup_epochs=2, lr_warmup_epochs=1),
    # normalised generator input: the release's raw gradients are ~1e-4 of the pixels here
    # and the generators learn no attack from them (REPRODUCTION.md, ledger row b)
    methods=MethodSettings(am_ngf=8, am_conditioning="normalised"),
    # 200 test images per seed: robust models make every attack run on most images, and
    # three seeds of six models must fit the 2-core budget
    eval=EvalSettings(n_examples=200, batch_size=200, pgd_steps=(20, 100), fea_targets=3,
                      autoattack="cheap", autoattack_targets=3, square_queries=1000,
                      # the original AutoAttack on 40 random images of every seed (120 in all)
                      full_autoattack_reference=True, full_autoattack_examples=40,
                      spsa_examples=100, spsa_iterations=10, spsa_samples=64,
                      spsa_lr=0.1, sanity_restarts=2,
                      # standard and amortised models fall between 0.1 and 0.75 eps, AT
                      # and ADT_EXP between 1 and 1.5 eps: points every eps/8 there
                      curve_epsilon_multipliers=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875,
                                                 1.0, 1.125, 1.25, 1.375, 1.5, 2.0),
                      curve_steps=(1, 2, 5, 10, 20, 50), figure_examples=50,
                      figure_samples=50, surface_grid=41, hessian_iterations=20),
    seeds=(0, 1, 2),
    ablation_seeds=(),
)

# Fashion-MNIST on the CPU, sized like quick: the same network, inner settings and evaluation,
# the first 4,000 training images, the dataset's eps = 0.1 (REPRODUCTION.md, ledger row h2).
# Its recipe comes from the same rule as quick's (adt.tune on held-out training images):
# benchmarks/tune-fmnist.json; until that record exists it is quick's, and nothing is trained.
_FMNIST = _QUICK.replace(
    name="fmnist",
    description="the headline claims on a second dataset on a 2-core CPU (Fashion-MNIST, "
                "4,000 training images, eps 0.1, SmallCNN; the recipe chosen by adt.tune)",
    dataset="fashion_mnist", train_examples=4000,
)

_FASHION = Profile(
    name="fashion",
    description="real numbers at scale on one GPU (Fashion-MNIST 60k, PreActResNet18)",
    dataset="fashion_mnist", model="preact_resnet18", monitor_examples=1000,
    recipe=Recipe(epochs=10, batch_size=128, lr=0.1, lr_milestones=(8,),
                  epsilon_warmup_epochs=2),
    methods=MethodSettings(am_ngf=64),
    eval=EvalSettings(n_examples=2000, batch_size=500, fea_targets=10, spsa_examples=500),
    device="cuda",
)

_CIFAR = Profile(
    name="cifar",
    description="the paper's claim in an afternoon on one GPU (CIFAR-10, PreActResNet18, "
                "30 epochs, 3 seeds)",
    dataset="cifar10", model="preact_resnet18", monitor_examples=1000,
    # the release's batch sizes and SGD; the step decay at 80 % and 93 % of the 30 epochs
    recipe=Recipe(epochs=30, lr_milestones=(24, 28),
                  batch_size_overrides={"pgd_at": 128, "standard": 128}),
    # MethodSettings(): the release's inner settings (T = 7, k = 5, ngf 256, ...)
    eval=EvalSettings(n_examples=1000, batch_size=500, spsa_examples=200),
    seeds=(0, 1, 2),
    device="cuda",
)

_PAPER = Profile(
    name="paper",
    description="the release's recipe (CIFAR-10, WRN-28-10, 76 epochs); one GPU-day per method",
    dataset="cifar10", model="wrn", model_kwargs={"depth": 28, "widen_factor": 10},
    monitor_examples=1000,
    recipe=Recipe(batch_size_overrides={"pgd_at": 128, "standard": 128}),
    device="cuda",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (_SMOKE, _QUICK, _FMNIST, _FASHION, _CIFAR,
                                                    _PAPER)}


def get_profile(name: str | Profile, **overrides: Any) -> Profile:
    """A profile by name, optionally with fields replaced (see :meth:`Profile.replace`)."""
    profile = name if isinstance(name, Profile) else None
    if profile is None:
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}. "
                             "Pass one of these (notebook parameter `profile`, or "
                             "`make reproduce PROFILE=...`).")
        profile = PROFILES[name]
    return profile.replace(**overrides) if overrides else profile
