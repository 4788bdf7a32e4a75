"""How far an ADT model's learned distribution spreads: the ``sample_spread`` gate's measure.

:func:`spread_of_run` draws several samples of the learned distribution for the same image
and takes their mean pairwise l2 distance (as Figure 1 does), against uniform noise in the
epsilon-box on the same images; :func:`store_spread` keeps it beside the run's checkpoint as
``spread.json`` (the budget study measures every ADT run it evaluates).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adt.core.runtime import device_of, isolated_rng
from adt.study.analysis import (
    Sampler,
    implicit_sampler,
    mean_pairwise_l2,
    tanh_gaussian_sampler,
)

__all__ = ["learned_sampler", "spread_of_run", "store_spread", "SPREAD_FILE", "SPREAD_IMAGES"]


def learned_sampler(method: str, maximizer: Any, model: nn.Module, x: torch.Tensor,
                    y: torch.Tensor) -> Sampler:
    """The :data:`Sampler` of an ADT method's learned distribution for the batch ``(x, y)``:
    ADT_EXP's per-example tanh-Gaussian fitted by its inner solver (Eq. 6), ADT_EXP-AM's
    generator's tanh-Gaussian, ADT_IMP-AM's implicit generator (:func:`implicit_sampler`)."""
    maximizer.eval()
    if method == "adt_exp":
        with torch.enable_grad():
            return tanh_gaussian_sampler(maximizer.fit(model, x, y))
    if method == "adt_exp_am":
        return tanh_gaussian_sampler(maximizer.distribution(model, x, y))
    if method == "adt_imp_am":
        return implicit_sampler(maximizer, model, x, y)
    raise ValueError(f"method={method!r} learns no distribution; allowed: adt_exp, "
                     "adt_exp_am, adt_imp_am")


def spread_of_run(method: str, maximizer: Any, model: nn.Module, x: torch.Tensor,
                  y: torch.Tensor, epsilon: float, *, draws: int = 16,
                  seed: int = 0) -> dict[str, float]:
    """How far an ADT model's samples spread: the mean over the images ``x`` of the mean
    pairwise l2 distance of ``draws`` samples of the same image, and the same statistic for
    uniform noise in the epsilon-box on the same images (the control of the
    ``sample_spread`` gate). Seeded: the same numbers for the same weights."""
    generator = torch.Generator().manual_seed(seed)
    uniform = (torch.rand((draws, *x.shape), generator=generator) * 2 - 1) * epsilon
    with isolated_rng(x.device, seed):
        deltas = learned_sampler(method, maximizer, model, x, y)(draws)
    return {"spread": float(mean_pairwise_l2(deltas.detach()).mean()),
            "uniform": float(mean_pairwise_l2(uniform.to(x.device)).mean()),
            "images": len(x), "draws": draws}


SPREAD_FILE = "spread.json"
#: the images the spread is measured on: the first of the evaluation's
SPREAD_IMAGES = 50


def store_spread(run: Any, data: Any) -> dict[str, Any]:
    """The run's :func:`spread_of_run` on the first
    :data:`SPREAD_IMAGES` test images, kept as ``spread.json`` beside its checkpoint (reused
    while the weights are those that made it: :func:`run_fingerprint`)."""
    from adt.core.io import read_json, write_json
    from adt.evaluation.engine import evaluation_examples
    from adt.evaluation.stored import run_fingerprint

    path, fingerprint = run.path / SPREAD_FILE, run_fingerprint(run)
    if path.is_file():
        stored = read_json(path)
        if stored.get("run_fingerprint") == fingerprint:
            return stored
    x, y = evaluation_examples(data, SPREAD_IMAGES, device_of(run.model))
    result = spread_of_run(run.method, run.maximizer, run.model, x, y,
                           run.profile.train_epsilon)
    result["run_fingerprint"] = fingerprint
    write_json(result, path)
    return result
