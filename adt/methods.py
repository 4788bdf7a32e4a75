"""The five training methods by name, built from a profile's settings."""

from __future__ import annotations

from adt._checks import check_choice
from adt.data import DatasetSpec
from adt.inner import (
    PGD,
    AmortizedExplicitADT,
    AmortizedImplicitADT,
    Clean,
    ExplicitADT,
    InnerMaximizer,
)
from adt.profiles import METHODS, Profile

__all__ = ["METHODS", "LABELS", "build_maximizer"]

#: How tables and figures name each method (the paper's names).
LABELS = {"standard": "Standard", "pgd_at": "AT (PGD)", "adt_exp": "ADT_EXP",
          "adt_exp_am": "ADT_EXP-AM", "adt_imp_am": "ADT_IMP-AM"}


def build_maximizer(method: str, profile: Profile, spec: DatasetSpec,
                    epsilon: float | None = None) -> InnerMaximizer:
    """The inner maximiser of ``method`` with the profile's settings for dataset ``spec``."""
    check_choice(method, METHODS, "method")
    eps = profile.train_epsilon if epsilon is None else epsilon
    s = profile.methods
    channels, size = spec.image_shape[0], spec.image_shape[1]
    if method == "standard":
        return Clean(eps)
    if method == "pgd_at":
        return PGD(eps, step_size=s.pgd_step_fraction * eps, steps=s.pgd_steps)
    if method == "adt_exp":
        return ExplicitADT(eps, steps=s.adt_steps, num_samples=s.adt_num_samples,
                           lambda_=s.adt_lambda, lr=s.adt_lr)
    if method == "adt_exp_am":
        return AmortizedExplicitADT(channels, eps, ngf=s.am_ngf, lambda_=s.am_lambda, lr=s.am_lr)
    return AmortizedImplicitADT(channels, size, eps, ngf=s.am_ngf, noise_dim=s.imp_noise_dim,
                                lambda_=s.imp_lambda, threshold=s.imp_threshold, lr=s.am_lr)
