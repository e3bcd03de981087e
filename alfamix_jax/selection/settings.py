"""`SelectorSettings`: every setting of an ALFA-Mix selector, in one frozen, typed object.

The factory (`make_alfamix_selector`), the CLI, the experiment configs (`alfamix=`) and the
strategy presets all build this one type, so a setting has one name and one rule everywhere.
Each rule is checked once, when the object is built (`__post_init__`, which
`dataclasses.replace` runs too): an object that exists is valid.

Budget and the number of classes are not settings: they are the factory's own arguments,
because a run changes the budget from round to round while the settings stay.

Three parts take a function instead of a built-in name (see `make_alfamix_selector` for
their contracts): `alpha`, `anchors` and `diversity`. A config file gives such a part as
the function itself or as an import path "package.module:function"; the experiment's saved
config.json records it by that path.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

ALPHA_RULES = ("closed-form", "random", "learned")
ANCHOR_RULES = ("class-means", "labelled")  # the paper's anchor ablation
DIVERSITY_RULES = ("kmeans", "random", "top-alpha")  # the paper's diversification ablation
COMPAT_MODES = ("default", "reference")
MAX_CAPS = 1000  # caps tried per round: shapes inside the search grow with it

Part = str | Callable[..., Any]
_T = TypeVar("_T")


class SettingError(ValueError):
    """A setting that no selector can use; `field` names it (CLI and configs add their prefix)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_integer(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> int | None:
    """A Python / NumPy integer >= minimum (not a bool), or None when optional; else a
    SettingError (a ValueError) naming `name`. -> the value as an int (or None)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SettingError(name, f"got {value!r}; expected an integer >= {minimum}" + (" or None" if optional else ""))
    return int(value)


SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits without x64: key(2**32) is key(0), key(-1) is key(2**32 - 1)


def check_seed(name: str, value: object) -> int:
    """A PRNG seed: an integer in [0, 2**32 - 1] (wider ones would silently collide with
    narrower ones); else a SettingError naming `name`. -> the seed as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= SEED_MAX:
        raise SettingError(name, f"got {value!r}; expected an integer in [0, {SEED_MAX}] (2**32 - 1): "
                                 "a wider seed would give the same keys as a narrower one")
    return int(value)


def _real(owner: str, field: str, value: float, *, positive: bool = False, non_negative: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and non_negative:
        ok = value >= 0
    if not ok:
        bound = " > 0" if positive else " >= 0" if non_negative else ""
        raise SettingError(f"{owner}{field}", f"got {value!r}; expected a finite number{bound}")


def resolve_part(field: str, value: Part, builtins: tuple[str, ...]) -> Part:
    """A built-in name as it is, a callable as it is, "module:function" imported.
    Raises SettingError naming `field` for anything else."""
    if callable(value):
        return value
    if isinstance(value, str) and value in builtins:
        return value
    if isinstance(value, str) and ":" in value:
        module_name, _, attr = value.partition(":")
        try:
            target = importlib.import_module(module_name)
            for name in attr.split("."):
                target = getattr(target, name)
        except (ImportError, AttributeError, ValueError) as e:
            raise SettingError(field, f"cannot import {value!r} ({e}); expected 'module:function' on the "
                                      "Python path (a config file's own folder is on it)") from None
        if not callable(target):
            raise SettingError(field, f"{value!r} is a {type(target).__name__}, not a function")
        return target
    raise SettingError(field, f"got {value!r}; expected one of {', '.join(builtins)}, a function, "
                              "or 'module:function'")


def part_name(value: Part) -> str:
    """How a config file records a part: the built-in name, or 'module:qualname'."""
    if isinstance(value, str):
        return value
    return f"{value.__module__}:{value.__qualname__}"


def _setting(default: _T, help: str) -> _T:
    """A field with its help text (the CLI's --help and the README show it)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class LearnedAlphaSettings:
    """The learned alpha's optimisation (the original's defaults): `iters` Adam steps on
    `-clf_coef * CE(f(mix), pseudo) + l2_coef * ||alpha||`, rate / 10 for the last third."""

    learning_rate: float = _setting(0.1, "learned alpha: Adam's learning rate")
    iters: int = _setting(5, "learned alpha: Adam steps per cap and anchor")
    clf_coef: float = _setting(1.0, "learned alpha: weight of the pseudo-label loss")
    l2_coef: float = _setting(0.01, "learned alpha: weight of ||alpha||")

    def __post_init__(self) -> None:
        _real("learned.", "learning_rate", self.learning_rate, positive=True)
        check_integer("learned.iters", self.iters)
        _real("learned.", "clf_coef", self.clf_coef)
        _real("learned.", "l2_coef", self.l2_coef, non_negative=True)


@dataclasses.dataclass(frozen=True)
class SelectorSettings:
    """How an ALFA-Mix selector selects (what), and its block sizes (how fast)."""

    alpha: Part = _setting("closed-form", "the alpha rule: closed-form (paper eq. 5), random, learned (Adam "
                                          "steps), or module:function")
    compat: str = _setting("default", "default fixes the original's defects Q1-Q6; reference reproduces its "
                                      "semantics (one device)")
    alpha_cap_step: float = _setting(0.2, "caps tried: step, 2 step, ... up to 1 (reference: the original's "
                                          "running sum)")
    learned: LearnedAlphaSettings = LearnedAlphaSettings()
    anchors: Part = _setting("class-means", "the anchors: class-means (the paper), labelled (every labelled row; "
                                            "one device), or module:function")
    max_anchors: int = _setting(2048, "labelled anchors: at most this many (a random subset beyond)")
    diversity: Part = _setting("kmeans", "how budget rows are chosen among more candidates: kmeans (the paper), "
                                         "random, top-alpha (the smallest mix that flips), or module:function")
    max_candidates: int = _setting(65536, "most candidates k-means clusters (a random subset beyond; at least "
                                          "the budget)")
    kmeans_max_iters: int = _setting(100, "k-means: most Lloyd iterations")
    kmeans_tol: float = _setting(1e-4, "k-means: stop when the centres move less than this times the mean "
                                       "variance")
    block_size: int = _setting(4096, "rows per block of the search and of k-means' passes (per device on a "
                                     "mesh)")
    kmeans_block_size: int | None = _setting(None, "rows per block of k-means' passes (default: block_size)")
    linear_fast_path: bool = _setting(True, "use the exact shortcut for a linear head with the closed form")
    stream_block_size: int = _setting(65536, "a pool streamed from the host (a NumPy array or .npy on a mesh): "
                                             "rows per device per block read")
    prefetch: int = _setting(2, "a streamed pool: blocks read ahead")

    def __post_init__(self) -> None:
        resolve_part("alpha", self.alpha, ALPHA_RULES)
        resolve_part("anchors", self.anchors, ANCHOR_RULES)
        resolve_part("diversity", self.diversity, DIVERSITY_RULES)
        if self.compat not in COMPAT_MODES:
            raise SettingError("compat", f"got {self.compat!r}; expected one of {', '.join(COMPAT_MODES)}")
        _real("", "alpha_cap_step", self.alpha_cap_step, positive=True)
        if 1.0 / self.alpha_cap_step > MAX_CAPS:
            raise SettingError("alpha_cap_step", f"got {self.alpha_cap_step!r}, which tries "
                                                 f"{math.ceil(1.0 / self.alpha_cap_step)} caps; expected a step "
                                                 f">= {1.0 / MAX_CAPS} (at most {MAX_CAPS} caps)")
        if not isinstance(self.learned, LearnedAlphaSettings):
            raise SettingError("learned", f"got a {type(self.learned).__name__}; expected LearnedAlphaSettings")
        for name in ("max_anchors", "max_candidates", "kmeans_max_iters", "block_size", "stream_block_size",
                     "prefetch"):
            check_integer(name, getattr(self, name))
        check_integer("kmeans_block_size", self.kmeans_block_size, optional=True)
        _real("", "kmeans_tol", self.kmeans_tol, non_negative=True)
        if not isinstance(self.linear_fast_path, bool):
            raise SettingError("linear_fast_path", f"got {self.linear_fast_path!r}; expected True or False")

    def part(self, field: str) -> Part:
        """The alpha / anchors / diversity part: a built-in name or the function itself."""
        builtins = dict(alpha=ALPHA_RULES, anchors=ANCHOR_RULES, diversity=DIVERSITY_RULES)[field]
        return resolve_part(field, getattr(self, field), builtins)

    def with_fields(self, **fields: Any) -> SelectorSettings:
        """A copy with `fields` replaced; an unknown name is a SettingError listing the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SettingError(unknown[0], f"not a selector setting; the settings are {', '.join(sorted(known))}")
        return dataclasses.replace(self, **fields)


def parse_value(text: str, annotation: Any, where: str) -> Any:
    """`text` as a value of a settings field's type: int, float, bool, str, None, a union of
    those, or a tuple of one of them. ValueError naming `where` (the option or override)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):  # X | None, or a part: str | function
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        return parse_value(text, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        return tuple(parse_value(part.strip(), args[0], where) for part in text.split(",") if part.strip())
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise ValueError(f"{where}: expected {annotation.__name__}, got {text!r}") from None
    raise ValueError(f"{where}: cannot parse a value of type {annotation}")


def flat_fields(cls: Any = SelectorSettings,  # a dataclass type
                prefix: str = "") -> list[tuple[str, object, dataclasses.Field]]:
    """(dotted name, type, field) of every scalar setting, nested sections flattened
    ("learned.iters"): the CLI makes one option of each."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, object, dataclasses.Field]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += flat_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hints[f.name], f))
    return out


def settings_from_flat(values: dict[str, object], base: SelectorSettings | None = None) -> SelectorSettings:
    """SelectorSettings from dotted names ("learned.iters": 3), on top of `base`."""
    base = base or SelectorSettings()
    nested: dict[str, dict] = {}
    top: dict[str, object] = {}
    for name, value in values.items():
        section, _, field = name.rpartition(".")
        if section:
            nested.setdefault(section, {})[field] = value
        else:
            top[name] = value
    for section, fields in nested.items():
        top[section] = dataclasses.replace(getattr(base, section), **fields)
    return base.with_fields(**top)
