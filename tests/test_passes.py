"""The cost of a training step: each maximiser's ``passes_per_image`` is what a step really
runs through the classifier (the cost unit of the paper's Sec. 4 and of the benchmark)."""

from __future__ import annotations

import pytest
import torch
from conftest import Recorder

from adt.config.profiles import get_profile
from adt.core.data import DATASETS
from adt.core.models import SmallCNN
from adt.method.methods import METHODS, MethodSettings, build_maximizer
from adt.training.loop import train_step

B = 8  # images per batch
SPEC = DATASETS["mnist5k"]


@pytest.mark.parametrize("method", METHODS)
def test_passes_per_image_counts_the_forward_passes_of_a_training_step(method: str) -> None:
    torch.manual_seed(0)
    model = Recorder(SmallCNN(width=4, hidden=16)).train()
    maximizer = build_maximizer(method, get_profile("smoke").methods, SPEC, 0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(B, 1, 28, 28), torch.arange(B) % 10
    train_step(model, maximizer, optimizer, x, y)
    assert model.sizes, "the classifier was never called"
    assert sum(model.sizes) / B == maximizer.passes_per_image, (method, model.sizes)


def test_release_settings_follow_the_paper() -> None:
    passes = {m: build_maximizer(m, MethodSettings(), SPEC, 0.3).passes_per_image
              for m in METHODS}
    assert passes["pgd_at"] == 8  # T + 1
    assert passes["adt_exp"] == 36  # T k + 1
    assert passes["standard"] == 1
    assert passes["adt_exp_am"] == 3  # g1 and g2 of the conditioning, then the training pass
    assert passes["adt_imp_am"] == 3  # the same conditioning as ADT_EXP-AM
