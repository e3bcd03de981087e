"""`check_strategy`: the invariants every registered strategy passes, for your own.

    from alfamix_jax.strategies import check_strategy
    check_strategy("mine")                  # a registered name
    check_strategy(make_mine, budget=20)    # or the factory itself

It builds the strategy for a small synthetic pool (NumPy, seeded; Gaussian classes and a
linear head) and asks it twice for a batch and once more after the batch is labelled. The
first broken invariant raises AssertionError saying which.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.selection.heads import LinearHead
from alfamix_jax.selection.settings import SelectorSettings
from alfamix_jax.strategies.interface import PoolView, Strategy, check_query
from alfamix_jax.strategies.registry import BaselineSettings, build_strategy, make_strategy


def check_strategy(name_or_factory: str | Callable, *, budget: int = 12, num_classes: int = 4,
                   pool_size: int = 300, labelled: int = 40, seed: int = 0, max_new_compiles: int = 0,
                   alfamix: SelectorSettings | None = None, baselines: BaselineSettings | None = None) -> Strategy:
    """Check a strategy (a registered name or a factory) on a synthetic pool; returns it built.

    Invariants: exactly `budget` int32 rows, unique, unlabelled only (`check_query`); the same
    key gives the same rows; the next round (the batch labelled, same shapes) compiles at most
    `max_new_compiles` new programs (0 for a jitted query; 1 for a two-stage strategy such as
    the ALFA-Mix presets, whose second stage compiles the first round it is needed) and is
    valid too; `view.mc_logits` is filled only when `needs` asks for it.
    Raises AssertionError naming the strategy and the broken invariant.
    """
    if isinstance(name_or_factory, str):
        name = name_or_factory
        strategy = make_strategy(name, budget=budget, num_classes=num_classes, alfamix=alfamix, baselines=baselines)
    elif callable(name_or_factory):
        name = getattr(name_or_factory, "__name__", type(name_or_factory).__name__)
        strategy = build_strategy(name, name_or_factory, budget=budget, num_classes=num_classes, alfamix=alfamix,
                                  baselines=baselines)
    else:
        raise ValueError(f"check_strategy: got a {type(name_or_factory).__name__}; expected a registered name or a "
                         "factory(*, budget, num_classes, **settings)")
    pool = _Pool(seed, n=pool_size, num_classes=num_classes, labelled=labelled)
    passes = strategy.mc_passes if "mc_logits" in strategy.needs else 0
    first = _first_query(name, strategy, pool, passes, budget)
    again = _query(name, strategy, jax.random.key(7), pool.view(pool.labels, passes), budget, pool.labels)
    if not np.array_equal(first, again):
        raise AssertionError(f"strategy {name!r}: the same key gave different rows ({first.tolist()} then "
                             f"{again.tolist()}); draw every random choice from the key")
    grown = pool.labels.copy()
    grown[first] = pool.true[first]
    next_view = pool.view(grown, passes)
    with count_compiles() as compiles:
        _query(name, strategy, jax.random.key(8), next_view, budget, grown, round_index=2)
    if compiles[0] > max_new_compiles:
        raise AssertionError(f"strategy {name!r}: the next round (more labels, same shapes) compiled {compiles[0]} "
                             f"new program(s); expected at most max_new_compiles={max_new_compiles}. Keep shapes "
                             "fixed by the pool size (a labels mask, not the labelled rows' count)")
    return strategy


def _first_query(name, strategy, pool, passes, budget) -> np.ndarray:
    """The first query; a failure that MC logits would have avoided says to ask for them."""
    try:
        return _query(name, strategy, jax.random.key(7), pool.view(pool.labels, passes), budget, pool.labels)
    except (TypeError, AttributeError, ValueError) as e:
        if passes:
            raise
        try:
            strategy.query(jax.random.key(7), pool.view(pool.labels, 3))
        except Exception:  # noqa: BLE001 (not the missing MC logits: report the first error)
            raise e from None
        raise AssertionError(f"strategy {name!r} fails without view.mc_logits ({type(e).__name__}: {e}) and works "
                             "with them; declare them: Strategy(..., needs={'mc_logits'}, mc_passes=T)") from e


def _query(name, strategy, key, view, budget, labels, round_index=1) -> np.ndarray:
    query = strategy.query(key, view)
    try:
        rows = check_query(name, query, budget=budget, labels=labels, round_index=round_index)
    except ValueError as e:
        raise AssertionError(str(e)) from None
    if rows.dtype != np.int32:
        raise AssertionError(f"strategy {name!r} returned {rows.dtype} rows; expected int32 (.astype(jnp.int32))")
    return rows


class _Pool:
    """A synthetic pool: class means sep * N(0, 1), rows = mean + N(0, 1), a linear head near the
    means (well-conditioned logits), `labelled` random rows labelled."""

    def __init__(self, seed: int, *, n: int, num_classes: int, labelled: int, dim: int = 16, sep: float = 0.8):
        rng = np.random.default_rng(seed)
        means = sep * rng.normal(size=(num_classes, dim))  # [C, D]
        self.true = rng.integers(0, num_classes, n).astype(np.int32)  # [N]
        self.x = jnp.asarray(means[self.true] + rng.normal(size=(n, dim)), jnp.float32)  # [N, D]
        w = means + 0.1 * rng.normal(size=means.shape)
        b = -0.5 * np.sum(means**2, axis=1) + 0.1 * rng.normal(size=num_classes)
        self.head = LinearHead(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
        self.logits = self.x @ self.head.weight.T + self.head.bias  # [N, C]
        self.labels = np.full(n, -1, np.int32)  # [N]
        rows = rng.choice(n, labelled, replace=False)
        self.labels[rows] = self.true[rows]
        noise = rng.normal(size=(8, *self.logits.shape)).astype(np.float32)
        self._mc_noise = jnp.asarray(noise)  # [8, N, C], repeated for more passes

    def view(self, labels: np.ndarray, passes: int) -> PoolView:
        mc = None
        if passes:
            reps = -(-passes // self._mc_noise.shape[0])
            mc = self.logits[None] + jnp.tile(self._mc_noise, (reps, 1, 1))[:passes]  # [T, N, C]
        return PoolView(self.x, self.logits, jnp.asarray(labels), self.head, mc_logits=mc)


@contextlib.contextmanager
def count_compiles():
    """XLA backend compilations inside the block: `with count_compiles() as n: ...; n[0]`."""
    count = [0]

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
