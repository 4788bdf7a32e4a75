"""The counted cost at the paper's configuration (WRN-28-10, CIFAR-10 shapes, ngf 256, the
release's inner settings), counted on the meta device: the meta count is the real one, the
configuration is the paper's, and each method's count is what its classifier passes add up to."""

import pytest
import torch
import torch.nn.functional as F

from adt.artifact.bench import count_configuration
from adt.artifact.costs import (
    _count_flops,
    _FlopCounter,
    flops_ratios,
    paper_flops_ratios,
    random_classifier_batch,
    step_flops,
)
from adt.config.profiles import get_profile
from adt.core.primitives import input_gradient
from adt.method.methods import METHODS

META = torch.device("meta")


@pytest.fixture(scope="module")
def ratios():
    """The paper's configuration, counted once (WRN-28-10 on the meta device, seconds)."""
    return paper_flops_ratios()


def test_meta_count_equals_the_real_count_on_a_small_configuration():
    real = step_flops("smoke", METHODS, batch_size=4, device="cpu")
    meta = step_flops("smoke", METHODS, batch_size=4, device="meta")
    assert meta == real and list(meta) == list(METHODS)
    assert all(v > 0 for v in meta.values())
    assert flops_ratios("smoke", ("adt_exp",), batch_size=4, device="meta") == \
        flops_ratios("smoke", ("adt_exp",), batch_size=4)


def test_meta_count_equals_the_real_count_on_the_papers_code_path():
    # a WRN-10-1 on CIFAR-10 shapes with the paper profile's raw-gradient generators
    tiny = get_profile("paper").replace(
        model_kwargs={"depth": 10, "widen_factor": 1},
        methods={"am_ngf": 4, "imp_noise_dim": 8, "adt_steps": 2, "adt_num_samples": 2,
                 "pgd_steps": 2, "trades_steps": 2})
    assert tiny.methods.am_conditioning == "raw"
    real = step_flops(tiny, METHODS, batch_size=4, device="cpu")
    assert step_flops(tiny, METHODS, batch_size=4, device="meta") == real
    assert real["adt_exp_am"] > real["standard"] > 0


def test_a_value_read_from_the_weights_on_meta_is_refused():
    model, x, y, _ = random_classifier_batch("small_cnn", 2, META, get_profile("smoke"), False)
    # the batch's own values are read from its shadow, as a real step reads them
    assert _count_flops(lambda: bool((x >= 0).all()), {x: torch.rand(x.shape)}) == 0
    with pytest.raises(RuntimeError, match="count this step on a real device"):
        _count_flops(lambda: model(x).sum().item(), {x: torch.rand(x.shape)})

    def overwritten():
        z = x.clone()
        z.add_(model(x).sum())  # a write from the weights: z's values are unknown from here
        return bool((z >= 0).all())

    with pytest.raises(RuntimeError, match="count this step on a real device"):
        _count_flops(overwritten, {x: torch.rand(x.shape)})


def test_shadows_follow_writes_and_real_tensors_are_written_once():
    x = torch.empty(3, 2, device="meta")

    def shifted():
        z = x.clone()
        z[0].add_(2.0)  # a write through a view, mirrored onto the shadows
        return z.amin().item(), z.amax().item()

    assert _count_flops(shifted, {x: torch.zeros(3, 2)}) == 0
    with _FlopCounter({x: torch.zeros(3, 2)}) as counter:
        assert shifted() == (0.0, 2.0)
    real = torch.zeros(2)
    _count_flops(lambda: real.add_(1.0))
    assert real.tolist() == [1.0, 1.0]
    assert counter.total == 0


def test_the_counted_configuration_is_the_papers():
    config = count_configuration("paper", 64)
    assert (config["model"], config["model_kwargs"]) == ("wrn", {"depth": 28, "widen_factor": 10})
    assert config["input_shape"] == [3, 32, 32] and config["num_classes"] == 10
    assert config["batch_size"] == get_profile("paper").recipe.batch_size == 64
    # WRN-28-10's 36.5M trained parameters (the unused sub_block1 copy is in "parameters")
    assert config["parameters_trained"] == 36_479_194 < config["parameters"]
    assert (config["adt_steps_T"], config["adt_num_samples_k"], config["pgd_steps"],
            config["trades_steps"]) == (7, 5, 7, 10)
    assert (config["am_ngf"], config["am_conditioning"], config["imp_noise_dim"]) == \
        (256, "raw", 64)
    assert config["maximizer_parameters"]["adt_exp_am"] == 10_330_880  # the release's generator
    assert config["passes_per_image"]["adt_exp"] == 7 * 5 + 1


def test_every_method_has_a_ratio_and_they_are_ordered(ratios):
    assert list(ratios) == list(METHODS)
    assert ratios["pgd_at"] == 1.0
    assert ratios["standard"] < ratios["adt_exp_am"] < 1.0 < ratios["trades"] < ratios["adt_exp"]
    # the classifier's passes bound the ratio: ADT_EXP runs T*k + 1 against PGD's T + 1
    passes = count_configuration("paper", 64)["passes_per_image"]
    assert 1.0 < ratios["adt_exp"] < passes["adt_exp"] / passes["pgd_at"]


def test_the_paper_counts_are_the_classifiers_passes(ratios):
    """Each ratio, rebuilt from the classifier's own passes at the paper's configuration:
    a (forward + input gradient, one attack step), t (training pass), f (forward)."""
    profile = get_profile("paper")
    s, b = profile.methods, profile.recipe.batch_size

    def attack(n):
        model, x, y, _ = random_classifier_batch("wrn", n, META, profile, False)
        return _count_flops(lambda: input_gradient(model, x, y))

    model, x, y, _ = random_classifier_batch("wrn", b, META, profile, False)
    t = _count_flops(lambda: F.cross_entropy(model(x), y).backward())
    with torch.no_grad():
        f = _count_flops(lambda: model(x))
    a = attack(b)
    assert 2 * f < t <= 3 * f and f < a <= 2 * f
    pgd = s.pgd_steps * a + t
    assert ratios["standard"] == pytest.approx(t / pgd, rel=1e-12)
    assert ratios["trades"] == pytest.approx((f + s.trades_steps * a + 2 * t) / pgd, rel=1e-12)
    # the k draws of a step go through the classifier as one batch of k * B images
    assert ratios["adt_exp"] == pytest.approx(
        (s.adt_steps * attack(s.adt_num_samples * b) + t) / pgd, rel=1e-12)
    for m in ("adt_exp_am", "adt_imp_am"):  # two conditioning gradients, the pass, a generator
        assert ratios[m] > (2 * a + t) / pgd
