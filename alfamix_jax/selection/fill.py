"""Completing the batch when diversity picks fewer than `budget` rows."""
import jax
import jax.numpy as jnp


def _picked_mask(picks, n: int):
    """[B] pool indices (-1 = none) -> [N] bool."""
    return jnp.zeros((n,), bool).at[jnp.where(picks >= 0, picks, n)].set(True, mode="drop")


def _append(picks, extra):
    """Valid picks first, in their order, then `extra` in the slots left.
    picks, extra: [B]. -> (selected [B] int32, filled [] int32)."""
    (budget,) = picks.shape
    valid = picks >= 0
    compact = picks[jnp.argsort(~valid, stable=True)]
    num_picks = jnp.sum(valid, dtype=jnp.int32)
    slot = jnp.arange(budget)
    selected = jnp.where(slot < num_picks, compact, extra[jnp.maximum(slot - num_picks, 0)])
    return selected.astype(jnp.int32), budget - num_picks


def fill_default(key, picks, candidates, eligible):
    """Batch of exactly B distinct eligible rows: the diversity picks first,
    then unpicked candidates in random order, then other eligible rows in
    random order. Without replacement, never a labelled or already-picked row
    (fixes Q3), and candidates come before the pool when k-means clusters
    come out empty (fixes Q6).

    picks: [B] pool indices, -1 = none; candidates, eligible: [N] bool.
    """
    (budget,) = picks.shape
    picked = _picked_mask(picks, candidates.shape[0])
    score = fill_scores(picked, candidates, eligible, jax.random.uniform(key, candidates.shape))
    _, extra = jax.lax.top_k(score, budget)
    return _append(picks, extra)


def fill_scores(picked, candidates, eligible, u):
    """The fill's order as one score per row (the top `budget` fill the batch):
    unpicked candidates in [2, 3), other unpicked eligible rows in [1, 2), the
    rest -inf. picked, candidates, eligible: [N] bool; u: [N] uniform draws."""
    tier = jnp.where(picked | ~eligible, 0.0, jnp.where(candidates, 2.0, 1.0))
    return jnp.where(tier > 0, tier + u, -jnp.inf)


def fill_reference(key, picks, eligible):
    """The original's fill, `np.random.choice(unpicked eligible, remaining)`:
    uniform WITH replacement, so the batch may repeat rows (defect Q3).
    Kept for `compat="reference"` only."""
    (budget,) = picks.shape
    picked = _picked_mask(picks, eligible.shape[0])
    logits = jnp.where(eligible & ~picked, 0.0, -jnp.inf)
    return _append(picks, jax.random.categorical(key, logits, shape=(budget,)))
