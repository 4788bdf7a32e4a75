"""The training methods: their names, labels, colours, settings, and their maximisers.

Everything that names a method lives here, one record each (:class:`Method`, in
:data:`REGISTRY`): its label and colour, its maximiser class, its own settings class
(read from the profile's flat :class:`MethodSettings`) and its builder. :data:`METHODS`,
:data:`LABELS`, :data:`METHOD_COLORS` and :func:`build_maximizer` read it; profiles, the
trainer, the benchmark and the notebooks import it. A new method is a maximiser class and
one record passed to :func:`register_method` (``tests/test_registry.py`` adds one).

| method       | label      | inner maximiser (``adt.method.inner``)          |
|--------------|------------|------------------------------------------|
| `standard`   | Standard   | :class:`Clean`                           |
| `pgd_at`     | AT (PGD)   | :class:`PGD`, Eq. (2)                    |
| `trades`     | TRADES     | :class:`TRADES` (Zhang et al., 2019)     |
| `adt_exp`    | ADT_EXP    | :class:`ExplicitADT`, Eq. (8)-(11)       |
| `adt_exp_am` | ADT_EXP-AM | :class:`AmortizedExplicitADT`, Sec. 3.2  |
| `adt_imp_am` | ADT_IMP-AM | :class:`AmortizedImplicitADT`, Sec. 3.3  |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from adt.core._checks import check_choice, check_int_at_least, check_nonnegative, check_positive
from adt.core.data import DatasetSpec
from adt.method.amortized import CONDITIONINGS, AmortizedExplicitADT, AmortizedImplicitADT
from adt.method.explicit import ExplicitADT
from adt.method.inner import PGD, TRADES, Clean, InnerMaximizer

__all__ = ["Method", "REGISTRY", "METHODS", "LABELS", "METHOD_COLORS", "MethodSettings",
           "NoSettings", "PGDSettings", "TRADESSettings", "ExplicitSettings", "GeneratorSettings",
           "AmortizedExplicitSettings", "AmortizedImplicitSettings", "register_method",
           "build_maximizer"]


def _from(profile_field: str, default: Any) -> Any:
    """A setting of one method, read from the profile's :class:`MethodSettings` field
    ``profile_field``; ``default`` is the release's."""
    return field(default=default, metadata={"profile_field": profile_field})


@dataclass(frozen=True)
class NoSettings:
    """A method without settings of its own (standard training)."""


@dataclass(frozen=True)
class PGDSettings:
    """AT's inner maximisation, Eq. (2): ``steps`` sign steps of ``step_fraction * epsilon``."""

    steps: int = _from("pgd_steps", 7)
    step_fraction: float = _from("pgd_step_fraction", 0.25)  # 2/255 at epsilon 8/255

    def __post_init__(self) -> None:
        check_int_at_least(self.steps, 1, "pgd_steps", "7")
        check_positive(self.step_fraction, "pgd_step_fraction", "0.25")


@dataclass(frozen=True)
class TRADESSettings:
    """TRADES' KL ascent (``steps`` sign steps of ``step_fraction * epsilon``) and its
    weight ``beta`` on the robust term (Zhang et al., 2019)."""

    steps: int = _from("trades_steps", 10)
    step_fraction: float = _from("trades_step_fraction", 0.25)
    beta: float = _from("trades_beta", 6.0)

    def __post_init__(self) -> None:
        check_int_at_least(self.steps, 1, "trades_steps", "10")
        check_positive(self.step_fraction, "trades_step_fraction", "0.25")
        check_positive(self.beta, "trades_beta", "6.0")


@dataclass(frozen=True)
class ExplicitSettings:
    """ADT_EXP, Eq. (8)-(11): T = ``steps`` Adam steps of rate ``lr`` on (mu, v) with
    k = ``num_samples`` draws and entropy weight ``lambda_``; ``update`` is the release's
    running sum or the paper text's per-step gradient."""

    steps: int = _from("adt_steps", 7)
    num_samples: int = _from("adt_num_samples", 5)
    lambda_: float = _from("adt_lambda", 0.01)
    lr: float = _from("adt_lr", 0.3)
    update: str = _from("adt_update", "running_sum")

    def __post_init__(self) -> None:
        check_int_at_least(self.steps, 1, "adt_steps", "7")
        check_int_at_least(self.num_samples, 1, "adt_num_samples", "5")
        check_nonnegative(self.lambda_, "adt_lambda", "0.01")
        check_positive(self.lr, "adt_lr", "0.3")
        check_choice(self.update, ExplicitADT.UPDATES, "adt_update")


@dataclass(frozen=True)
class GeneratorSettings:
    """What the amortised methods share: a generator of width ``ngf`` trained by Adam at
    ``lr``, fed the input gradients ``conditioning`` (raw, as released, or normalised)."""

    ngf: int = _from("am_ngf", 256)
    lr: float = _from("am_lr", 2e-4)
    conditioning: str = _from("am_conditioning", "raw")

    def __post_init__(self) -> None:
        check_int_at_least(self.ngf, 1, "am_ngf", "256")
        check_positive(self.lr, "am_lr", "2e-4")
        check_choice(self.conditioning, CONDITIONINGS, "am_conditioning")


@dataclass(frozen=True)
class AmortizedExplicitSettings(GeneratorSettings):
    """ADT_EXP-AM, Sec. 3.2: the generator's entropy weight ``lambda_``."""

    lambda_: float = _from("am_lambda", 0.01)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonnegative(self.lambda_, "am_lambda", "0.01")


@dataclass(frozen=True)
class AmortizedImplicitSettings(GeneratorSettings):
    """ADT_IMP-AM, Sec. 3.3: ``noise_dim`` noise channels, the entropy bound weighted
    ``lambda_`` with the hinge at ``threshold``; the encoder is trained at ``lr`` too."""

    noise_dim: int = _from("imp_noise_dim", 64)
    lambda_: float = _from("imp_lambda", 1.0)
    threshold: float = _from("imp_threshold", 0.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int_at_least(self.noise_dim, 1, "imp_noise_dim", "64")
        check_nonnegative(self.lambda_, "imp_lambda", "1.0")
        check_nonnegative(self.threshold, "imp_threshold", "0.9")


@dataclass(frozen=True)
class MethodSettings:
    """A profile's settings of the paper's methods, one flat record (the defaults are the
    release's: REPRODUCTION.md, "ADT_EXP as released" and the sections after it).

    Each method reads its own fields into its own settings class (:attr:`Method.settings`,
    e.g. :class:`PGDSettings` from ``pgd_*``), which checks them; the record stays flat so
    that a run's identity (its folder and its checkpoint's settings) is what it was.
    """

    pgd_steps: int = PGDSettings.steps
    pgd_step_fraction: float = PGDSettings.step_fraction
    trades_steps: int = TRADESSettings.steps
    trades_step_fraction: float = TRADESSettings.step_fraction
    trades_beta: float = TRADESSettings.beta
    adt_steps: int = ExplicitSettings.steps  # T
    adt_num_samples: int = ExplicitSettings.num_samples  # k
    adt_lambda: float = ExplicitSettings.lambda_
    adt_lr: float = ExplicitSettings.lr
    am_ngf: int = AmortizedExplicitSettings.ngf
    am_lambda: float = AmortizedExplicitSettings.lambda_
    am_lr: float = AmortizedExplicitSettings.lr
    imp_noise_dim: int = AmortizedImplicitSettings.noise_dim
    imp_lambda: float = AmortizedImplicitSettings.lambda_
    imp_threshold: float = AmortizedImplicitSettings.threshold
    adt_update: str = ExplicitSettings.update  # the release's; "per_step": the paper's text
    am_conditioning: str = AmortizedExplicitSettings.conditioning  # "normalised": scaled

    def __post_init__(self) -> None:
        for method in REGISTRY.values():
            method.settings_from(self)  # each method checks its own fields


def _standard(s: NoSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return Clean(epsilon)


def _pgd_at(s: PGDSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return PGD(epsilon, step_size=s.step_fraction * epsilon, steps=s.steps)


def _trades(s: TRADESSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return TRADES(epsilon, step_size=s.step_fraction * epsilon, steps=s.steps, beta=s.beta)


def _adt_exp(s: ExplicitSettings, spec: DatasetSpec, epsilon: float) -> InnerMaximizer:
    return ExplicitADT(epsilon, steps=s.steps, num_samples=s.num_samples, lambda_=s.lambda_,
                       lr=s.lr, update=s.update)


def _adt_exp_am(s: AmortizedExplicitSettings, spec: DatasetSpec,
                epsilon: float) -> InnerMaximizer:
    return AmortizedExplicitADT(spec.image_shape[0], epsilon, ngf=s.ngf, lambda_=s.lambda_,
                                lr=s.lr, conditioning=s.conditioning)


def _adt_imp_am(s: AmortizedImplicitSettings, spec: DatasetSpec,
                epsilon: float) -> InnerMaximizer:
    channels, size = spec.image_shape[0], spec.image_shape[1]
    return AmortizedImplicitADT(channels, size, epsilon, ngf=s.ngf, noise_dim=s.noise_dim,
                                lambda_=s.lambda_, threshold=s.threshold, lr=s.lr,
                                encoder_lr=s.lr, conditioning=s.conditioning)


@dataclass(frozen=True)
class Method:
    """One training method: its name, how tables and figures name it (``label``, the
    paper's name) and colour it (the same in every figure), the class of its inner
    maximiser, its own settings class (a frozen dataclass; a field with
    ``metadata["profile_field"]`` is read from that field of the profile's
    :class:`MethodSettings`, any other keeps its default), and ``build``, which makes a
    maximiser from those settings. The maximiser's own trained networks, which
    data-parallel training wraps, are :attr:`networks`."""

    name: str
    label: str
    color: str
    maximizer: type[InnerMaximizer]
    build: Callable[[Any, DatasetSpec, float], InnerMaximizer]
    settings: type = NoSettings

    @property
    def networks(self) -> tuple[str, ...]:
        return self.maximizer.networks

    def settings_from(self, profile_settings: MethodSettings) -> Any:
        """This method's settings, read from the profile's record."""
        values = {f.name: getattr(profile_settings, f.metadata["profile_field"])
                  for f in fields(self.settings) if "profile_field" in f.metadata}
        return self.settings(**values)


#: Every known training method by name: the paper's, in the order of its tables, then
#: any added with :func:`register_method`.
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("standard", "Standard", "#7f7f7f", Clean, _standard),
    Method("pgd_at", "AT (PGD)", "#1f77b4", PGD, _pgd_at, PGDSettings),
    Method("trades", "TRADES", "#9467bd", TRADES, _trades, TRADESSettings),
    Method("adt_exp", "ADT_EXP", "#d62728", ExplicitADT, _adt_exp, ExplicitSettings),
    Method("adt_exp_am", "ADT_EXP-AM", "#ff7f0e", AmortizedExplicitADT, _adt_exp_am,
           AmortizedExplicitSettings),
    Method("adt_imp_am", "ADT_IMP-AM", "#2ca02c", AmortizedImplicitADT, _adt_imp_am,
           AmortizedImplicitSettings),
)}

#: The paper's training methods, in the order of its tables (what the chapters compare).
METHODS = tuple(REGISTRY)


class _RegistryField(Mapping[str, str]):
    """method name -> one attribute of its record, read from :data:`REGISTRY` when asked
    (so a method added later has its label and colour too)."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __getitem__(self, name: str) -> str:
        return getattr(REGISTRY[name], self._attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


#: How tables and figures name each method (the paper's names).
LABELS: Mapping[str, str] = _RegistryField("label")

#: One colour per method, the same in every figure.
METHOD_COLORS: Mapping[str, str] = _RegistryField("color")


def register_method(method: Method) -> Method:
    """Add a training method: from then on :func:`adt.train`, :func:`adt.evaluate_run`, the
    tables and figures know it by ``method.name`` (the chapters compare :data:`METHODS`).
    Its settings are its settings class's defaults, and the fields it reads from the
    profile's :class:`MethodSettings`."""
    if not isinstance(method, Method):
        raise ValueError(f"register_method({method!r}): pass a Method record, e.g. "
                         "Method('noise', 'Noise', '#000000', Noise, build, NoiseSettings)")
    if method.name in REGISTRY:
        raise ValueError(f"a method named {method.name!r} is registered already; choose "
                         f"another name (taken: {', '.join(REGISTRY)})")
    if not (isinstance(method.maximizer, type) and issubclass(method.maximizer, InnerMaximizer)):
        raise ValueError(f"method {method.name!r}: maximizer={method.maximizer!r} is not an "
                         "InnerMaximizer subclass (adt.method.inner.InnerMaximizer)")
    if not is_dataclass(method.settings):
        raise ValueError(f"method {method.name!r}: settings={method.settings!r} is not a "
                         "dataclass; give it a frozen dataclass of its settings (or NoSettings)")
    method.settings_from(MethodSettings())  # its defaults pass its own checks
    REGISTRY[method.name] = method
    return method


def build_maximizer(method: str, settings: MethodSettings, spec: DatasetSpec,
                    epsilon: float) -> InnerMaximizer:
    """The inner maximiser of ``method`` with its settings read from the profile's
    ``settings``, for images of dataset ``spec`` at radius ``epsilon``."""
    check_choice(method, REGISTRY, "method")
    record = REGISTRY[method]
    return record.build(record.settings_from(settings), spec, epsilon)
