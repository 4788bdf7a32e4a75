"""The training methods: their names, labels, colours, settings, and their maximisers.

Everything that names a method lives here; profiles, the trainer, the benchmark and the
notebooks import it.

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

from dataclasses import dataclass

from adt.core._checks import check_choice, check_int_at_least, check_nonnegative, check_positive
from adt.core.data import DatasetSpec
from adt.method.amortized import CONDITIONINGS, AmortizedExplicitADT, AmortizedImplicitADT
from adt.method.explicit import ExplicitADT
from adt.method.inner import PGD, TRADES, Clean, InnerMaximizer

__all__ = ["METHODS", "LABELS", "METHOD_COLORS", "MethodSettings", "build_maximizer"]

#: Training methods in the order of the paper's tables.
METHODS = ("standard", "pgd_at", "trades", "adt_exp", "adt_exp_am", "adt_imp_am")

#: How tables and figures name each method (the paper's names).
LABELS = {"standard": "Standard", "pgd_at": "AT (PGD)", "trades": "TRADES", "adt_exp": "ADT_EXP",
          "adt_exp_am": "ADT_EXP-AM", "adt_imp_am": "ADT_IMP-AM"}

#: One colour per method, the same in every figure.
METHOD_COLORS = {"standard": "#7f7f7f", "pgd_at": "#1f77b4", "trades": "#9467bd",
                 "adt_exp": "#d62728",
                 "adt_exp_am": "#ff7f0e", "adt_imp_am": "#2ca02c"}


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


def build_maximizer(method: str, settings: MethodSettings, spec: DatasetSpec,
                    epsilon: float) -> InnerMaximizer:
    """The inner maximiser of ``method`` with ``settings`` for images of dataset ``spec``
    at radius ``epsilon``."""
    check_choice(method, METHODS, "method")
    s = settings
    channels, size = spec.image_shape[0], spec.image_shape[1]
    if method == "standard":
        return Clean(epsilon)
    if method == "pgd_at":
        return PGD(epsilon, step_size=s.pgd_step_fraction * epsilon, steps=s.pgd_steps)
    if method == "trades":
        return TRADES(epsilon, step_size=s.trades_step_fraction * epsilon, steps=s.trades_steps,
                      beta=s.trades_beta)
    if method == "adt_exp":
        return ExplicitADT(epsilon, steps=s.adt_steps, num_samples=s.adt_num_samples,
                           lambda_=s.adt_lambda, lr=s.adt_lr, update=s.adt_update)
    if method == "adt_exp_am":
        return AmortizedExplicitADT(channels, epsilon, ngf=s.am_ngf, lambda_=s.am_lambda,
                                    lr=s.am_lr, conditioning=s.am_conditioning)
    return AmortizedImplicitADT(channels, size, epsilon, ngf=s.am_ngf, noise_dim=s.imp_noise_dim,
                                lambda_=s.imp_lambda, threshold=s.imp_threshold, lr=s.am_lr,
                                encoder_lr=s.am_lr, conditioning=s.am_conditioning)
