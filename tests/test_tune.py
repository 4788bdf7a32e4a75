"""Choosing the quick recipe: the validation split never touches the test images, the
schedule of every grid point, and the rule (the cheapest point within 1 point of the best)."""

from __future__ import annotations

import pytest
import torch

from adt.config.profiles import get_profile
from adt.core.data import load_dataset
from adt.study.tune import GRID, TUNED_ON, choose, recipe_for, validation_split


def test_the_validation_split_is_carved_from_the_training_images_only() -> None:
    data = load_dataset("mnist5k").subset(train=400)
    split = validation_split(data, 100)
    assert len(split.x_train) == 300 and len(split.x_test) == 100
    assert torch.equal(split.x_train, data.x_train[:300])
    assert torch.equal(split.x_test, data.x_train[300:])  # held-out training images ...
    assert not any(torch.equal(split.x_test[:1], data.x_test[i:i + 1]) for i in range(50))
    for bad in (0, 400, 500):
        with pytest.raises(ValueError, match="validation_examples"):
            validation_split(data, bad)


@pytest.mark.parametrize(("epochs", "milestone"), [(5, 4), (8, 6), (10, 8)])
def test_every_grid_point_decays_for_the_last_fifth(epochs: int, milestone: int) -> None:
    recipe = recipe_for(epochs, 0.05)
    assert recipe["lr_milestones"] == (milestone,) and recipe["epsilon_warmup_epochs"] == 2
    assert recipe["lr_warmup_epochs"] == 1
    get_profile("quick", recipe=recipe)  # a valid profile


def test_the_rule_takes_the_cheapest_point_within_one_point_of_the_best() -> None:
    scores = {(0.02, 5): 0.70, (0.05, 5): 0.795, (0.05, 8): 0.80, (0.1, 8): 0.805}
    assert choose(scores) == (0.05, 5)  # 0.795 >= 0.805 - 0.01, and 5 epochs are cheapest
    assert choose({**scores, (0.1, 8): 0.83}) == (0.1, 8)  # now only the best qualifies
    assert choose(scores, tolerance=0.0) == (0.1, 8)
    with pytest.raises(ValueError, match="no scores"):
        choose({})


def test_only_settings_whose_baselines_converged_are_eligible() -> None:
    scores = {(0.05, 5): 0.80, (0.05, 8): 0.79, (0.02, 8): 0.70}
    assert choose(scores) == (0.05, 5)
    assert choose(scores, eligible={(0.05, 8), (0.02, 8)}) == (0.05, 8)
    assert choose(scores, eligible=set()) == (0.05, 5)  # none eligible: the rule on all


def test_the_rule_looks_at_the_baselines_only() -> None:
    assert set(TUNED_ON) == {"pgd_at", "trades"}
    assert set(GRID) == {"lr", "epochs"}


def test_the_default_validation_split_fits_every_profile() -> None:
    from adt.config.profiles import get_profile
    from adt.study.tune import default_validation_examples, output_path

    assert default_validation_examples(get_profile("quick")) == 1000
    assert default_validation_examples(get_profile("smoke")) == 64  # a quarter of its 256
    assert output_path("quick", ("pgd_at", "trades")) == "benchmarks/tune-quick.json"
    assert output_path("quick", ("adt_exp",)) == "benchmarks/tune-quick-adt_exp.json"
