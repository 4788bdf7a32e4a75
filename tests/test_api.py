"""The public API: ``import adt`` is light (no torch until a name is used) and every name of
``adt.__all__`` resolves to the object of the module that defines it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import adt

ROOT = Path(__file__).resolve().parents[1]


def test_importing_adt_imports_no_torch() -> None:
    code = "import adt, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", adt.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(adt, name)
    assert value is not None
    assert name in dir(adt)


def test_the_api_is_the_modules_own_objects() -> None:
    from adt.config.profiles import get_profile
    from adt.evaluation.engine import robustness_table
    from adt.evaluation.stored import evaluate_run
    from adt.method.methods import METHODS, REGISTRY
    from adt.training.loop import train
    from adt.training.modules import load_run

    assert adt.get_profile is get_profile and adt.METHODS is METHODS
    assert adt.METHOD_REGISTRY is REGISTRY
    assert adt.train is train and adt.load_run is load_run
    assert adt.evaluate_run is evaluate_run and adt.robustness_table is robustness_table
    assert set(adt.PROFILES) >= {"smoke", "quick"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adt.nope  # noqa: B018


def test_what_a_user_composes_is_exported() -> None:
    """The inner maximisers, one training step, the attacks and a table's row are top-level
    names, the modules' own objects; every maximiser is an InnerMaximizer."""
    from adt.attack import functions
    from adt.attack.spec import AttackSpec
    from adt.method import amortized, explicit, inner
    from adt.training.loop import train_step

    maximizers = {"Clean": inner, "PGD": inner, "TRADES": inner, "ExplicitADT": explicit,
                  "AmortizedExplicitADT": amortized, "AmortizedImplicitADT": amortized}
    for name, module in maximizers.items():
        assert getattr(adt, name) is getattr(module, name)
        assert issubclass(getattr(adt, name), inner.InnerMaximizer)
    assert adt.InnerMaximizer is inner.InnerMaximizer
    assert adt.AdversarialBatch is inner.AdversarialBatch
    assert adt.train_step is train_step and adt.AttackSpec is AttackSpec
    for name in ("fgsm", "pgd", "mim", "cw", "fea_attack", "autoattack", "original_autoattack",
                 "square", "spsa", "transfer"):
        assert getattr(adt, name) is getattr(functions, name)
    assert adt.PGD is not adt.pgd  # the maximiser (AT) and the attack are two names


def test_the_method_registry_is_the_one_source_of_method_facts() -> None:
    from adt.core.data import DATASETS
    from adt.method.methods import (
        LABELS,
        METHOD_COLORS,
        METHODS,
        REGISTRY,
        MethodSettings,
        build_maximizer,
    )
    from adt.training import distributed

    assert METHODS == tuple(REGISTRY) and set(LABELS) == set(METHOD_COLORS) == set(METHODS)
    assert not hasattr(distributed, "_WRAPPED")  # the maximisers name their networks
    for name, method in REGISTRY.items():
        maximizer = build_maximizer(name, MethodSettings(am_ngf=8), DATASETS["mnist5k"], 0.3)
        assert type(maximizer) is method.maximizer and method.name == name
        assert LABELS[name] == method.label and METHOD_COLORS[name] == method.color
        for network in method.networks:  # what data-parallel training wraps
            assert any(p.requires_grad for p in getattr(maximizer, network).parameters())
    assert REGISTRY["adt_imp_am"].networks == ("generator", "noise_map", "encoder")
    assert REGISTRY["pgd_at"].networks == ()
