"""Experiment configs: typed, frozen dataclasses built by a Python file's
`get_config()`, with `key.path=value` overrides from the command line.

`--config NAME` names a shipped config (`alfamix_jax/configs/NAME.py`, so it
ships with the package); anything ending in `.py` is loaded from that path.
Library functions take the typed pieces (`TrainConfig`, `AlfaMixSettings`),
never the whole config.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import types
import typing

from alfamix_jax.experiment.training import TrainConfig
from alfamix_jax.strategies import AlfaMixSettings, BaselineSettings

INITIAL_MODES = ("random", "per_class")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # see alfamix_jax.experiment.data.DATASETS
    data_dir: str | None = None  # prepared TFDS data, or the Fashion-MNIST IDX directory
    path: str | None = None  # for "npz" and "folder"
    max_train: int | None = None  # a seeded subset of the pool, for quick runs
    max_test: int | None = None
    split_seed: int = 0  # seeds the max_train / max_test subsets (digits' 80/20 split is fixed)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # "mlp" | "cnn" | "resnet18"
    embed_dim: int | None = None  # None: the model's default (mlp 256, as the original)
    dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The active-learning protocol: `rounds` queries after the initial set,
    so a run has rounds + 1 accuracy points (round 0 = the initial set)."""

    initial_size: int = 100
    initial_mode: str = "random"  # "random" | "per_class" (initial_size / C per class)
    budget: int = 100  # rows queried in round 1
    growth_ratio: float = 1.0  # round r queries round(budget * growth_ratio ** (r - 1))
    rounds: int = 10

    def budget_at(self, round_index: int) -> int:
        """Rows queried in round `round_index` (1-based)."""
        return int(round(self.budget * self.growth_ratio ** (round_index - 1)))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    loop: LoopConfig = LoopConfig()
    alfamix: AlfaMixSettings = AlfaMixSettings()
    baselines: BaselineSettings = BaselineSettings()
    strategies: tuple[str, ...] = ("alfamix", "random", "entropy")
    seeds: tuple[int, ...] = (1, 10, 100, 1000, 10000)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def load_config(name_or_path: str) -> ExperimentConfig:
    """A shipped config by name, or a `.py` file defining `get_config()`."""
    if name_or_path.endswith(".py"):
        if not os.path.isfile(name_or_path):
            raise ValueError(f"--config: no such file {name_or_path!r}")
        spec = importlib.util.spec_from_file_location("alfamix_user_config", name_or_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"alfamix_jax.experiment.configs.{name_or_path}")
        except ModuleNotFoundError:
            raise ValueError(
                f"--config: {name_or_path!r} is neither a shipped config ({', '.join(shipped_configs())}) "
                "nor a path ending in .py"
            ) from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {name_or_path!r} has no get_config()")
    config = module.get_config()
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"--config: get_config() of {name_or_path!r} must return an ExperimentConfig")
    return config


def shipped_configs() -> list[str]:
    folder = os.path.join(os.path.dirname(__file__), "configs")
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def _parse_value(text: str, annotation, where: str):
    """Parse `text` as the field's type: int, float, bool, str, None, or a tuple of those."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):  # X | None
        if text.lower() in ("none", "null", ""):
            return None
        return _parse_value(text, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        return tuple(_parse_value(part.strip(), args[0], where) for part in text.split(",") if part.strip())
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise ValueError(f"--set {where}: expected {annotation.__name__}, got {text!r}") from None
    raise ValueError(f"--set {where}: cannot parse a value of type {annotation}")


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply `path.to.field=value` strings, e.g. `train.learning_rate=0.01`, `seeds=1,2`."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=0.01")
        path, text = item.split("=", 1)
        config = _replace_path(config, path.strip().split("."), text.strip(), path)
    return config


def _replace_path(node, parts: list[str], text: str, where: str):
    hints = typing.get_type_hints(type(node))
    field = parts[0]
    if field not in hints:
        names = ", ".join(f.name for f in dataclasses.fields(node))
        raise ValueError(f"--set {where}: {type(node).__name__} has no field {field!r} (fields: {names})")
    if len(parts) == 1:
        value = _parse_value(text, hints[field], where)
    else:
        child = getattr(node, field)
        if not dataclasses.is_dataclass(child):
            raise ValueError(f"--set {where}: {field!r} is not a section")
        value = _replace_path(child, parts[1:], text, where)
    return dataclasses.replace(node, **{field: value})


def from_dict(data: dict) -> ExperimentConfig:
    """Inverse of `ExperimentConfig.to_dict` (for the copy saved in a workdir)."""

    def build(cls, values):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value, hint = values[f.name], hints[f.name]
            if dataclasses.is_dataclass(hint):
                value = build(hint, value)
            elif typing.get_origin(hint) is tuple:
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    return build(ExperimentConfig, data)
