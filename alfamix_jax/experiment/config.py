"""Experiment configs: typed, frozen dataclasses built by a Python file's
`get_config()`, with `key.path=value` overrides from the command line.

`--config NAME` names a shipped config (`alfamix_jax/experiment/configs/NAME.py`,
so it ships with the package); anything ending in `.py` is loaded from that path,
with its folder put first on `sys.path` (and left there), so the file may import
modules beside it: helper modules that define strategies (`register_strategy`) or
selector parts given as "module:function". Library functions take the typed pieces
(`TrainConfig`, `SelectorSettings`), never the whole config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import types
import typing

from alfamix_jax.experiment.training import TrainConfig
from alfamix_jax.selection.settings import SelectorSettings, parse_value, part_name
from alfamix_jax.strategies import BaselineSettings

INITIAL_MODES = ("random", "per_class", "original")
PART_FIELDS = ("alpha", "anchors", "diversity")  # SelectorSettings fields that may hold a function


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # see alfamix_jax.experiment.data.DATASETS
    data_dir: str | None = None  # prepared TFDS data, or the Fashion-MNIST IDX directory
    path: str | None = None  # for "npz" and "folder"
    max_train: int | None = None  # a seeded subset of the pool, for quick runs
    max_test: int | None = None
    split_seed: int = 0  # seeds the max_train / max_test subsets (digits' 80/20 split is fixed)
    # "dataset": the images' own mean/std; "mnist": MNIST's (0.1307, 0.3081) for any image dataset,
    # as the original code's MNIST handler did when it ran Fashion-MNIST (see data.NORMALISATIONS).
    normalisation: str = "dataset"


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
    # "random": initial_size rows drawn with the seed's JAX key; "per_class": initial_size / C per
    # class; "original": the original main.py's draw for the seed (np.random.seed(seed), shuffle
    # arange(N), the first initial_size), so a seed's initial set is the original's for that seed.
    initial_mode: str = "random"
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
    alfamix: SelectorSettings = SelectorSettings()
    baselines: BaselineSettings = BaselineSettings()
    strategies: tuple[str, ...] = ("alfamix", "random", "entropy")
    seeds: tuple[int, ...] = (1, 10, 100, 1000, 10000)

    def to_dict(self) -> dict:
        """Plain data (config.json): a function-valued selector part as its 'module:function' name."""
        data = dataclasses.asdict(self)
        for field in PART_FIELDS:
            data["alfamix"][field] = part_name(data["alfamix"][field])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def check_recordable_parts(settings: SelectorSettings, section: str = "alfamix") -> None:
    """Each function-valued part of `settings` must import back from the 'module:function'
    name that config.json records (a resumed run, and check_workdir, import it again):
    a lambda, a nested function or a functools.partial cannot; ValueError naming the field."""
    advice = ("define it as a module-level function (in a module beside the config file) and give the function "
              "or 'module:function'")
    for field in PART_FIELDS:
        value = getattr(settings, field)
        if isinstance(value, str):
            continue  # a built-in name, or 'module:function' (SelectorSettings imported it already)
        where = f"{section}.{field}"
        qualname, module = getattr(value, "__qualname__", None), getattr(value, "__module__", None)
        if not isinstance(qualname, str) or not isinstance(module, str):
            raise ValueError(f"{where}: a {type(value).__name__} has no name config.json can record; {advice}")
        name = part_name(value)
        if "<" in qualname:
            raise ValueError(f"{where}: {name!r} is a lambda or a nested function, which config.json cannot record "
                             f"(a resumed run could not import it); {advice}")
        try:
            found = dataclasses.replace(settings, **{field: name}).part(field)
        except ValueError as e:
            raise ValueError(f"{where}: config.json would record {name!r}, which does not import ({e}); "
                             f"{advice}") from None
        if found is not value:
            raise ValueError(f"{where}: {name!r} imports another object than the function given; {advice}")


def load_config(name_or_path: str) -> ExperimentConfig:
    """A shipped config by name, or a `.py` file defining `get_config()` (see the module docstring)."""
    if name_or_path.endswith(".py"):
        module = _load_config_file(name_or_path)
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
    try:
        config = module.get_config()
    except ValueError as e:
        raise ValueError(f"--config {name_or_path}: get_config(): {e}") from e
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"--config: get_config() of {name_or_path!r} must return an ExperimentConfig")
    return config


def _load_config_file(path: str) -> types.ModuleType:
    """Execute a config file as a module named after its path (in sys.modules, so its
    functions have an importable 'module:function' name), its folder first on sys.path."""
    if not os.path.isfile(path):
        raise ValueError(f"--config: no such file {path!r}")
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()  # modules written beside it since the last import are found
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"alfamix_config_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def shipped_configs() -> list[str]:
    folder = os.path.join(os.path.dirname(__file__), "configs")
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply `path.to.field=value` strings, e.g. `train.learning_rate=0.01`, `seeds=1,2`.
    A value the section refuses raises ValueError prefixed with the override, e.g.
    "--set alfamix.block_size=0: block_size: got 0; expected an integer >= 1"."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=0.01")
        path, text = item.split("=", 1)
        config = _replace_path(config, path.strip().split("."), text.strip(), path, item)
    return config


def _replace_path(node, parts: list[str], text: str, where: str, item: str):
    hints = typing.get_type_hints(type(node))
    field = parts[0]
    if field not in hints:
        names = ", ".join(f.name for f in dataclasses.fields(node))
        raise ValueError(f"--set {where}: {type(node).__name__} has no field {field!r} (fields: {names})")
    if len(parts) == 1:
        value = parse_value(text, hints[field], f"--set {where}")
    else:
        child = getattr(node, field)
        if not dataclasses.is_dataclass(child):
            raise ValueError(f"--set {where}: {field!r} is not a section")
        value = _replace_path(child, parts[1:], text, where, item)
    try:
        return dataclasses.replace(node, **{field: value})
    except ValueError as e:  # the section's own check (SelectorSettings, BaselineSettings, ...)
        raise ValueError(f"--set {item}: {e}") from None


def from_dict(data: dict) -> ExperimentConfig:
    """Inverse of `ExperimentConfig.to_dict` (for the copy saved in a workdir): nested sections
    (`alfamix.learned` too) rebuilt; a part recorded as 'module:function' is imported again."""

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
