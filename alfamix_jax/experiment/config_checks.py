"""Checks of a whole experiment config, before any data is loaded or anything is written.

Fail fast and name the setting: `check_config` needs only the config (a bad one fails in well
under a second, before JAX starts); `check_pool` needs the loaded labels.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import numpy as np

from alfamix_jax.experiment.config import INITIAL_MODES, ExperimentConfig, check_recordable_parts
from alfamix_jax.experiment.training import check_train_config
from alfamix_jax.selection.settings import SelectorSettings, SettingError, check_seed
from alfamix_jax.strategies import STRATEGIES, BaselineSettings

MODELS = ("mlp", "cnn", "resnet18")
INT64_MAX = 2**63 - 1
MAX_ROUNDS = 100_000  # a bound for the per-round checks; each round also needs rows of the pool


def check_config(config: ExperimentConfig, *, files: bool = True) -> None:
    """The whole config: every number finite and in range, the data and model names, the
    selector and baseline settings, the strategies (registered by then, a config file's own
    too), the loop and the training settings; with files, that the data's files are there."""
    from alfamix_jax.experiment.data import check_dataset_args

    check_numbers(config)
    d = config.data
    check_dataset_args(d.name, data_dir=d.data_dir, path=d.path, normalisation=d.normalisation, files=files)
    _check_data_and_model(config)
    _check_settings(config)
    _check_strategies(config)
    _check_loop(config.loop)
    try:
        check_train_config(config.train)
    except ValueError as e:
        raise ValueError(f"train.{e}") from None
    if config.train.data_parallel and config.train.batch_size % jax.device_count():
        raise ValueError(f"train.batch_size {config.train.batch_size} must be a multiple of the {jax.device_count()} "
                         "devices with train.data_parallel (each device trains on an equal share of a batch)")
    if not 0 < config.train.stop_accuracy <= 1:  # the trainer also takes > 1 (never stop); a config may not
        raise ValueError(f"train.stop_accuracy must be in (0, 1], got {config.train.stop_accuracy}")


def check_numbers(node, where: str = "") -> None:
    """Every float field finite, every integer field within int64 (NumPy and XLA hold them
    there), recursively over the config's sections: ValueError naming the field."""
    for field in dataclasses.fields(node):
        value, name = getattr(node, field.name), f"{where}{field.name}"
        if dataclasses.is_dataclass(value):
            check_numbers(value, f"{name}.")
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bool) or not isinstance(item, numbers.Real):
                continue
            if isinstance(item, numbers.Integral) and abs(int(item)) > INT64_MAX:
                raise ValueError(f"{name}: got {item}; expected an integer within +-(2**63 - 1)")
            if not isinstance(item, numbers.Integral) and not math.isfinite(item):
                raise ValueError(f"{name}: got {item}; expected a finite number")


def _check_data_and_model(config: ExperimentConfig) -> None:
    d, m = config.data, config.model
    for name, value in (("max_train", d.max_train), ("max_test", d.max_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"data.{name}: got {value!r}; expected an integer >= 1, or None for the whole split")
    _seed("data.split_seed", d.split_seed)
    if m.name not in MODELS:
        raise ValueError(f"model.name {m.name!r} is unknown; choose from {MODELS}")
    if m.embed_dim is not None and (isinstance(m.embed_dim, bool) or not isinstance(m.embed_dim, numbers.Integral)
                                    or m.embed_dim < 1):
        raise ValueError(f"model.embed_dim: got {m.embed_dim!r}; expected an integer >= 1, or None")
    if isinstance(m.dropout, bool) or not isinstance(m.dropout, numbers.Real) or not 0 <= m.dropout < 1:
        raise ValueError(f"model.dropout: got {m.dropout!r}; expected a rate in [0, 1)")


def _seed(name: str, value) -> None:
    try:
        check_seed(name, value)
    except SettingError as e:
        raise ValueError(str(e)) from None


def _check_settings(config: ExperimentConfig) -> None:
    """alfamix and baselines: the right types, valid (checked again, in case a value was set
    around the dataclass), and every selector part importable by the name config.json records."""
    for section, cls in (("alfamix", SelectorSettings), ("baselines", BaselineSettings)):
        value = getattr(config, section)
        if not isinstance(value, cls):
            raise ValueError(f"{section}: got a {type(value).__name__}; expected a {cls.__name__}")
        try:
            dataclasses.replace(value)  # runs the section's own checks (__post_init__)
        except ValueError as e:
            raise ValueError(f"{section}.{e}") from None
    check_recordable_parts(config.alfamix)


def _check_strategies(config: ExperimentConfig) -> None:
    if not config.strategies:
        raise ValueError("strategies is empty; name at least one of " + ", ".join(sorted(STRATEGIES)))
    for name in config.strategies:
        if name not in STRATEGIES:
            raise ValueError(f"strategies: {name!r} is unknown; choose from {sorted(STRATEGIES)}, or register it in "
                             "the config file (alfamix_jax.strategies.register_strategy)")
    if len(set(config.strategies)) != len(config.strategies):
        raise ValueError(f"strategies has duplicates: {list(config.strategies)}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"seeds must be a non-empty list without duplicates, got {list(config.seeds)}")
    for seed in config.seeds:
        _seed("seeds", seed)
    if "bald" in config.strategies and config.model.dropout <= 0:
        raise ValueError("strategy 'bald' needs MC dropout: set model.dropout > 0 (e.g. --set model.dropout=0.3); "
                         "with dropout 0 every pass is the same and BALD's score is 0 everywhere")


def _check_loop(loop) -> None:
    for name in ("initial_size", "budget", "rounds"):
        value = getattr(loop, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"loop.{name} must be an integer >= 1, got {value!r}")
    if loop.rounds > MAX_ROUNDS:
        raise ValueError(f"loop.rounds must be <= {MAX_ROUNDS}, got {loop.rounds}")
    if not loop.growth_ratio > 0:
        raise ValueError(f"loop.growth_ratio must be > 0, got {loop.growth_ratio}")
    if loop.initial_mode not in INITIAL_MODES:
        raise ValueError(f"loop.initial_mode must be one of {INITIAL_MODES}, got {loop.initial_mode!r}")
    for r in range(1, loop.rounds + 1):
        try:
            budget = loop.budget_at(r)
        except OverflowError:
            budget = None
        if budget is None or budget > INT64_MAX:
            raise ValueError(f"loop.growth_ratio {loop.growth_ratio} makes round {r}'s budget overflow; "
                             "lower loop.growth_ratio or loop.rounds")
        if budget < 1:
            raise ValueError(f"loop.growth_ratio {loop.growth_ratio} shrinks the budget below 1 row")


def check_pool(config: ExperimentConfig, y_train: np.ndarray, num_classes: int) -> None:
    """Checks that need the data: the protocol must fit in the pool."""
    loop, pool_size = config.loop, len(y_train)
    total = loop.initial_size + sum(loop.budget_at(r) for r in range(1, loop.rounds + 1))
    if total > pool_size:
        raise ValueError(
            f"the protocol labels {total} rows (initial_size {loop.initial_size} + budgets over {loop.rounds} "
            f"rounds) but the pool of {config.data.name!r} has {pool_size}; lower loop.budget or loop.rounds"
        )
    if loop.initial_mode == "per_class":
        if loop.initial_size % num_classes:
            raise ValueError(
                f"loop.initial_size {loop.initial_size} must be a multiple of the {num_classes} classes "
                "with initial_mode='per_class'"
            )
        counts = np.bincount(y_train, minlength=num_classes)
        if counts.min() < loop.initial_size // num_classes:
            raise ValueError(
                f"initial_mode='per_class' needs {loop.initial_size // num_classes} rows of every class; class "
                f"{int(counts.argmin())} has {int(counts.min())}"
            )
