"""Each attack of the protocol owns its settings, rows and caption; a profile's
EvalSettings is built from those settings; adding an attack is its function and one
record. This file adds a toy attack (the corner of the eps-box against the gradient's
sign, i.e. FGSM's opposite) without touching any other file."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from conftest import trained_small_cnn
from torch import nn

from adt.attack.catalogue import (
    ATTACK_SETTINGS,
    PROTOCOL,
    SPSA,
    CWSettings,
    ProtocolAttack,
    register_attack,
)
from adt.attack.spec import AttackSpec
from adt.config.profiles import EvalSettings, get_profile
from adt.evaluation.cli import _parse, checkpoint_attacks
from adt.evaluation.engine import robustness_table
from adt.evaluation.protocol import describe_protocol, white_box_attacks


def corner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
           sign: float = 1.0) -> torch.Tensor:
    """x + sign * epsilon at every pixel (clipped): a fixed corner of the box."""
    return (x + sign * epsilon).clamp(0.0, 1.0)


@dataclass(frozen=True)
class CornerSettings:
    corner_sign: float = -1.0

    def check(self) -> None:
        if self.corner_sign not in (-1.0, 1.0):
            raise ValueError(f"corner_sign={self.corner_sign!r} must be -1 or 1; use e.g. -1")

    __post_init__ = check


def _rows(s: CornerSettings, epsilon: float, num_classes: int) -> list[AttackSpec]:
    return [AttackSpec("Corner", corner, {"epsilon": epsilon, "sign": s.corner_sign})]


CORNER = ProtocolAttack("Corner", CornerSettings, _rows, {
    "corner": lambda spec, eps: f"{spec['name']} (the corner x {spec['settings']['sign']:+g} eps)"})


@pytest.fixture
def toy() -> Iterator[ProtocolAttack]:
    register_attack(CORNER)
    try:
        yield CORNER
    finally:
        PROTOCOL.remove(CORNER)


def test_eval_settings_are_built_from_the_attacks_settings() -> None:
    names = {f.name for f in dataclasses.fields(EvalSettings)}
    for settings in (*ATTACK_SETTINGS, SPSA.settings):
        own = {f.name for f in dataclasses.fields(settings)}
        assert own <= names, own - names
        assert issubclass(EvalSettings, settings)
    with pytest.raises(ValueError, match="cw_kappa"):
        EvalSettings(cw_kappa=0.0)  # checked by C&W's own settings
    with pytest.raises(ValueError, match="cw_steps"):
        CWSettings(cw_steps=0)
    quick = get_profile("quick").eval
    assert PROTOCOL[3].settings_from(quick) is quick  # EvalSettings holds them itself


def test_a_registered_attack_runs_in_every_table_with_its_caption(toy) -> None:
    smoke = get_profile("smoke").eval
    specs = white_box_attacks(smoke, 0.3)
    assert specs[-1].name == "Corner" and specs[-1].settings == {"epsilon": 0.3, "sign": -1.0}
    caption = describe_protocol([s.describe() for s in specs], 0.3)
    assert caption.endswith("; Corner (the corner x -1 eps)")
    assert "Corner" in [s.name for s in checkpoint_attacks(smoke, 0.3, 10)]
    parser, _ = _parse(["--checkpoint", "x.pt"])
    assert "Corner" in parser.format_help()
    model, data = trained_small_cnn()
    table = robustness_table(model, data, specs, 32, batch_size=32, sanity=False)
    assert "Corner" in table.accuracy
    assert table.robust_accuracy <= table.accuracy["Corner"] <= table.accuracy["Clean"] + 1e-9


def test_an_attack_joins_the_protocol_once(toy) -> None:
    with pytest.raises(ValueError, match="in the protocol already"):
        register_attack(CORNER)
    with pytest.raises(ValueError, match="not a dataclass"):
        register_attack(ProtocolAttack("Other", dict, _rows, {}))
