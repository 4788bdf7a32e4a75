"""The hot loops' contracts that the GPU fast path relies on, checked on the CPU.

- No host synchronisation inside a training step: no ``.item()``, ``bool(tensor)``,
  ``float(tensor)``, ``int(tensor)`` or ``.tolist()`` (each forces a device-to-host copy on
  CUDA). Counted by wrapping those methods during `train_step` of every method.
- Under bf16 autocast the distribution parameters, entropy terms and inner optimiser state
  stay float32 (CPU bf16 autocast runs the same code path as CUDA's).
- The `compile` profile switch trains to the same result as eager mode.
"""

import contextlib
import os
import sys

import pytest
import torch

from adt.config.profiles import get_profile
from adt.core.data import DATASETS
from adt.core.models import SmallCNN
from adt.method.explicit import ExplicitADT
from adt.method.methods import METHODS, build_maximizer
from adt.training.loop import train_step

SMOKE = get_profile("smoke")
SPEC = DATASETS["mnist5k"]
SYNCING = ("item", "__bool__", "__float__", "__int__", "tolist")


@contextlib.contextmanager
def count_host_syncs(counter: list[str]):
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def wrap(name):
        def call(self, *args, **kwargs):
            # torch.optim keeps each step counter on the CPU precisely so that reading it is
            # no device sync; the input check at a step's entry (adt/core/_checks.py) reads
            # one value back per batch, by design; every other read back counts.
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(os.path.join("adt", "core", "_checks.py")):
                counter.append(f"entry check: {name}")
            elif f"torch{os.sep}optim{os.sep}" not in caller:
                counter.append(name)
            return originals[name](self, *args, **kwargs)
        return call

    for name in SYNCING:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield counter
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10


@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_never_reads_a_value_back_to_the_host(method):
    torch.manual_seed(0)
    model = SmallCNN(width=4, hidden=16)
    maximizer = build_maximizer(method, SMOKE.methods, SPEC, SMOKE.train_epsilon)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _batch()
    train_step(model, maximizer, optimizer, x, y)  # warm-up (lazy state, first-call checks)
    with count_host_syncs([]) as calls:
        stats = train_step(model, maximizer, optimizer, x, y)
    assert calls == ["entry check: __bool__"], f"{method}: host syncs in the hot loop: {calls}"
    assert all(isinstance(v, torch.Tensor) for v in stats.values())


def test_the_counter_sees_a_sync():
    with count_host_syncs([]) as calls:
        float(torch.ones(()).sum())
        torch.ones(2).tolist()
    assert calls == ["__float__", "tolist"]


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_keeps_distributions_and_losses_float32(method):
    torch.manual_seed(0)
    model = SmallCNN(width=4, hidden=16)
    maximizer = build_maximizer(method, SMOKE.methods, SPEC, SMOKE.train_epsilon)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # autocast is really on
        adv = maximizer(model, x, y)
        stats = train_step(model, maximizer, torch.optim.SGD(model.parameters(), lr=0.01), x, y,
                           autocast=contextlib.nullcontext)
    assert adv.x.dtype == torch.float32
    assert adv.extra_loss is None or adv.extra_loss.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in adv.stats.values())
    assert all(torch.isfinite(v).all() for v in stats.values())
    optimizer = getattr(maximizer, "optimizer", None)  # the amortised generators' Adam
    for state in (optimizer.state.values() if optimizer is not None else ()):
        assert all(t.dtype == torch.float32 for t in state.values() if torch.is_tensor(t))


def test_bf16_autocast_explicit_adt_parameters_stay_float32():
    torch.manual_seed(0)
    model = SmallCNN(width=4, hidden=16).eval()
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dist = ExplicitADT(0.3, steps=2, num_samples=2).fit(model, x, y)
        delta = dist.rsample()
        entropy = dist.entropy_estimate(delta)
    assert dist.loc.dtype == dist.scale.dtype == delta.dtype == torch.float32
    assert entropy.total.dtype == entropy.per_pixel.dtype == torch.float32


def test_the_compile_switch_trains_to_the_same_weights(tmp_path):
    from adt.core.data import load_dataset
    from adt.training.loop import train

    data = load_dataset("mnist5k")
    profile = SMOKE.replace(train_examples=128, monitor_examples=32)
    eager = train(profile, "pgd_at", data=data, runs_root=tmp_path / "eager", progress=False)
    compiled = train(profile.replace(compile=True), "pgd_at", data=data,
                     runs_root=tmp_path / "compiled", progress=False)
    assert compiled.metrics["history"][-1]["loss"] == pytest.approx(
        eager.metrics["history"][-1]["loss"], rel=1e-4)
    for (name, a), b in zip(eager.model.state_dict().items(),
                            compiled.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
