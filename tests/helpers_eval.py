"""Shared models for the attack and evaluation tests: trained once per test process."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from adt.data import ImageDataset, load_dataset
from adt.models import SmallCNN


@functools.lru_cache(maxsize=1)
def trained_small_cnn() -> tuple[nn.Module, ImageDataset]:
    """A SmallCNN(width=8, hidden=32) after one epoch of SGD on mnist5k (about 80-90 %
    clean accuracy), in eval mode, and the data. Tests must not change it (restore any
    mode they set)."""
    data = load_dataset("mnist5k")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN(width=8, hidden=32)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for x, y in data.batches("train", 64, shuffle=True, seed=0):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), data


class Quantized(nn.Module):
    """Gradient masking by construction: the input is quantised to ``levels`` levels with
    torch.round, whose gradient is zero, so every gradient attack sees a flat loss while
    the model itself stays as (non-)robust as the one inside (at eps = 0.3 a perturbation
    easily crosses a level of 1/8)."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)
