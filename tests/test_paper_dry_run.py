"""Dry runs of the GPU profiles: the user's first GPU run must not be the first
time their code path executes.

The exact configuration of `paper` (WRN-28-10, the release's recipe and method settings:
ngf 256 generators, k = 5 samples, lambda, lrs, eps 8/255, crop + flip) and of `fashion`
(PreActResNet18 on 1-channel 28x28 images, ngf 64) runs on small synthetic files in the
CIFAR-10 and Fashion-MNIST on-disk formats: one training step of every method through
`adt.training.loop.train` (checkpoint included), then one evaluation batch of every model under the
paper's white-box attacks and AutoAttack `standard`. Only the sizes shrink (2 training images,
batch 2, 1 test image) and the iteration counts are cut to 1 (T, PGD and attack steps, Square
queries): the same code runs for 1 iteration as for 100. The `cifar` profile takes one
ADT_EXP training step on the same files: its only new combination is PreActResNet18 on
3-channel 32x32 images (the release's inner settings, ngf 256 generators included, run
above under `paper`; its evaluation is `fashion`'s code).
"""

import dataclasses

import pytest
import torch
from helpers_data import write_cifar10, write_idx_dataset

from adt.attack.spec import AttackSpec
from adt.config.profiles import get_profile
from adt.core.data import load_dataset
from adt.core.models import PreActResNet18, WideResNet
from adt.evaluation.engine import robustness_table
from adt.evaluation.protocol import white_box_attacks
from adt.method.methods import METHODS
from adt.training.loop import train

PAPER = get_profile("paper")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Overrides conftest's one-thread fixture: WRN-28-10 and PreActResNet18 steps are large
    enough for every core to pay (about 25 s less for this module on 2 cores)."""
    yield


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=1, n_test=2)
    write_idx_dataset(root / "FashionMNIST" / "raw", n_train=2, n_test=2, gz=True)
    return {"paper": load_dataset("cifar10", root=root),
            "fashion": load_dataset("fashion_mnist", root=root)}


def _dry(profile):
    return profile.replace(
        train_examples=2, monitor_examples=1, monitor_pgd_steps=1,
        recipe={"epochs": 1, "batch_size": 2, "batch_size_overrides": {}},
        methods={"adt_steps": 1, "pgd_steps": 1})


def _cheap(spec: AttackSpec) -> AttackSpec:
    cut = {k: 1 for k in ("steps", "queries", "targets") if k in spec.settings}
    return dataclasses.replace(spec, settings={**spec.settings, **cut})


def test_the_paper_profile_is_the_release_recipe():
    assert PAPER.dataset == "cifar10" and PAPER.model == "wrn"
    assert dict(PAPER.model_kwargs) == {"depth": 28, "widen_factor": 10}
    assert PAPER.eval.autoattack == "standard" and PAPER.train_epsilon == pytest.approx(8 / 255)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["paper", "fashion"])
def test_one_training_step_and_one_evaluation_batch(name, method, datasets, tmp_path):
    full = get_profile(name)
    data = datasets[name]
    run = train(_dry(full), method, data=data, device="cpu", runs_root=tmp_path, progress=False)
    record = run.metrics["history"][-1]
    assert run.finished and torch.isfinite(torch.tensor(record["loss"]))
    assert (run.path / "checkpoint.pt").is_file()
    if name == "paper":
        assert isinstance(run.model, WideResNet) and run.model.fc.out_features == 10
        assert run.model.block1.layer[0].conv1.out_channels == 160  # widen factor 10
    else:
        assert isinstance(run.model, PreActResNet18) and run.model.conv1.in_channels == 1
    if method in ("adt_exp_am", "adt_imp_am"):
        assert run.maximizer.generator.net[0].out_channels == full.methods.am_ngf
    attacks = [_cheap(s) for s in white_box_attacks(full.eval, full.train_epsilon)]
    version = "gradient" if full.eval.autoattack == "standard" else "cheap"
    assert any(s.settings.get("version") == version for s in attacks)
    assert any(s.survivors_of and s.attack.__name__ == "square" for s in attacks)
    table = robustness_table(run.model, data, attacks, n_examples=2, batch_size=1, sanity=False)
    assert set(table.accuracy) == {s.name for s in attacks}
    assert 0.0 <= table.robust_accuracy <= min(table.accuracy.values())


def test_the_cifar_profile_takes_a_training_step(datasets, tmp_path):
    full = get_profile("cifar")
    assert full.methods == PAPER.methods and full.train_epsilon == PAPER.train_epsilon
    run = train(_dry(full), "adt_exp", data=datasets["paper"], device="cpu",
                runs_root=tmp_path, progress=False)
    assert run.finished and torch.isfinite(torch.tensor(run.metrics["history"][-1]["loss"]))
    assert isinstance(run.model, PreActResNet18) and run.model.conv1.in_channels == 3
    assert run.model.fc.out_features == 10
