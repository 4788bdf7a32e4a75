"""adt.train: the run directory, reuse, exact resume, and bad inputs.

Everything trains on CPU (``device='cpu'``: resume is bit-exact there) under the
smoke profile, shrunk further where a test needs several epochs.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from adt.config.profiles import Profile, Recipe, get_profile
from adt.core.data import ImageDataset, load_dataset
from adt.core.io import read_json
from adt.training.loop import _warmup_lr, train
from adt.training.modules import load_run
from adt.training.runs import run_dir

CPU = "cpu"
METHOD = "adt_exp"  # the cheapest adversarial method on the smoke profile


@pytest.fixture(scope="module")
def mnist() -> ImageDataset:
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def smoke_run(mnist: ImageDataset, tmp_path_factory: pytest.TempPathFactory):
    """One finished smoke run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("runs")
    run = train(get_profile("smoke"), METHOD, data=mnist, runs_root=root, progress=False,
                device=CPU)
    return root, run


def _copy_run(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "runs")
    return tmp_path / "runs"


def _never(epoch: int, batch: int) -> None:
    raise AssertionError(f"trained (epoch {epoch}, batch {batch}) instead of reusing the run")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()
            if isinstance(v, torch.Tensor)}


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ----------------------------------------------------------------------------- outputs, reuse


def test_run_writes_checkpoint_and_metrics(smoke_run) -> None:
    root, run = smoke_run
    path = run_dir(get_profile("smoke"), METHOD, 0, root)
    assert run.path == path
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.pt", "metrics.json"]
    metrics = read_json(path / "metrics.json")
    assert metrics["finished"] is True and run.finished
    assert metrics["method"] == METHOD and metrics["dataset"] == "mnist5k"
    assert metrics["train_examples"] == 256
    (record,) = metrics["history"]  # smoke: one epoch, one record
    assert record["epoch"] == 1
    for key in ("loss", "clean_accuracy", "pgd_accuracy", "train_time_s"):
        assert math.isfinite(record[key]), key
    assert record["loss"] > 0 and record["train_time_s"] > 0
    assert 0 <= record["clean_accuracy"] <= 1 and 0 <= record["pgd_accuracy"] <= 1
    ckpt = torch.load(path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    _assert_same_tensors(ckpt["model"], _state(run.model))


def test_finished_run_is_reused(smoke_run, mnist: ImageDataset) -> None:
    root, first = smoke_run
    again = train(get_profile("smoke"), METHOD, data=mnist, runs_root=root, progress=False,
                  device=CPU, on_batch_end=_never)
    assert again.finished and again.metrics["history"] == first.metrics["history"]
    _assert_same_tensors(_state(again.model), _state(first.model))


def test_load_run_returns_the_finished_model(smoke_run) -> None:
    root, first = smoke_run
    loaded = load_run("smoke", METHOD, runs_root=root, device=CPU)
    assert loaded.finished and not loaded.model.training
    _assert_same_tensors(_state(loaded.model), _state(first.model))
    assert loaded.metrics["history"] == first.metrics["history"]
    with pytest.raises(FileNotFoundError, match="pgd_at"):
        load_run("smoke", "pgd_at", runs_root=root, device=CPU)


def test_force_retrain_trains_again(smoke_run, mnist: ImageDataset, tmp_path: Path) -> None:
    root = _copy_run(smoke_run[0], tmp_path)
    calls = []
    run = train(get_profile("smoke"), METHOD, data=mnist, runs_root=root, progress=False,
                device=CPU, force_retrain=True, on_batch_end=lambda e, b: calls.append((e, b)))
    assert calls == [(0, 0), (0, 1), (0, 2), (0, 3)]  # 256 examples, batches of 64
    assert run.finished and len(run.metrics["history"]) == 1


def test_checkpoint_of_other_settings_is_refused(smoke_run, mnist: ImageDataset,
                                                 tmp_path: Path) -> None:
    root = _copy_run(smoke_run[0], tmp_path)
    other = get_profile("smoke").replace(model_kwargs={"width": 4, "hidden": 16})
    # a variant trains in a folder of its own; a checkpoint of other settings found there
    # (copied by hand, or written before a change of the settings) is refused
    mine = run_dir(other, METHOD, 0, root)
    assert mine != run_dir(get_profile("smoke"), METHOD, 0, root)
    shutil.copytree(run_dir(get_profile("smoke"), METHOD, 0, root), mine)
    with pytest.raises(ValueError, match="force_retrain") as info:
        train(other, METHOD, data=mnist, runs_root=root, progress=False, device=CPU,
              on_batch_end=_never)
    assert "model_kwargs" in str(info.value)  # says what differs


def test_truncated_checkpoint_names_the_file(smoke_run, mnist: ImageDataset,
                                             tmp_path: Path) -> None:
    root = _copy_run(smoke_run[0], tmp_path)
    ckpt = run_dir(get_profile("smoke"), METHOD, 0, root) / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        train(get_profile("smoke"), METHOD, data=mnist, runs_root=root, progress=False,
              device=CPU, on_batch_end=_never)
    assert str(ckpt) in str(info.value)
    with pytest.raises(ValueError) as info:
        load_run("smoke", METHOD, runs_root=root, device=CPU)
    assert str(ckpt) in str(info.value)


# ----------------------------------------------------------------------------- exact resume


def _two_epochs() -> Profile:
    # 2 epochs of 2 batches (the first a learning-rate warm-up, which resume must reproduce);
    # fewer PGD steps and monitor images keep it cheap on 2 CPU cores
    return get_profile("smoke").replace(recipe={"epochs": 2, "batch_size": 32,
                                                "lr_warmup_epochs": 1},
                                        train_examples=64, monitor_examples=32,
                                        methods={"pgd_steps": 3})


class _Interrupt:
    """on_batch_end that raises KeyboardInterrupt after (epoch, batch)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def __call__(self, epoch: int, batch: int) -> None:
        if (epoch, batch) == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["pgd_at", "adt_exp_am"])
def test_interrupted_and_resumed_run_equals_uninterrupted(method: str, mnist: ImageDataset,
                                                          tmp_path: Path) -> None:
    profile = _two_epochs()
    whole = train(profile, method, data=mnist, runs_root=tmp_path / "whole", progress=False,
                  device=CPU)
    assert whole.finished and len(whole.metrics["history"]) == 2

    root = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(profile, method, data=mnist, runs_root=root, progress=False, device=CPU,
              on_batch_end=_Interrupt(epoch=1, batch=0))
    path = run_dir(profile, method, 0, root)
    # only the current epoch is lost, and no temporary file is left behind
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.pt", "metrics.json"]
    assert torch.load(path / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert len(read_json(path / "metrics.json")["history"]) == 1
    assert not read_json(path / "metrics.json")["finished"]

    calls = []
    resumed = train(profile, method, data=mnist, runs_root=root, progress=False, device=CPU,
                    on_batch_end=lambda e, b: calls.append((e, b)))
    assert calls == [(1, 0), (1, 1)]  # epoch 2 only
    assert resumed.finished
    _assert_same_tensors(_state(resumed.model), _state(whole.model))
    # the maximiser too: for adt_exp_am its generator (weights and BatchNorm statistics)
    _assert_same_tensors(_state(resumed.maximizer), _state(whole.maximizer))
    losses = [r["loss"] for r in resumed.metrics["history"]]
    assert losses == [r["loss"] for r in whole.metrics["history"]]
    for key in ("clean_accuracy", "pgd_accuracy"):
        assert [r[key] for r in resumed.metrics["history"]] == \
            [r[key] for r in whole.metrics["history"]]
    if method == "adt_exp_am":
        # the generator's Adam moments went through the checkpoint
        a = resumed.maximizer.optimizer.state_dict()["state"]
        b = whole.maximizer.optimizer.state_dict()["state"]
        assert a.keys() == b.keys() and len(a) > 0
        for k in a:
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(torch.as_tensor(a[k][name]), torch.as_tensor(b[k][name]))
    loaded = load_run(profile, method, runs_root=root, device=CPU)
    _assert_same_tensors(_state(loaded.model), _state(whole.model))


def test_the_learning_rate_warms_up_step_by_step_then_follows_the_schedule(
        mnist: ImageDataset, tmp_path: Path) -> None:
    recipe = Recipe(epochs=4, lr=0.1, lr_milestones=(3,), lr_warmup_epochs=2)
    lrs = [_warmup_lr(recipe, step, steps_per_epoch=5) for step in range(12)]
    assert lrs[:10] == pytest.approx([0.01 * (s + 1) for s in range(10)])
    assert lrs[9] == 0.1 and lrs[10] is None and lrs[11] is None  # the schedule's from here
    assert _warmup_lr(Recipe(epochs=4, lr=0.1, lr_milestones=(3,)), 0, 5) is None
    with pytest.raises(ValueError, match="lr_warmup_epochs=4 runs past"):
        Recipe(epochs=8, lr_milestones=(3,), lr_warmup_epochs=4)
    seen = []
    profile = _two_epochs()
    run = train(profile, "standard", data=mnist, runs_root=tmp_path, progress=False, device=CPU,
                on_batch_end=lambda e, b: seen.append(e))
    assert seen == [0, 0, 1, 1] and run.finished
    # the warm-up ended at the recipe's rate, which the second epoch keeps
    assert run.metrics["history"][1]["lr"] == pytest.approx(profile.recipe.lr)


def test_interrupt_while_saving_leaves_no_temp_file(mnist: ImageDataset, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the middle of writing the epoch-2 checkpoint keeps epoch 1's."""
    profile = _two_epochs()
    real_save, saves = torch.save, []

    def half_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # epoch 2: write some bytes, then get interrupted
            f.write(b"PK\x03\x04 partial")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", half_save)  # adt.core.io imports torch when saving
    with pytest.raises(KeyboardInterrupt):
        train(profile, "standard", data=mnist, runs_root=tmp_path, progress=False, device=CPU)
    monkeypatch.setattr(torch, "save", real_save)
    path = run_dir(profile, "standard", 0, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.pt", "metrics.json"]
    assert torch.load(path / "checkpoint.pt", weights_only=False)["epoch"] == 1


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_and_write_nothing(mnist: ImageDataset, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with pytest.raises(ValueError, match="nope") as info:
        train("smoke", "nope", data=mnist, runs_root=root, progress=False, device=CPU)
    for method in ("standard", "pgd_at", "adt_exp", "adt_exp_am", "adt_imp_am"):
        assert method in str(info.value)
    with pytest.raises(ValueError, match="nope") as info:
        train("nope", METHOD, data=mnist, runs_root=root, progress=False, device=CPU)
    for name in ("smoke", "quick", "fashion", "paper"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="imagenet") as info:
        train(get_profile("smoke", dataset="imagenet"), METHOD, data=mnist, runs_root=root,
              progress=False, device=CPU)
    assert "mnist5k" in str(info.value) and "cifar10" in str(info.value)
    with pytest.raises(ValueError, match="seed"):
        train("smoke", METHOD, seed=-1, data=mnist, runs_root=root, progress=False, device=CPU)
    assert not root.exists() or not any(root.rglob("*"))


def test_data_of_another_dataset_is_refused(tmp_path: Path) -> None:
    from adt.core.data import DATASETS

    fake = ImageDataset(DATASETS["cifar10"], torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                        torch.zeros(2), torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1))
    with pytest.raises(ValueError, match="cifar10"):
        train("smoke", METHOD, data=fake, runs_root=tmp_path, progress=False, device=CPU)
    assert not any(tmp_path.rglob("*"))
