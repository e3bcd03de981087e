"""One interface for every query strategy: `query(key, view) -> Query`.

A strategy is built once per (name, budget) by a factory from `STRATEGIES` and is a pure
function of a PRNG key and a `PoolView` (the model's outputs on the whole pool plus who is
labelled). Shapes are fixed by the pool size, so a strategy compiles once per budget, not
once per round. Add your own with `register_strategy` and test it with `check_strategy`.

    interface.py  PoolView, Query, Strategy, check_query (the runner's check of every batch)
    registry.py   STRATEGIES, register_strategy, make_strategy, BaselineSettings
    simple.py     random, entropy, and the score-ranking helpers of the baselines
    alfamix.py    the ALFA-Mix presets (alfamix, alfamix_learned, ... and the ablations)
    checks.py     check_strategy (the invariants every registered strategy passes)
    baselines/    the paper's baselines, one module per family
"""
from alfamix_jax.strategies.alfamix import make_alfamix_preset
from alfamix_jax.strategies.checks import check_strategy
from alfamix_jax.strategies.interface import PoolView, Query, Strategy, check_query
from alfamix_jax.strategies.registry import (
    STRATEGIES,
    BaselineSettings,
    build_strategy,
    make_strategy,
    register_strategy,
)
from alfamix_jax.strategies.simple import (
    make_entropy,
    make_random,
    make_score_strategy,
    predictive_entropy,
    top_unlabelled,
)

__all__ = [
    "STRATEGIES",
    "BaselineSettings",
    "PoolView",
    "Query",
    "Strategy",
    "build_strategy",
    "check_query",
    "check_strategy",
    "make_alfamix_preset",
    "make_entropy",
    "make_random",
    "make_score_strategy",
    "make_strategy",
    "predictive_entropy",
    "register_strategy",
    "top_unlabelled",
]
