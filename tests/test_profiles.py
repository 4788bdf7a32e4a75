"""adt.config.profiles: validation, replace, the paper's recipe, serialisation."""

from __future__ import annotations

import json

import pytest

from adt.config.profiles import PROFILES, EvalSettings, Profile, Recipe, get_profile
from adt.method.methods import METHODS, MethodSettings


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_validates_and_serialises(name: str) -> None:
    profile = get_profile(name)
    assert profile is PROFILES[name] and profile.name == name
    # re-running the validation on a copy of every part raises nothing
    Recipe(**{**profile.recipe.__dict__})
    MethodSettings(**profile.methods.__dict__)
    EvalSettings(**profile.eval.__dict__)
    rebuilt = Profile(**{f: getattr(profile, f) for f in profile.__dataclass_fields__})
    assert rebuilt == profile
    assert 0 < profile.train_epsilon <= 1
    text = json.dumps(profile.to_dict())
    back = json.loads(text)
    assert back["name"] == name and back["recipe"]["epochs"] == profile.recipe.epochs
    assert back["methods"]["adt_steps"] == profile.methods.adt_steps
    assert back["eval"]["pgd_steps"] == list(profile.eval.pgd_steps)


def test_the_six_profiles() -> None:
    assert set(PROFILES) == {"smoke", "quick", "fmnist", "fashion", "cifar", "paper"}
    smoke = get_profile("smoke")
    assert (smoke.dataset, smoke.model, smoke.recipe.epochs) == ("mnist5k", "small_cnn", 1)
    assert smoke.train_examples is not None and smoke.train_examples < 4000
    quick = get_profile("quick")
    assert (quick.dataset, quick.model) == ("mnist5k", "small_cnn")
    fashion = get_profile("fashion")
    assert (fashion.dataset, fashion.model) == ("fashion_mnist", "preact_resnet18")
    assert fashion.train_examples is None  # the whole 60k
    assert fashion.train_epsilon == 0.1
    # fmnist: quick's network, inner settings and evaluation on 4,000 Fashion-MNIST images
    fmnist = get_profile("fmnist")
    assert (fmnist.dataset, fmnist.model, fmnist.train_examples) == ("fashion_mnist",
                                                                     "small_cnn", 4000)
    assert fmnist.train_epsilon == 0.1
    assert (fmnist.methods, fmnist.eval, fmnist.seeds) == (quick.methods, quick.eval, quick.seeds)


def test_paper_profile_is_the_release_recipe() -> None:
    p = get_profile("paper")
    assert (p.dataset, p.model) == ("cifar10", "wrn")
    assert dict(p.model_kwargs) == {"depth": 28, "widen_factor": 10}
    assert p.train_epsilon == 8 / 255 and p.train_examples is None
    r = p.recipe
    assert (r.lr, r.momentum, r.weight_decay) == (0.1, 0.9, 2e-4)
    # lr x0.1 after 74 epochs: epochs 75 and 76 (numbered from 1) at 0.01, as the release
    assert (r.batch_size, r.epochs, tuple(r.lr_milestones), r.lr_gamma) == (64, 76, (74,), 0.1)
    assert r.epsilon_warmup_epochs == 0
    assert r.batch_size_for("pgd_at") == 128
    for method in ("adt_exp", "adt_exp_am", "adt_imp_am"):
        assert r.batch_size_for(method) == 64
    m = p.methods
    assert m.pgd_steps == 7 and m.pgd_step_fraction * 8 / 255 == pytest.approx(2 / 255)
    assert (m.adt_steps, m.adt_num_samples, m.adt_lambda, m.adt_lr) == (7, 5, 0.01, 0.3)
    assert (m.am_ngf, m.am_lambda, m.am_lr) == (256, 0.01, 2e-4)
    assert (m.imp_noise_dim, m.imp_lambda, m.imp_threshold) == (64, 1.0, 0.9)
    e = p.eval
    assert e.batch_size == 200 and tuple(e.pgd_steps) == (20, 100)
    assert (e.mim_steps, e.cw_steps, e.cw_kappa, e.fea_steps) == (20, 30, 50.0, 50)
    assert e.step_fraction * 8 / 255 == pytest.approx(2 / 255)
    assert e.fea_step_fraction * 8 / 255 == pytest.approx(1 / 255)


def test_the_cifar_profile_is_one_gpu_afternoon_at_the_release_inner_settings() -> None:
    p, paper = get_profile("cifar"), get_profile("paper")
    assert (p.dataset, p.model, p.device, p.seeds) == ("cifar10", "preact_resnet18", "cuda",
                                                       (0, 1, 2))
    assert p.train_examples is None and p.recipe.epochs == 30
    assert p.methods == paper.methods == MethodSettings()  # the release's inner settings
    assert p.train_epsilon == 8 / 255
    for method in METHODS:
        assert p.recipe.batch_size_for(method) == paper.recipe.batch_size_for(method)
    assert max(p.recipe.lr_milestones) < p.recipe.epochs


def test_unknown_profile_lists_allowed() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        get_profile("nope")
    for name in PROFILES:
        assert name in str(info.value)


@pytest.mark.parametrize("build,value", [
    (lambda: Recipe(epochs=0), "epochs=0"),
    (lambda: Recipe(batch_size=0), "batch_size=0"),
    (lambda: Recipe(lr=0.0), "lr=0.0"),
    (lambda: Recipe(batch_size_overrides={"pgd": 128}), "pgd"),
    (lambda: Recipe(batch_size_overrides={"pgd_at": 0}), "pgd_at"),
    (lambda: MethodSettings(pgd_steps=0), "pgd_steps=0"),
    (lambda: MethodSettings(adt_num_samples=0), "adt_num_samples=0"),
    (lambda: EvalSettings(autoattack="x"), "'x'"),
    (lambda: EvalSettings(pgd_steps=(20, 0)), "steps=0"),
    (lambda: get_profile("smoke", epsilon=0), "epsilon=0"),
    (lambda: get_profile("smoke", epsilon=1.5), "epsilon=1.5"),
    (lambda: get_profile("smoke", dataset="imagenet"), "imagenet"),
    (lambda: get_profile("smoke", model="vgg"), "vgg"),
    (lambda: get_profile("smoke", device="tpu"), "tpu"),
    (lambda: get_profile("smoke", seeds=()), "seeds"),
    (lambda: get_profile("smoke", train_examples=0), "train_examples=0"),
])
def test_invalid_settings_name_the_value(build, value: str) -> None:
    with pytest.raises(ValueError) as info:
        build()
    assert value in str(info.value)


def test_replace_with_nested_dicts() -> None:
    smoke = get_profile("smoke")
    p = smoke.replace(recipe={"epochs": 2}, methods={"pgd_steps": 3}, eval={"n_examples": 8},
                      train_examples=96)
    assert p.recipe.epochs == 2 and p.methods.pgd_steps == 3 and p.eval.n_examples == 8
    assert p.train_examples == 96
    # everything else is kept, and the original is untouched (frozen)
    assert p.recipe.batch_size == smoke.recipe.batch_size and p.recipe.lr == smoke.recipe.lr
    assert p.methods.adt_steps == smoke.methods.adt_steps
    assert smoke.recipe.epochs == 1 and smoke.methods.pgd_steps == 7
    assert get_profile("smoke", recipe={"epochs": 2}) == p.replace(
        methods={"pgd_steps": 7}, eval={"n_examples": smoke.eval.n_examples},
        train_examples=smoke.train_examples)
    # a nested value is validated too
    with pytest.raises(ValueError, match="epochs=0"):
        smoke.replace(recipe={"epochs": 0})
    # whole dataclasses may be given as well
    assert smoke.replace(recipe=Recipe(epochs=3)).recipe.epochs == 3


def test_replace_unknown_fields_raise() -> None:
    smoke = get_profile("smoke")
    with pytest.raises(ValueError, match="epoch") as info:
        smoke.replace(epoch=2)
    assert "recipe" in str(info.value)  # lists the allowed fields
    with pytest.raises(ValueError, match="epoch"):
        get_profile("smoke", epoch=2)
    # unknown fields of the nested settings: the same kind of error, naming the field
    for nested in ({"recipe": {"epoch": 2}}, {"methods": {"steps": 3}}, {"eval": {"attacks": 1}}):
        (fields,) = nested.values()
        with pytest.raises(ValueError, match=next(iter(fields))):
            smoke.replace(**nested)


def test_methods_tuple() -> None:
    assert METHODS == ("standard", "pgd_at", "trades", "adt_exp", "adt_exp_am", "adt_imp_am")
