"""adt.evaluation.checkpoints and ``python -m adt.evaluate``: any checkpoint, the release's included.

A synthetic checkpoint in the release's layout (a tiny WRN-10-1 saved the way the release
saves it: wrapped, with DataParallel's ``module.`` prefix and the unused ``sub_block1``
copy) and synthetic CIFAR-10 files in torchvision's on-disk format stand in for the
authors' files, which are not in the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import randomised
from helpers_data import write_cifar10
from torch import nn

from adt.config.profiles import EvalSettings
from adt.core.models import PreActResNet18, SmallCNN, WideResNet
from adt.evaluation.checkpoints import (
    RELEASE_URL,
    infer_architecture,
    load_checkpoint,
    read_state_dict,
    released_models,
)
from adt.evaluation.cli import checkpoint_attacks, evaluate_released, main
from adt.training.runs import state_hash


def _release_blob(model: WideResNet, wrap: str = "state_dict") -> object:
    """A state_dict as the release saves it: ``module.`` keys, a ``sub_block1`` copy that
    differs from block1 (it is unused, so its values must not matter)."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    for k in [k for k in state if k.startswith("module.sub_block1.")]:
        state[k] = torch.full_like(state[k], 7)
    return {"bare": state, "state_dict": {"state_dict": state, "epoch": 76},
            "model": {"model": state}, "net": {"net": state}}[wrap]


@pytest.fixture(scope="module")
def wrn() -> WideResNet:
    torch.manual_seed(0)
    return randomised(WideResNet(depth=10, widen_factor=1, num_classes=10), bias_scale=1.0)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=1, n_test=6)
    return root


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "net"])
def test_a_release_layout_checkpoint_is_read_with_its_architecture(
        tmp_path: Path, wrn: WideResNet, wrap: str) -> None:
    path = tmp_path / "adt_exp.pt"
    torch.save(_release_blob(wrn, wrap), path)
    state, meta = read_state_dict(path)
    assert meta == {"layout": "release", "path": str(path)}
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    loaded = load_checkpoint(path, "cifar10")
    arch = loaded.architecture
    assert (arch.model, arch.kwargs["depth"], arch.kwargs["widen_factor"]) == ("wrn", 10, 1)
    assert arch.num_classes == 10 and arch.in_channels == 3 and loaded.layout == "release"
    assert str(arch).startswith("WRN-10-1, 10 classes")
    assert not loaded.model.training
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), wrn(x))
    # the file's sub_block1 is ignored: ours mirrors block1
    assert torch.equal(loaded.model.sub_block1.layer[0].conv1.weight, wrn.block1.layer[0].conv1.weight)


@pytest.mark.parametrize(("depth", "widen", "classes"), [(16, 2, 7), (22, 1, 100)])
def test_depth_widen_factor_and_classes_follow_from_the_shapes(
        depth: int, widen: int, classes: int) -> None:
    state = WideResNet(depth=depth, widen_factor=widen, num_classes=classes).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}  # may be absent
    arch = infer_architecture(state)
    assert arch.kwargs == {"depth": depth, "widen_factor": widen} and arch.num_classes == classes


def test_our_other_classifiers_are_recognised(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = randomised(SmallCNN(1, 10, width=4, hidden=8), bias_scale=1.0)
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")
    loaded = load_checkpoint(tmp_path / "cnn.pt", "mnist")
    assert loaded.architecture.kwargs == {"width": 4, "hidden": 8, "image_size": 28}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), cnn(x))
    arch = infer_architecture(PreActResNet18(3, 10).state_dict())
    assert arch.model == "preact_resnet18" and arch.num_classes == 10


def test_our_run_checkpoint_and_run_folder_load(tmp_path: Path, wrn: WideResNet) -> None:
    run = tmp_path / "paper" / "cifar10" / "adt_exp-seed0"
    run.mkdir(parents=True)
    identity = {"profile": "paper", "dataset": "cifar10", "method": "adt_exp", "seed": 0}
    # as adt.training.runs.save_checkpoint writes it: RNG states beside the weights
    torch.save({"format": 1, "identity": identity, "epoch": 3, "model": wrn.state_dict(),
                "maximizer": {}, "rng": {"numpy": __import__("numpy").random.get_state()}},
               run / "checkpoint.pt")
    for path in (run, run / "checkpoint.pt"):
        loaded = load_checkpoint(path, "cifar10")
        assert loaded.layout == "run" and loaded.path == run / "checkpoint.pt"
        assert loaded.meta == {**{k: identity[k] for k in ("profile", "dataset", "method",
                                                           "seed")}, "epoch": 3}
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(loaded.model(x), wrn(x))


def test_a_missing_file_says_what_to_download_and_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(tmp_path / "adt_exp.pt")
    message = str(info.value)
    assert "adt_exp.pt does not exist" in message and "into data/release/" in message
    assert "ADT_EXP-AM" in message and "adt-expam.pt" in message and "adt-impam.pt" in message
    assert f"wget -P data/release {RELEASE_URL}adt-exp.pt" in message
    assert "#pretrained-models" in message and "\n" not in message


@pytest.mark.parametrize("name", ["run.pt", "checkpoint.pt", "adt_exp-seed9"])
def test_a_missing_run_points_at_the_runs_not_at_the_release(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(tmp_path / name)
    message = str(info.value)
    assert "does not exist" in message and "data/archive/<profile folder>" in message
    assert "docs/models.md" in message and "adt.load_model(" in message
    assert "download" not in message  # the release's hint does not apply to a run


def test_a_folder_without_a_checkpoint_says_what_to_pass(tmp_path: Path, wrn: WideResNet) -> None:
    release = tmp_path / "release"
    release.mkdir()
    with pytest.raises(FileNotFoundError, match="without a checkpoint.pt or run.pt and no .pt "
                                                "file; download the authors' released"):
        load_checkpoint(release)  # the release's folder, empty: what to download
    torch.save(wrn.state_dict(), release / "adt-exp.pt")
    with pytest.raises(FileNotFoundError, match=r"it holds adt-exp.pt: pass one of them, e\.g\. "
                                                rf"--checkpoint {release}/adt-exp.pt"):
        load_checkpoint(release)
    other = tmp_path / "runs"
    other.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(other)
    assert "pass a run folder or a .pt file" in str(info.value)
    assert "download" not in str(info.value)


def test_another_architecture_is_named(tmp_path: Path) -> None:
    other = nn.Sequential()
    other.add_module("layer1", nn.Conv2d(3, 8, 3))
    other.add_module("fc", nn.Linear(8, 10))
    torch.save({"state_dict": other.state_dict()}, tmp_path / "resnet.pt")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "resnet.pt", "cifar10")
    message = str(info.value)
    assert "not supported" in message and "layer1" in message and "ResNet" in message
    assert "WideResNet in the release's layout" in message and "resnet.pt" in message


def test_a_non_state_dict_and_a_truncated_file_are_refused(tmp_path: Path,
                                                           wrn: WideResNet) -> None:
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save(wrn.state_dict(), tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt could not be read"):
        load_checkpoint(tmp_path / "cut.pt")


def test_the_wrong_number_of_classes_names_both(tmp_path: Path) -> None:
    torch.save(WideResNet(depth=10, widen_factor=1, num_classes=100).state_dict(),
               tmp_path / "c100.pt")
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path / "c100.pt", "cifar10")
    message = str(info.value)
    assert "100 classes" in message and "'cifar10' has 10" in message and "cifar100" in message
    assert load_checkpoint(tmp_path / "c100.pt", "cifar100").architecture.num_classes == 100


def test_the_weights_hash_covers_batchnorm_counters(wrn: WideResNet) -> None:
    other = WideResNet(depth=10, widen_factor=1, num_classes=10)
    other.load_state_dict(wrn.state_dict())
    assert state_hash(other) == state_hash(wrn)
    other.bn1.num_batches_tracked += 1  # a 0-dim tensor
    assert state_hash(other) != state_hash(wrn)


def test_attack_rows_are_picked_by_name() -> None:
    settings = EvalSettings()
    names = [s.name for s in checkpoint_attacks(settings, 8 / 255, 10)]
    assert names == ["Clean", "FGSM", "PGD-20", "PGD-100", "MIM", "C&W", "FeaAttack",
                     "APGD-CE+T+FAB-T", "AutoAttack", "SPSA"]  # AutoAttack standard, SPSA
    picked = checkpoint_attacks(settings, 8 / 255, 10, ["autoattack", "FGSM"])
    assert [s.name for s in picked] == ["FGSM", "APGD-CE+T+FAB-T", "AutoAttack"]
    with pytest.raises(ValueError, match="unknown attack.*'PGD-7'.*available: Clean, FGSM"):
        checkpoint_attacks(settings, 8 / 255, 10, ["PGD-7"])


def test_released_models_reports_presence_and_absence(tmp_path: Path, cifar_root: Path,
                                                      wrn: WideResNet) -> None:
    empty = released_models(tmp_path)
    assert not empty.ready and empty.files == ()
    summary = empty.summary()
    assert f"{tmp_path}/release/" in summary and "cifar-10-python.tar.gz" in summary
    assert f"{RELEASE_URL}adt-exp.pt" in summary
    shown = empty.summary(relative_to=tmp_path.parent)
    assert str(tmp_path.parent) not in shown and f"{tmp_path.name}/release/" in shown
    assert f"{tmp_path.name}/cifar-10-batches-py/" in shown
    with pytest.raises(FileNotFoundError, match="No released models"):
        evaluate_released(tmp_path)
    (cifar_root / "release").mkdir(exist_ok=True)
    torch.save(_release_blob(wrn), cifar_root / "release" / "adt_exp.pt")
    found = released_models(cifar_root)
    assert found.ready and [f.name for f in found.files] == ["adt_exp.pt"]
    assert "CIFAR-10 is present" in found.summary()
    tables = evaluate_released(cifar_root, attacks=["FGSM"], n_examples=4, sanity=False,
                               device="cpu")
    assert list(tables) == ["adt_exp"] and tables["adt_exp"].names == ["Clean", "FGSM"]
    assert (cifar_root / "release" / "adt_exp.eval.json").is_file()
    # reused while the weights and the protocol are the same
    again = evaluate_released(cifar_root, attacks=["FGSM"], n_examples=4, sanity=False,
                              device="cpu")
    assert again["adt_exp"].seconds == tables["adt_exp"].seconds


def test_the_command_line_end_to_end(tmp_path: Path, cifar_root: Path, wrn: WideResNet,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "release" / "adt_exp.pt"
    path.parent.mkdir()
    torch.save(_release_blob(wrn), path)
    out = tmp_path / "table.json"
    code = main(["--checkpoint", str(path), "--dataset", "cifar10", "--attacks", "FGSM",
                 "PGD-20", "--examples", "4", "--data-root", str(cifar_root), "--device", "cpu",
                 "--no-sanity", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "WRN-10-1, 10 classes" in printed and "release layout" in printed
    assert "| attack | kind | examples | accuracy (%) | time (s) |" in printed
    assert "| PGD-20 | white | 4 |" in printed and "| A_rob | worst case | 4 |" in printed
    blob = json.loads(out.read_text())
    assert blob["n_examples"] == 4 and list(blob["accuracy"]) == ["Clean", "FGSM", "PGD-20"]
    assert blob["epsilon"] == pytest.approx(8 / 255)
    assert blob["meta"]["checkpoint"] == str(path) and blob["meta"]["layout"] == "release"
    assert blob["meta"]["architecture"].startswith("WRN-10-1")
    for name, bits in blob["correct"].items():
        assert len(bits) == 4, name
    assert f"{100 * blob['robust_accuracy']:.2f}" in printed


@pytest.mark.parametrize(("argv", "expected"), [
    (["--checkpoint", "{tmp}/missing.pt"], "does not exist"),
    (["--checkpoint", "{tmp}/c100.pt"], "has 10"),
    (["--checkpoint", "{tmp}/ok.pt", "--attacks", "PGD-7"], "available: Clean"),
    (["--checkpoint", "{tmp}/ok.pt", "--data-root", "{tmp}/nowhere"], "cifar-10-python.tar.gz"),
    (["--checkpoint", "{tmp}/ok.pt", "--examples", "0"], "must be >= 1"),
    (["--checkpoint", "{tmp}/ok.pt", "--epsilon", "two"], "fraction such as 8/255"),
])
def test_the_command_line_refuses_bad_input(tmp_path: Path, wrn: WideResNet, argv: list[str],
                                            expected: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(wrn.state_dict(), tmp_path / "ok.pt")
    torch.save(WideResNet(depth=10, widen_factor=1, num_classes=100).state_dict(),
               tmp_path / "c100.pt")
    with pytest.raises(SystemExit) as info:
        main([a.format(tmp=tmp_path) for a in argv])
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
