"""The simple strategies: random and entropy, and the helpers every score-ranking baseline
shares (`top_unlabelled`, `make_score_strategy`)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from alfamix_jax.selection.threefry import uniform_draws
from alfamix_jax.strategies.interface import PoolView, Query, Strategy


def top_unlabelled(score, labels, budget: int):  # [N], [N] -> [B] int32
    """The `budget` unlabelled rows with the highest score; ties go to the lower index."""
    score = jnp.where(labels >= 0, -jnp.inf, score)
    return jax.lax.top_k(score, budget)[1].astype(jnp.int32)


def make_random(*, budget: int, **_) -> Strategy:
    """Uniformly random unlabelled rows (a key-driven score, so no replacement)."""

    @jax.jit
    def query(key, view: PoolView) -> Query:
        score = uniform_draws(key, view.labels.shape[0])
        return Query(top_unlabelled(score, view.labels, budget), {})

    return Strategy("random", query)


def predictive_entropy(logits):  # [N, C] -> [N]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def make_score_strategy(name: str, score_fn: Callable[[jax.Array], jax.Array], budget: int) -> Strategy:
    """A deterministic strategy: the `budget` unlabelled rows with the highest
    `score_fn(logits [N, C]) -> [N]`."""

    @jax.jit
    def query(key, view: PoolView) -> Query:
        del key
        return Query(top_unlabelled(score_fn(view.logits), view.labels, budget), {})

    return Strategy(name, query)


def make_entropy(*, budget: int, **_) -> Strategy:
    """Rows whose predictive distribution has the highest Shannon entropy
    (the original's EntropySampling: top-B of -sum p log p)."""
    return make_score_strategy("entropy", predictive_entropy, budget)


STRATEGIES = {"random": make_random, "entropy": make_entropy}
