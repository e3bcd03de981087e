"""One interface for every query strategy: `query(key, view) -> Query`.

A strategy is built once per (name, budget) by a factory from `STRATEGIES`
and is a pure function of a PRNG key and a `PoolView` (the model's outputs on
the whole pool plus who is labelled). Shapes are fixed by the pool size, so a
strategy compiles once per budget, not once per round. The baselines of the
paper join this registry (issue 4) without touching the runner.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alfamix_jax.mixing import LearnedAlphaConfig
from alfamix_jax.select import make_alfamix_selector


class PoolView(NamedTuple):
    """What a strategy may look at. Rows are the whole pool, labelled or not."""

    embeddings: jax.Array  # [N, D] the model's embedding of every pool row
    logits: jax.Array  # [N, C] the model's logits (eval mode)
    labels: jax.Array  # [N] int32 class of labelled rows, -1 for unlabelled
    head_params: Any  # the classifier head's parameters (a LinearHead for our models)


class Query(NamedTuple):
    selected: jax.Array  # [B] int32 pool indices, unlabelled, unique
    diagnostics: dict  # name -> scalar array (empty for the simple baselines)


@dataclasses.dataclass(frozen=True)
class AlfaMixSettings:
    """ALFA-Mix settings shared by the `alfamix*` presets (see make_alfamix_selector)."""

    alpha_cap_step: float = 0.2
    compat: str = "default"  # "default" fixes the original's defects; "reference" reproduces them
    block_size: int = 4096
    max_candidates: int = 65536
    kmeans_max_iters: int = 100
    learned_learning_rate: float = 0.1
    learned_iters: int = 5
    learned_l2_coef: float = 0.01


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    query: Callable[[jax.Array, PoolView], Query]


def _top_unlabelled(score, labels, budget: int):
    """The `budget` unlabelled rows with the highest score; ties go to the lower index."""
    score = jnp.where(labels >= 0, -jnp.inf, score)
    return jax.lax.top_k(score, budget)[1].astype(jnp.int32)


def make_random(*, budget: int, **_) -> Strategy:
    """Uniformly random unlabelled rows (a key-driven score, so no replacement)."""

    @jax.jit
    def query(key, view: PoolView) -> Query:
        score = jax.random.uniform(key, view.labels.shape)
        return Query(_top_unlabelled(score, view.labels, budget), {})

    return Strategy("random", query)


def predictive_entropy(logits):  # [N, C] -> [N]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def make_entropy(*, budget: int, **_) -> Strategy:
    """Rows whose predictive distribution has the highest Shannon entropy
    (the original's EntropySampling: top-B of -sum p log p)."""

    @jax.jit
    def query(key, view: PoolView) -> Query:
        del key
        return Query(_top_unlabelled(predictive_entropy(view.logits), view.labels, budget), {})

    return Strategy("entropy", query)


def _make_alfamix(alpha: str):
    def factory(*, budget: int, num_classes: int, alfamix: AlfaMixSettings = AlfaMixSettings(), **_) -> Strategy:
        learned = LearnedAlphaConfig(learning_rate=alfamix.learned_learning_rate, iters=alfamix.learned_iters,
                                     l2_coef=alfamix.learned_l2_coef)
        select = make_alfamix_selector(
            budget=budget, num_classes=num_classes, alpha=alpha, compat=alfamix.compat,
            alpha_cap_step=alfamix.alpha_cap_step, learned=learned, block_size=alfamix.block_size,
            max_candidates=max(alfamix.max_candidates, budget), kmeans_max_iters=alfamix.kmeans_max_iters,
        )

        def query(key, view: PoolView) -> Query:
            result = select(key, view.embeddings, view.labels, view.head_params)
            diagnostics = {k: result.diagnostics[k] for k in ("num_candidates", "num_filled", "caps_tried")}
            return Query(result.selected, diagnostics)

        return Strategy(f"alfamix[{alpha}]", query)

    return factory


# name -> factory(*, budget, num_classes, alfamix) -> Strategy
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "random": make_random,
    "entropy": make_entropy,
    "alfamix": _make_alfamix("closed-form"),
    "alfamix_learned": _make_alfamix("learned"),
    "alfamix_random": _make_alfamix("random"),
}


def make_strategy(name: str, *, budget: int, num_classes: int, alfamix: AlfaMixSettings = AlfaMixSettings()):
    """Build the strategy called `name` (a key of STRATEGIES) for this budget."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name](budget=budget, num_classes=num_classes, alfamix=alfamix)
