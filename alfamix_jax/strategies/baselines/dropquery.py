"""DropQuery (Gupte et al. 2024, "Revisiting Active Learning in the Era of
Vision Foundation Models", TMLR): dropout-consistency candidates, then
k-means for diversity.

1. y* = the head's prediction on each embedding. Apply dropout (rate 0.75,
   inverted scaling: kept entries times 1 / (1 - rate)) to the embedding M = 3
   times and run the linear head; a row is a candidate when its prediction
   differs from y* in more than M // 2 of the passes (at least 2 of 3).
2. Cluster the candidates' embeddings with k-means into `budget` clusters
   (k-means++ seeding, up to 100 Lloyd iterations) and take the candidate
   nearest each centre. With no more candidates than the budget, take them all.
3. Fill any shortfall (too few candidates, empty clusters) with other
   candidates, then other unlabelled rows, at random (`fill_default`).

The settings are those of the authors' code (github sanketx/AL-foundation-
models: classifier `dropout_p: 0.75`, query `num_iter: 3`, candidates
`mismatch > num_iter // 2`, faiss k-means with `niter=100` on the
classifier's embedding of the candidates); the original ALFA-Mix repository
has no DropQuery. The paper's other ingredient, a centroid-based initial
labelled pool, is not a query and is not here. Differences:

- The authors' classifier is dropout -> BatchNorm1d(affine=False) -> linear
  on frozen foundation-model features; here dropout acts on the embedding
  that feeds the model's linear head (`PoolView.embeddings`), the same
  "dropout on the classifier's input features" with no normalisation between.
- Their code does not fill: fewer candidates than the budget (or an empty
  cluster) would break it. We complete the batch as ALFA-Mix does.
- k-means is ours (`alfamix_jax.selection.kmeans`, greedy k-means++ as in scikit-learn)
  rather than faiss, on the embeddings unnormalised as they do
  (`normalise=True` clusters L2-normalised ones, as ALFA-Mix does). More than
  `max_candidates` candidates: a random subset of that size is clustered.
- Dropout masks come from the key, row r's from `fold_in(key, r)`, so they do
  not depend on the block size (`dropout_masks` gives them to tests).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.selection import diversity
from alfamix_jax.selection.blocks import block_start
from alfamix_jax.selection.fill import fill_default
from alfamix_jax.selection.layout import Layout
from alfamix_jax.selection.threefry import fold_in_each
from alfamix_jax.strategies.interface import PoolView, Query, Strategy

HIGHEST = jax.lax.Precision.HIGHEST  # float32 products, not TF32 on a GPU


def map_row_blocks(fn, n: int, block_size: int):
    """Apply `fn(start) -> pytree of [size, ...]` (rows start .. start + size - 1)
    over the pool in blocks of `size = min(block_size, n)` rows; the last block
    is shifted back to fit, so `fn` must be row-wise (a row's result does not
    depend on its block). -> the pytree of [n, ...]. One traced copy of `fn`
    (`lax.map(batch_size=...)` traces a second one for the remainder)."""
    size = min(block_size, n)

    def body(j, out):
        start = block_start(n, size, j)
        return jax.tree.map(lambda o, v: jax.lax.dynamic_update_slice_in_dim(o, v, start, 0), out, fn(start))

    init = jax.tree.map(lambda s: jnp.zeros((n, *s.shape[1:]), s.dtype), jax.eval_shape(fn, 0))
    return jax.lax.fori_loop(0, -(-n // size), body, init)


def dropout_masks(key, rows, dim: int, *, passes: int, rate: float):
    """Keep-masks of the dropout passes for the given pool rows: row r's
    masks are drawn from `fold_in(key, r)`, whatever block it is in.
    rows: [R] int pool indices -> [passes, R, dim] bool (True = kept)."""
    keys = fold_in_each(key, rows)
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, (passes, dim)))(keys)  # [R, passes, D]
    return jnp.swapaxes(keep, 0, 1)


def prediction_changes(key, embeddings, head_params, *, passes: int = 3, rate: float = 0.75,
                       block_size: int = 4096):
    """How many of the dropout passes change each row's prediction.
    embeddings: [N, D]; head_params: LinearHead -> [N] int32 in [0, passes]."""
    n, dim = embeddings.shape
    w, b = head_params.weight, head_params.bias  # [C, D], [C]
    size = min(block_size, n)

    def block(start):
        z = jax.lax.dynamic_slice_in_dim(embeddings, start, size)  # [S, D]
        y_star = jnp.argmax(jnp.matmul(z, w.T, precision=HIGHEST) + b, axis=-1)  # [S]
        keep = dropout_masks(key, start + jnp.arange(size), dim, passes=passes, rate=rate)  # [P, S, D]
        dropped = jnp.where(keep, z / (1.0 - rate), 0.0)  # inverted dropout
        preds = jnp.argmax(jnp.matmul(dropped, w.T, precision=HIGHEST) + b, axis=-1)  # [P, S]
        return jnp.sum(preds != y_star, axis=0, dtype=jnp.int32)

    return map_row_blocks(block, n, block_size)


def make_dropquery(*, budget: int, num_classes: int, passes: int = 3, dropout_rate: float = 0.75,
                   normalise: bool = False, max_candidates: int = 65536, kmeans_max_iters: int = 100,
                   kmeans_tol: float = 1e-4, block_size: int = 4096, **_) -> Strategy:
    """DropQuery (see the module docstring)."""

    for name, value in (("budget", budget), ("num_classes", num_classes), ("passes", passes),
                        ("max_candidates", max_candidates), ("kmeans_max_iters", kmeans_max_iters),
                        ("block_size", block_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(dropout_rate, (int, float)) and 0.0 <= dropout_rate < 1.0):
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    max_candidates = max(max_candidates, budget)
    kmeans_kwargs = dict(max_iters=kmeans_max_iters, tol=kmeans_tol, block_size=block_size)
    one_device = Layout(None)

    @jax.jit
    def query(key, view: PoolView) -> Query:
        mask_key, cluster_key, fill_key = jax.random.split(key, 3)
        eligible = view.labels < 0
        changes = prediction_changes(mask_key, view.embeddings, view.head_params, passes=passes,
                                     rate=dropout_rate, block_size=block_size)
        candidates = eligible & (changes > passes // 2)
        count = jnp.sum(candidates, dtype=jnp.int32)
        picks, clustering = jax.lax.cond(
            count <= budget,
            lambda: (diversity.take_all(one_device, candidates, budget), diversity.no_clustering(count)),
            lambda: diversity.kmeans_picks(one_device, cluster_key, view.embeddings, candidates, budget,
                                           normalise=normalise, capacity=min(max_candidates, candidates.shape[0]),
                                           kmeans_kwargs=kmeans_kwargs),
        )
        selected, filled = fill_default(fill_key, picks, candidates, eligible)
        diagnostics = dict(
            num_candidates=jnp.sum(candidates, dtype=jnp.int32),
            num_clustered=clustering.clustered,
            num_filled=filled,
            kmeans_iterations=clustering.iterations,
            kmeans_inertia=clustering.inertia,
        )
        return Query(selected, diagnostics)

    return Strategy("dropquery", query)


STRATEGIES = {"dropquery": make_dropquery}
