"""The training methods: their names, labels, colours, settings, and their maximisers.

Everything that names a method lives here, one record each (:class:`Method`, in
:data:`REGISTRY`), read by :data:`METHODS`, :data:`LABELS`, :data:`METHOD_COLORS` and
:func:`build_maximizer`; profiles, the trainer, the benchmark and the notebooks import it.

| method       | label      | inner maximiser (``adt.method.inner``)          |
|--------------|------------|------------------------------------------|
| `standard`   | Standard   | :class:`Clean`                           |
| `pgd_at`     | AT (PGD)   | :class:`PGD`, Eq. (2)                    |
| `trades`     | TRADES     | :class:`TRADES` (Zhang et al., 2019)     |
| `adt_exp`    | ADT_EXP    | :class:`ExplicitADT`, Eq. (8)-(11)       |
| `adt_exp_am` | ADT_EXP-AM | :class:`AmortizedExplicitADT`, Sec. 3.2  |
| `adt_imp_am` | ADT_IMP-AM | :class:`AmortizedImplicitADT`, Sec. 3.3  |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adt.core._checks import check_choice, check_int_at_least, check_nonnegative, check_positive
from adt.core.data import DatasetSpec
from adt.method.amortized import CONDITIONINGS, AmortizedExplicitADT, AmortizedImplicitADT
from adt.method.explicit import ExplicitADT
from adt.method.inner import PGD, TRADES, Clean, InnerMaximizer

__all__ = ["Method", "REGISTRY", "METHODS", "LABELS", "METHOD_COLORS", "MethodSettings",
           "build_maximizer"]


@dataclass(frozen=True)
class MethodSettings:
    """The inner maximisation of every method, with the paper's symbols (the defaults are
    the release's: REPRODUCTION.md, "ADT_EXP as released" and the sections after it)."""

    pgd_steps: int = 7
    pgd_step_fraction: float = 0.25  # 2/255 at epsilon 8/255
    trades_steps: int = 10
    trades_step_fraction: float = 0.25
    trades_beta: float = 6.0
    adt_steps: int = 7  # T
    adt_num_samples: int = 5  # k
    adt_lambda: float = 0.01
    adt_lr: float = 0.3
    am_ngf: int = 256
    am_lambda: float = 0.01
    am_lr: float = 2e-4
    imp_noise_dim: int = 64
    imp_lambda: float = 1.0
    imp_threshold: float = 0.9
    adt_update: str = "running_sum"  # the release's; "per_step": the paper's text
    am_conditioning: str = "raw"  # the release's; "normalised": per-example scaled gradients

    def __post_init__(self) -> None:
        check_int_at_least(self.pgd_steps, 1, "pgd_steps", "7")
        check_positive(self.pgd_step_fraction, "pgd_step_fraction", "0.25")
        check_int_at_least(self.trades_steps, 1, "trades_steps", "10")
        check_positive(self.trades_step_fraction, "trades_step_fraction", "0.25")
        check_positive(self.trades_beta, "trades_beta", "6.0")
        check_int_at_least(self.adt_steps, 1, "adt_steps", "7")
        check_int_at_least(self.adt_num_samples, 1, "adt_num_samples", "5")
        check_int_at_least(self.am_ngf, 1, "am_ngf", "256")
        check_int_at_least(self.imp_noise_dim, 1, "imp_noise_dim", "64")
        for name, example in (("adt_lr", "0.3"), ("am_lr", "2e-4")):
            check_positive(getattr(self, name), name, example)
        for name, example in (("adt_lambda", "0.01"), ("am_lambda", "0.01"),
                              ("imp_lambda", "1.0"), ("imp_threshold", "0.9")):
            check_nonnegative(getattr(self, name), name, example)
        check_choice(self.adt_update, ExplicitADT.UPDATES, "adt_update")
        check_choice(self.am_conditioning, CONDITIONINGS, "am_conditioning")



def _standard(s: MethodSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return Clean(epsilon)


def _pgd_at(s: MethodSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return PGD(epsilon, step_size=s.pgd_step_fraction * epsilon, steps=s.pgd_steps)


def _trades(s: MethodSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return TRADES(epsilon, step_size=s.trades_step_fraction * epsilon, steps=s.trades_steps,
                  beta=s.trades_beta)


def _adt_exp(s: MethodSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return ExplicitADT(epsilon, steps=s.adt_steps, num_samples=s.adt_num_samples,
                       lambda_=s.adt_lambda, lr=s.adt_lr, update=s.adt_update)


def _adt_exp_am(s: MethodSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return AmortizedExplicitADT(spec.image_shape[0], epsilon, ngf=s.am_ngf, lambda_=s.am_lambda,
                                lr=s.am_lr, conditioning=s.am_conditioning)


def _adt_imp_am(s: MethodSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    channels, size = spec.image_shape[0], spec.image_shape[1]
    return AmortizedImplicitADT(channels, size, epsilon, ngf=s.am_ngf, noise_dim=s.imp_noise_dim,
                                lambda_=s.imp_lambda, threshold=s.imp_threshold, lr=s.am_lr,
                                encoder_lr=s.am_lr, conditioning=s.am_conditioning)


@dataclass(frozen=True)
class Method:
    """One training method: its name, how tables and figures name it (``label``, the
    paper's name) and colour it (the same in every figure), the class of its inner
    maximiser and the function that builds one from the settings. The maximiser's own
    trained networks, which data-parallel training wraps, are :attr:`networks`."""

    name: str
    label: str
    color: str
    maximizer: type[InnerMaximizer]
    build: Callable[[MethodSettings, DatasetSpec, float], InnerMaximizer]

    @property
    def networks(self) -> tuple[str, ...]:
        return self.maximizer.networks


#: The training methods by name, in the order of the paper's tables.
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("standard", "Standard", "#7f7f7f", Clean, _standard),
    Method("pgd_at", "AT (PGD)", "#1f77b4", PGD, _pgd_at),
    Method("trades", "TRADES", "#9467bd", TRADES, _trades),
    Method("adt_exp", "ADT_EXP", "#d62728", ExplicitADT, _adt_exp),
    Method("adt_exp_am", "ADT_EXP-AM", "#ff7f0e", AmortizedExplicitADT, _adt_exp_am),
    Method("adt_imp_am", "ADT_IMP-AM", "#2ca02c", AmortizedImplicitADT, _adt_imp_am),
)}

#: Training methods in the order of the paper's tables.
METHODS = tuple(REGISTRY)

#: How tables and figures name each method (the paper's names).
LABELS = {name: m.label for name, m in REGISTRY.items()}

#: One colour per method, the same in every figure.
METHOD_COLORS = {name: m.color for name, m in REGISTRY.items()}


def build_maximizer(method: str, settings: MethodSettings, spec: DatasetSpec,
                    epsilon: float) -> InnerMaximizer:
    """The inner maximiser of ``method`` with ``settings`` for images of dataset ``spec``
    at radius ``epsilon``."""
    check_choice(method, METHODS, "method")
    return REGISTRY[method].build(settings, spec, epsilon)
