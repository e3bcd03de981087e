"""The ALFA-Mix presets: `make_alfamix_selector` behind the strategy interface, one preset
per alpha rule and per ablation of the paper.

Each preset takes the experiment's `SelectorSettings` (`alfamix=`) and fixes the fields that
define it (`dataclasses.replace`), so `alfamix_random_pick` is the config's settings with
alpha="closed-form" and diversity="random"; `alfamix` takes the settings as they are (the
closed form by default, or the config's alpha, anchors and diversity functions). With
`mesh=` (the runner's pool mesh under `train.data_parallel`) the selector splits the pool's
rows over the devices, unless the settings run on one device only (compat="reference",
anchors="labelled"); then the strategy says so in `notes`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from alfamix_jax.selection.selector import make_alfamix_selector, one_device_features
from alfamix_jax.selection.settings import SelectorSettings, part_name
from alfamix_jax.strategies.interface import PoolView, Query, Strategy

# name -> the SelectorSettings fields the preset fixes.
PRESETS = {
    "alfamix": dict(),  # the config's settings as they are (closed form by default)
    "alfamix_learned": dict(alpha="learned"),
    "alfamix_random": dict(alpha="random"),
    # The paper's ablations (closed form): diversification and anchors.
    "alfamix_random_pick": dict(alpha="closed-form", diversity="random"),
    "alfamix_top_alpha": dict(alpha="closed-form", diversity="top-alpha"),
    "alfamix_labelled_anchors": dict(alpha="closed-form", anchors="labelled"),
}


def selector_mesh(settings: SelectorSettings, mesh):
    """(the mesh to build the selector on, a note or None): None and a note saying why when
    the settings keep the selector on one device and the mesh has more than one."""
    features = one_device_features(settings)
    if mesh is None or not features:
        return mesh, None
    if mesh.devices.size <= 1:
        return None, None
    return None, (f"{', '.join(features)} runs on one device: ALFA-Mix selects on one device, not on the "
                  f"mesh of {mesh.devices.size} devices")


def make_alfamix_preset(name: str, **fixed) -> Callable[..., Strategy]:
    """The factory of preset `name`: the experiment's settings with `fixed` fields replaced."""

    def factory(*, budget: int, num_classes: int, alfamix: SelectorSettings | None = None, mesh=None,
                **_) -> Strategy:
        alfamix = SelectorSettings() if alfamix is None else alfamix
        if not isinstance(alfamix, SelectorSettings):
            raise ValueError(f"alfamix: got a {type(alfamix).__name__}; expected a SelectorSettings")
        settings = dataclasses.replace(alfamix, **fixed)
        mesh, note = selector_mesh(settings, mesh)
        select = make_alfamix_selector(budget=budget, num_classes=num_classes, settings=settings, mesh=mesh)

        def query(key, view: PoolView) -> Query:
            result = select(key, view.embeddings, view.labels, view.head_params)
            d = result.diagnostics
            return Query(result.selected, dict(num_candidates=d.num_candidates, num_filled=d.num_filled,
                                               caps_tried=d.caps_tried))

        return Strategy(f"alfamix[{part_name(settings.alpha)}]", query, notes=() if note is None else (note,))

    factory.__name__ = factory.__qualname__ = f"make_{name}"
    fields = ", ".join(f"{k}={v}" for k, v in fixed.items())
    factory.__doc__ = (f"ALFA-Mix with {fields}, the rest from the config's alfamix settings" if fixed
                       else "ALFA-Mix with the config's alfamix settings as they are")
    return factory


STRATEGIES = {name: make_alfamix_preset(name, **fixed) for name, fixed in PRESETS.items()}
