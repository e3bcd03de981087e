"""The strategy registry: name -> factory, `register_strategy` to add one, `make_strategy`
to build one, and `BaselineSettings`, the baselines' share of an experiment config.

A factory is called with keywords only and ignores those it does not use (`**_`):

    factory(*, budget, num_classes, alfamix=SelectorSettings, mesh=Mesh | None,
            block_size=..., <its own baseline keywords>) -> Strategy | query

where a bare `query(key, view) -> Query` function is wrapped into `Strategy(name, query)`.
"""
from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Callable

from alfamix_jax.selection.settings import COMPAT_MODES, SelectorSettings, SettingError, check_integer
from alfamix_jax.strategies.interface import Strategy

# name -> factory(*, budget, num_classes, **settings) -> Strategy (or a bare query function)
STRATEGIES: dict[str, Callable[..., Strategy | Callable]] = {}
_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """Settings of the baselines (defaults: the original repository or the method's paper;
    each module's docstring says which)."""

    block_size: int = 4096  # rows per block where a baseline tiles the pool
    bald_passes: int = 5  # MC-dropout passes (the original's n_drop); needs model.dropout > 0
    dropquery_passes: int = 3
    dropquery_dropout: float = 0.75
    gcnal_subset_size: int = 10000  # unlabelled rows the GCN sees (the original's SUBSET)
    gcnal_train_steps: int = 200
    deepfool_max_iter: int = 50
    badge_include_bias: bool = False
    compat: str = "default"  # "reference" reproduces the original's CDAL / DeepFool quirks

    def __post_init__(self):
        for name in ("block_size", "bald_passes", "dropquery_passes", "gcnal_subset_size", "gcnal_train_steps",
                     "deepfool_max_iter"):
            check_integer(name, getattr(self, name))
        rate = self.dropquery_dropout
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise SettingError("dropquery_dropout", f"got {rate!r}; expected a dropout rate in [0, 1)")
        if not isinstance(self.badge_include_bias, bool):
            raise SettingError("badge_include_bias", f"got {self.badge_include_bias!r}; expected True or False")
        if self.compat not in COMPAT_MODES:
            raise SettingError("compat", f"got {self.compat!r}; expected one of {', '.join(COMPAT_MODES)}")

    def for_strategy(self, name: str) -> dict:
        """The factory keywords of strategy `name`."""
        per_name = {
            "bald": dict(passes=self.bald_passes),
            "dropquery": dict(passes=self.dropquery_passes, dropout_rate=self.dropquery_dropout),
            "gcnal": dict(subset_size=self.gcnal_subset_size, train_steps=self.gcnal_train_steps),
            "gcnal_uncertain": dict(subset_size=self.gcnal_subset_size, train_steps=self.gcnal_train_steps),
            "adversarial_deepfool": dict(max_iter=self.deepfool_max_iter, compat=self.compat),
            "cdal": dict(compat=self.compat),
            "badge": dict(include_bias=self.badge_include_bias),
        }
        return dict(block_size=self.block_size, **per_name.get(name, {}))


def register_strategy(name: str, factory: Callable, *, replace: bool = False) -> None:
    """Add strategy `name` (letters, digits, _ and -) built by `factory` (see the module
    docstring for its keywords). An existing name is refused unless `replace=True`, or
    unless `factory` is the one registered (same module and name: a config file loaded
    again registers its strategies again)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"register_strategy: name got {name!r}; expected a non-empty string of letters, digits, "
                         "'_' and '-', e.g. 'my_strategy'")
    if not callable(factory):
        raise ValueError(f"register_strategy({name!r}): factory is a {type(factory).__name__}; expected a function "
                         "factory(*, budget, num_classes, **settings) -> Strategy")
    old = STRATEGIES.get(name)
    if old is not None and not replace and _origin(old) != _origin(factory):
        raise ValueError(f"register_strategy: strategy {name!r} is already registered (by {_origin(old)}); choose "
                         "another name, or pass replace=True to replace it")
    STRATEGIES[name] = factory


def _origin(factory) -> str:
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


def make_strategy(name: str, *, budget: int, num_classes: int, alfamix: SelectorSettings | None = None,
                  baselines: BaselineSettings | None = None, mesh=None) -> Strategy:
    """Build the strategy called `name` (a key of STRATEGIES) for this budget. `mesh`: the pool
    mesh of a data-parallel run (the ALFA-Mix presets select on it; baselines ignore it)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; choose from {sorted(STRATEGIES)}, or add it with "
                         "register_strategy")
    return build_strategy(name, STRATEGIES[name], budget=budget, num_classes=num_classes, alfamix=alfamix,
                          baselines=baselines, mesh=mesh)


def build_strategy(name: str, factory: Callable, *, budget: int, num_classes: int,
                   alfamix: SelectorSettings | None = None, baselines: BaselineSettings | None = None,
                   mesh=None) -> Strategy:
    """Call `factory` with the registry's keywords; wrap a bare query function."""
    alfamix = SelectorSettings() if alfamix is None else alfamix
    baselines = BaselineSettings() if baselines is None else baselines
    if not isinstance(baselines, BaselineSettings):
        raise ValueError(f"baselines: got a {type(baselines).__name__}; expected a BaselineSettings")
    built = factory(budget=budget, num_classes=num_classes, alfamix=alfamix, mesh=mesh,
                    **baselines.for_strategy(name))
    if isinstance(built, Strategy):
        return built
    if callable(built):
        return Strategy(name, built)
    raise ValueError(f"strategy {name!r}: its factory returned a {type(built).__name__}; expected a Strategy or a "
                     "function query(key, view) -> Query")


def _register_builtins() -> None:
    """random, entropy, the ALFA-Mix presets, then the paper's baselines (one module per family)."""
    from alfamix_jax.strategies import alfamix, simple
    from alfamix_jax.strategies.baselines import badge, cdal, coreset, deepfool, dropquery, gcnal, uncertainty

    for module in (simple, alfamix, uncertainty, coreset, badge, gcnal, dropquery, cdal, deepfool):
        for name, factory in module.STRATEGIES.items():
            register_strategy(name, factory)


_register_builtins()
