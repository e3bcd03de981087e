"""Completing the batch when diversity picks fewer than `budget` rows."""
import jax
import jax.numpy as jnp

from alfamix_jax.selection.layout import Rows
from alfamix_jax.selection.threefry import uniform_draws


def _append(picks: jax.Array, extra: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Valid picks first, in their order, then `extra` in the slots left.
    picks, extra: [B]. -> (selected [B] int32, filled [] int32)."""
    (budget,) = picks.shape
    valid = picks >= 0
    compact = picks[jnp.argsort(~valid, stable=True)]
    num_picks = jnp.sum(valid, dtype=jnp.int32)
    slot = jnp.arange(budget)
    selected = jnp.where(slot < num_picks, compact, extra[jnp.maximum(slot - num_picks, 0)])
    return selected.astype(jnp.int32), budget - num_picks


def fill_rows(rows: Rows, picks: jax.Array, candidates: jax.Array, eligible: jax.Array, u: jax.Array, *,
              budget: int) -> tuple[jax.Array, jax.Array]:
    """Batch of exactly B distinct eligible rows: the diversity picks first,
    then unpicked candidates in random order, then other eligible rows in
    random order. Without replacement, never a labelled or already-picked row
    (fixes Q3), and candidates come before the pool when k-means clusters
    come out empty (fixes Q6). Runs over `rows` (the pool, or a shard of it).

    picks: [B] global pool rows, -1 = none; candidates, eligible: [n] bool;
    u: [n] uniform draws (the random order). -> (selected [B] int32, filled [] int32).
    """
    n = candidates.shape[0]
    score = fill_scores(rows.mask(picks, n), candidates, eligible, u)
    _, extra = rows.top_k(score, budget)
    return _append(picks, extra)


def fill_default(key: jax.Array, picks: jax.Array, candidates: jax.Array,
                 eligible: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`fill_rows` over a whole pool on one device, the random order drawn from `key`.
    picks: [B]; candidates, eligible: [N] bool."""
    (budget,) = picks.shape
    u = uniform_draws(key, candidates.shape[0])
    return fill_rows(Rows(), picks, candidates, eligible, u, budget=budget)


def fill_scores(picked: jax.Array, candidates: jax.Array, eligible: jax.Array, u: jax.Array) -> jax.Array:
    """The fill's order as one score per row (the top `budget` fill the batch):
    unpicked candidates in [2, 3), other unpicked eligible rows in [1, 2), the
    rest -inf. picked, candidates, eligible: [N] bool; u: [N] uniform draws."""
    tier = jnp.where(picked | ~eligible, 0.0, jnp.where(candidates, 2.0, 1.0))
    return jnp.where(tier > 0, tier + u, -jnp.inf)


def fill_reference(key: jax.Array, picks: jax.Array, eligible: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The original's fill, `np.random.choice(unpicked eligible, remaining)`:
    uniform WITH replacement, so the batch may repeat rows (defect Q3).
    Kept for `compat="reference"` only."""
    (budget,) = picks.shape
    picked = Rows().mask(picks, eligible.shape[0])
    logits = jnp.where(eligible & ~picked, 0.0, -jnp.inf)
    return _append(picks, jax.random.categorical(key, logits, shape=(budget,)))
