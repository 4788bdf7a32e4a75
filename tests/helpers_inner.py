"""Small helpers for tests/test_inner.py: a call-recording classifier wrapper, a tiny trained model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from adt.data import load_dataset
from adt.models import SmallCNN


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a block with one intra-op thread, restoring the previous count afterwards.

    These tensors are tiny: with two threads on a shared 2-core machine the thread
    synchronisation costs far more than the arithmetic (tens of times slower under load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Recorder(nn.Module):
    """Wraps a classifier and records, for every forward call, the wrapper's mode, the
    wrapped model's mode and the batch size. ``fail_at=n`` raises on the n-th call."""

    def __init__(self, inner: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, self.inner.training, len(x)))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("failure injected by the test")
        return self.inner(x)

    @property
    def sizes(self) -> list[int]:
        return [n for _, _, n in self.calls]

    @property
    def modes(self) -> list[bool]:
        return [outer or inner for outer, inner, _ in self.calls]


def train_small_cnn(n_train: int = 2048, epochs: int = 2, seed: int = 0
                    ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A SmallCNN(width=8, hidden=32) trained with plain SGD on the first ``n_train`` images
    of mnist5k; returns ``(model in eval mode, test images, test labels)``."""
    data = load_dataset("mnist5k").subset(train=n_train)
    torch.manual_seed(seed)
    model = SmallCNN(width=8, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for epoch in range(epochs):
        for x, y in data.batches("train", 64, shuffle=True, seed=seed + epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    x_test, y_test = data.test_tensors(256)
    return model, x_test, y_test
