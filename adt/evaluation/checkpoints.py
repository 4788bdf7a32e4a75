"""Classifier checkpoints of any origin: the authors' released models, our runs and the
committed model zoo.

:func:`load_checkpoint` reads a ``.pt`` file (or a run folder) and returns the classifier
it holds, its architecture read from the tensors' names and shapes
(:func:`infer_architecture`):

* a WideResNet in the release's layout (REPRODUCTION.md, "Checkpoint layout of the
  release"): depth 6n + 4 from the n blocks per stage, widen factor k from the first
  stage's width 16k, the classes from ``fc``; the unused ``sub_block1`` copy is ignored;
* our PreActResNet18 and SmallCNN.

A released file may be a bare ``state_dict`` or one wrapped under ``state_dict``,
``model``, ``net`` or ``model_state_dict``, its keys with the ``module.`` prefix of
``nn.DataParallel``; our runs' ``checkpoint.pt`` (:mod:`adt.training.runs`) and the committed
runs' ``run.pt`` (:mod:`adt.training.archive`) are recognised by their format, and their
identity (profile, dataset, method, seed, epochs) is kept. Every file is read with torch's
weights-only unpickler (:func:`adt.training.archive.load_tensors`): tensors, containers and
numbers, never an object that could run code.

:func:`load_model` loads a committed run by name (profile, method, seed, epochs), as
RobustBench's ``load_model`` does: ``docs/models.md`` lists them. :func:`released_models`
says whether the release's files (``<data root>/release/*.pt``) and CIFAR-10 are on disk,
and what to download where when they are not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adt.core.data import DATASETS, DatasetNotFoundError, load_dataset
from adt.core.models import MODELS
from adt.training.archive import (
    ARCHIVE_ROOT,
    ARCHIVED,
    UnsafeCheckpointError,
    find_archived,
    load_tensors,
)
from adt.training.runs import CHECKPOINT

__all__ = ["Architecture", "LoadedCheckpoint", "ReleaseStatus", "RELEASE_FOLDER", "SUPPORTED",
           "RELEASE_FILES", "read_state_dict", "infer_architecture", "check_dataset",
           "load_checkpoint", "load_model", "released_models", "download_hint"]

#: Where under the data root the release's files go.
RELEASE_FOLDER = "release"
#: The release's repository; its README ("Pretrained Models") links the trained models.
RELEASE_REPOSITORY = "https://github.com/dongyp13/Adversarial-Distributional-Training"
#: Where the release's README says the CIFAR-10 models are, and their files by method.
RELEASE_URL = "http://ml.cs.tsinghua.edu.cn/~yinpeng/downloads/ADT-models/"
RELEASE_FILES = {"ADT_EXP": "adt-exp.pt", "ADT_EXP-AM": "adt-expam.pt",
                 "ADT_IMP-AM": "adt-impam.pt"}
SUPPORTED = ("WideResNet in the release's layout (conv1, block1-3.layer.i, bn1, fc; any "
             "depth 6n+4 and widen factor), PreActResNet18 and SmallCNN of adt.core.models")
_WRAPPERS = ("state_dict", "model", "net", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel, torch.compile
_RUN_FOLDER = re.compile(r".+-seed\d+$")
#: Where the committed runs are and how to name one: the hint for a run that is not there.
COMMITTED_HINT = ("the committed runs are data/archive/<profile folder>/<dataset>/<method>-"
                  "seed<k> (a folder, or its run.pt), listed in docs/models.md; load one by "
                  "name with adt.load_model('quick', 'adt_exp', seed=0, epochs=8); your own "
                  "runs are data/runs/<profile folder>/<dataset>/<method>-seed<k>")


def download_hint(root: Path | str = "data") -> str:
    """What to download where for the authors' released CIFAR-10 models (one line)."""
    folder = Path(root) / RELEASE_FOLDER
    files = ", ".join(f"{name}" for name in RELEASE_FILES.values())
    return (f"download the authors' released CIFAR-10 models (WideResNet-28-10 of ADT_EXP, "
            f"ADT_EXP-AM and ADT_IMP-AM: {files}, linked from {RELEASE_REPOSITORY}"
            f"#pretrained-models) into {folder}/, e.g. wget -P {folder} "
            f"{RELEASE_URL}{RELEASE_FILES['ADT_EXP']} (any name ending in .pt is read)")


def _is_run_path(path: Path) -> bool:
    """Whether ``path`` names one of our runs (a run folder, its checkpoint.pt or run.pt)."""
    return path.name in (CHECKPOINT, ARCHIVED) or bool(_RUN_FOLDER.match(path.name))


def _missing_hint(path: Path) -> str:
    """The hint for a checkpoint that is not there: where our runs are for a run's path,
    what to download where for any other ``.pt``."""
    if _is_run_path(path):
        return COMMITTED_HINT
    return f"{download_hint()}; or pass a run of this artifact ({COMMITTED_HINT})"


def _folder_problem(path: Path) -> str:
    """Why the folder ``path`` cannot be read, and what to pass instead."""
    files = sorted(p.name for p in path.glob("*.pt"))
    what = f"{path} is a folder without a {CHECKPOINT} or {ARCHIVED}"
    if files:
        return (f"{what}; it holds {', '.join(files[:6])}: pass one of them, e.g. "
                f"--checkpoint {path / files[0]}")
    if path.name == RELEASE_FOLDER:
        return f"{what} and no .pt file; {download_hint(path.parent)}"
    return f"{what}; pass a run folder or a .pt file: {COMMITTED_HINT}"


@dataclass(frozen=True)
class Architecture:
    """A classifier of :data:`adt.core.models.MODELS`: its registry name and constructor
    arguments (``kwargs``: depth and widen_factor, or width, hidden and image_size)."""

    model: str
    in_channels: int
    num_classes: int
    kwargs: Mapping[str, int] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return MODELS[self.model](in_channels=self.in_channels, num_classes=self.num_classes,
                                  **self.kwargs)

    def __str__(self) -> str:
        name = {"wrn": lambda: f"WRN-{self.kwargs['depth']}-{self.kwargs['widen_factor']}",
                "preact_resnet18": lambda: "PreActResNet18",
                "small_cnn": lambda: (f"SmallCNN(width={self.kwargs['width']}, "
                                      f"hidden={self.kwargs['hidden']})")}[self.model]()
        return f"{name}, {self.num_classes} classes, {self.in_channels} input channels"


@dataclass
class LoadedCheckpoint:
    """A classifier read from ``path`` (in eval mode): its architecture, the layout of the
    file ("release" or "run") and what the file says about it (a run's profile, method,
    seed, dataset and epoch)."""

    path: Path
    model: nn.Module
    architecture: Architecture
    layout: str
    meta: dict[str, Any] = field(default_factory=dict)


def _unwrap(blob: Any) -> Any:
    while isinstance(blob, Mapping):
        inner = next((blob[k] for k in _WRAPPERS if isinstance(blob.get(k), Mapping)), None)
        if inner is None:
            break
        blob = inner
    return blob


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _resolve(path: Path) -> Path:
    """The file to read for ``path``: itself, or a run folder's ``checkpoint.pt`` (a run of
    ``data/runs``) or ``run.pt`` (a committed run); FileNotFoundError saying what to pass."""
    if path.is_dir():
        found = next((path / n for n in (CHECKPOINT, ARCHIVED) if (path / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(_folder_problem(path))
        return found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {_missing_hint(path)}")
    return path


def _run_meta(blob: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's ``checkpoint.pt`` or ``run.pt`` says about it: its identity, final epoch
    and, when its metrics are in it, its epochs and profile folder."""
    identity, metrics = blob["identity"], blob.get("metrics") or {}
    meta = {"layout": "run", "epoch": blob.get("epoch"),
            **{k: identity.get(k) for k in ("profile", "dataset", "method", "seed")}}
    meta.update({k: metrics[k] for k in ("epochs", "profile_folder") if k in metrics})
    return meta


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The classifier's ``state_dict`` in ``path`` (a ``.pt`` file or a run folder) with
    the prefixes of DataParallel and torch.compile removed, and what the file says about
    the run (empty for a released file; ``layout`` says which kind the file is).

    Every file is read with torch's weights-only unpickler
    (:func:`adt.training.archive.load_tensors`); one holding other Python objects is
    refused with a ValueError naming the first."""
    path = _resolve(Path(path))
    try:
        blob = load_tensors(path)
    except UnsafeCheckpointError:  # the message says what, and what to do
        raise
    except Exception as err:  # truncated, not a torch file
        fix = ("restore it: git checkout -- " + str(path) if path.name == ARCHIVED
               else "download it again")
        raise ValueError(f"{path} could not be read as a PyTorch checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); the file is truncated or of another "
                         f"format: {fix}") from err
    meta: dict[str, Any] = {"layout": "release"}
    if isinstance(blob, Mapping) and "identity" in blob and "format" in blob:
        meta = _run_meta(blob)
    state = _unwrap(blob)
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        found = (f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, Mapping)
                 else f"a {type(state).__name__}")
        raise ValueError(f"{path} holds no state_dict of tensors (found {found}); supported: a "
                         f"state_dict, bare or under one of {list(_WRAPPERS)}, of a {SUPPORTED}")
    return {_strip(str(k)): v for k, v in state.items()}, {**meta, "path": str(path)}


def _stage_depth(state: Mapping[str, torch.Tensor], stage: str) -> int:
    return len({k.split(".")[2] for k in state if k.startswith(f"{stage}.layer.")})


def _found(state: Mapping[str, torch.Tensor]) -> str:
    """What a state_dict of an unknown model holds: its top-level modules and a few keys."""
    tops = sorted({k.split(".")[0] for k in state})
    guess = (" (a torchvision-style ResNet?)" if {"layer1", "fc"} <= set(tops)
             else " (a ViT?)" if any("attn" in k for k in state) else "")
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(state.items())[:4])
    return f"{len(state)} tensors under modules {', '.join(tops[:12])}{guess}; first: {shapes}"


def infer_architecture(state: Mapping[str, torch.Tensor],
                       image_size: int | None = None) -> Architecture:
    """The architecture of a classifier's ``state_dict`` (prefixes stripped), read from
    its tensors' names and shapes; ``image_size`` (a SmallCNN's input side, which its
    tensors fix only up to rounding) defaults to the smallest that fits."""
    if {"conv1.weight", "block1.layer.0.conv1.weight", "fc.weight"} <= set(state):
        n = _stage_depth(state, "block1")
        width = state["block1.layer.0.conv1.weight"].shape[0]
        depths = {_stage_depth(state, s) for s in ("block1", "block2", "block3")}
        if len(depths) != 1 or width % 16 or state["conv1.weight"].shape[0] != 16:
            raise ValueError(f"a WideResNet-like state_dict that is not the release's layout: "
                             f"blocks per stage {sorted(depths)}, first-stage width {width} "
                             f"(expected equal counts and a multiple of 16, a stem of 16 "
                             f"channels); supported: {SUPPORTED}")
        return Architecture("wrn", state["conv1.weight"].shape[1], state["fc.weight"].shape[0],
                            {"depth": 6 * n + 4, "widen_factor": width // 16})
    if "layers.0.0.conv1.weight" in state and "bn.weight" in state and "fc.weight" in state:
        return Architecture("preact_resnet18", state["conv1.weight"].shape[1],
                            state["fc.weight"].shape[0])
    if "features.0.weight" in state and "classifier.4.weight" in state:
        w, hidden = state["features.0.weight"].shape[0], state["classifier.0.weight"].shape[0]
        side = round((state["classifier.0.weight"].shape[1] / (2 * w)) ** 0.5)
        if image_size is None or ((image_size - 4) // 2 - 4) // 2 != side:
            image_size = 4 * side + 12
        return Architecture("small_cnn", state["features.0.weight"].shape[1],
                            state["classifier.4.weight"].shape[0],
                            {"width": w, "hidden": hidden, "image_size": image_size})
    raise ValueError(f"the checkpoint's architecture is not supported: found {_found(state)}. "
                     f"Supported: {SUPPORTED}. Evaluate another model from Python with "
                     "adt.robustness_table(model, data, attacks)")


def check_dataset(arch: Architecture, dataset: str, path: Path | str) -> None:
    """A ValueError naming both when ``arch`` does not fit ``dataset``'s classes or images
    (or when ``dataset`` is unknown)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    if arch.num_classes != spec.num_classes:
        fitting = [n for n, s in DATASETS.items() if s.num_classes == arch.num_classes]
        raise ValueError(f"{path} holds a classifier of {arch.num_classes} classes ({arch}), but "
                         f"dataset {dataset!r} has {spec.num_classes}; pass the dataset it was "
                         f"trained on ({', '.join(fitting) or f'one with {arch.num_classes} classes'})")
    channels, side = spec.image_shape[0], spec.image_shape[1]
    fits_side = arch.model != "small_cnn" or arch.kwargs["image_size"] == side
    if arch.in_channels != channels or not fits_side:
        raise ValueError(f"{path} holds a classifier of {arch} for other images than "
                         f"{dataset!r}'s {spec.image_shape}; pass the dataset it was trained on")


def load_checkpoint(path: str | Path, dataset: str | None = None, *,
                    device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """The classifier in ``path`` (a released ``.pt`` file, our ``checkpoint.pt``, a
    committed ``run.pt`` or a run folder) on ``device``, in eval mode. Its classes and
    input shape must be ``dataset``'s (default: the dataset a run's file names; a
    ValueError names both otherwise)."""
    state, meta = read_state_dict(path)
    path = Path(meta.pop("path"))
    dataset = dataset if dataset is not None else meta.get("dataset")
    image_size = DATASETS[dataset].image_shape[1] if dataset in DATASETS else None
    try:
        arch = infer_architecture(state, image_size)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if dataset is not None:
        check_dataset(arch, dataset, path)
    if arch.model == "wrn":  # the release's unused copy of block1: ours mirrors block1
        state = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
        state.update({"sub_block1" + k[len("block1"):]: v for k, v in list(state.items())
                      if k.startswith("block1.")})
    model = arch.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or misshapen tensors
        raise ValueError(f"{path} does not match {arch} read from its shapes: "
                         f"{str(err)[:400]}; supported: {SUPPORTED}") from err
    if not all(bool(t.isfinite().all()) for t in model.state_dict().values()
               if t.is_floating_point()):
        raise ValueError(f"{path} holds non-finite weights (NaN or inf); download it again, or "
                         "retrain the run")
    return LoadedCheckpoint(path, model.to(device).eval(), arch, meta.pop("layout"), meta)


def load_model(profile: str, method: str, seed: int = 0, epochs: int | None = None, *,
               device: torch.device | str = "cpu",
               archive_root: str | Path = ARCHIVE_ROOT) -> nn.Module:
    """The classifier (in eval mode, on ``device``) of a committed run, found by its
    metadata: ``profile`` (a profile's name such as ``"quick"``, or a profile folder such
    as ``"quick-615a60"``), ``method``, ``seed`` and ``epochs`` (None: the profile's own
    recipe). Read from the archive directly (``data/archive/``, nothing restored); its
    architecture and dataset come from the run. ``docs/models.md`` lists every committed
    model; a FileNotFoundError lists them too when none matches::

        model = adt.load_model("quick", "adt_exp", seed=3, epochs=16)
    """
    found = find_archived(profile, method, seed, epochs, archive_root)
    return load_checkpoint(found.checkpoint, found.dataset, device=device).model


@dataclass(frozen=True)
class ReleaseStatus:
    """What :func:`released_models` found: the release's files under ``root/release/``
    and whether CIFAR-10 is on disk (``dataset_missing``: the loader's message saying
    what to fetch, or None)."""

    root: Path
    files: tuple[Path, ...]
    dataset_missing: str | None

    @property
    def ready(self) -> bool:
        return bool(self.files) and self.dataset_missing is None

    def summary(self, relative_to: str | Path | None = None) -> str:
        """Markdown: what is there, and exactly what to download where when not; paths
        are shown relative to ``relative_to`` (e.g. the repository root) when given."""
        root = self.root
        if relative_to is not None and root.is_relative_to(relative_to):
            root = root.relative_to(relative_to)
        folder = root / RELEASE_FOLDER
        lines = []
        if self.files:
            lines.append(f"Released models found in `{folder}/`: "
                         + ", ".join(f"`{f.name}`" for f in self.files) + ".")
        else:
            lines.append(f"No released models in `{folder}/`: {download_hint(root)}.")
        if self.dataset_missing is None:
            lines.append(f"CIFAR-10 is present in `{root}/`.")
        else:
            lines.append("CIFAR-10 is missing: "
                         + self.dataset_missing.replace(str(self.root), str(root)))
        return "\n\n".join(lines)


def released_models(root: str | Path = "data") -> ReleaseStatus:
    """The release's files (``root/release/*.pt``, sorted) and whether CIFAR-10 is present
    under ``root`` (checked from its files, without reading them)."""
    root = Path(root)
    files = tuple(sorted((root / RELEASE_FOLDER).glob("*.pt")))
    spec = DATASETS["cifar10"]
    missing = None
    if not all((root / spec.folder / f).is_file() for f in spec.files):
        try:  # fails at once, with the loader's own instructions
            load_dataset("cifar10", root=root)
        except DatasetNotFoundError as err:
            missing = str(err)
    return ReleaseStatus(root, files, missing)
