"""CoreSet (Sener & Savarese, ICLR 2018): greedy k-center on the embeddings.

The labelled rows are the initial centres. Each of the B steps picks the
unlabelled row farthest from its nearest centre and makes it a centre. This is
the paper's greedy 2-approximation (its Algorithm 1), which the paper also
uses to initialise its robust mixed-integer program.

Memory is O(N*D + N), never N x N:
- `min_dist [N]`, the squared distance of each row to its nearest labelled
  row, is built tile by tile: row blocks of the pool against column blocks of
  the labelled rows (gathered to the front by a stable sort, so only
  ceil(L / block_size) column blocks run, L being traced). A tile is
  [block_size, block_size]. Its distances are ||a||^2 + ||b||^2 - 2 a.b
  clipped at 0, on embeddings centred on the pool mean first (distances do
  not change; the cancellation in the expansion shrinks with the norms, which
  matters for post-ReLU features that sit far from the origin).
- Each greedy step then costs one O(N*D) pass: the squared distance of every
  row to the new centre by direct differences, sum((x - c)^2) (stable; XLA
  fuses it into one reduction, no [N, D] temporary), and a running minimum.
  The B steps are one `lax.fori_loop`.
Ties go to the lowest pool index (argmax). Squared distances order rows as
the Euclidean distances do, so the picks are the same.

Differences from the original repository (query_strategies/core_set.py,
`furthest_first`):
- It builds the full [N_unlabelled, L] Euclidean distance matrix with
  sklearn's pairwise_distances on the host, then a Python loop over rows per
  step; we tile and never hold more than a block_size^2 tile.
- It is the same greedy k-center (no robust MIP / outlier budget, no Gurobi),
  with the same start (labelled rows as centres; with none labelled every
  distance is +inf and the first pick is the lowest-index unlabelled row) and
  the same tie rule (np.argmax: lowest index). We follow it.
- It compares Euclidean distances in float64 (sklearn upcasts); we compare
  squared distances in float32, so exact or near ties (relative gap below
  about 1e-6) may resolve differently.
The PRNG key is unused: CoreSet is deterministic.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from alfamix_jax.strategies import PoolView, Query, Strategy


def _block_start(n: int, size: int, j):
    """Start of block j, the last one shifted back to fit inside n rows (its
    overlap with the previous block is recomputed; the minimum is idempotent)."""
    return jnp.minimum(j * size, n - size)


def labelled_min_sq_dists(x, labelled, *, block_size: int = 4096):
    """Squared distance of every row to its nearest labelled row.
    x: [N, D] (centred), labelled: [N] bool -> [N] (+inf where none is labelled).
    Tiles of [block_size, block_size]; only the occupied labelled column blocks run."""
    n = x.shape[0]
    size = min(block_size, n)
    num_row_blocks = -(-n // size)
    sq = jnp.sum(x * x, axis=-1)  # [N]
    # Labelled rows first, in index order (stable); the first `num_lab` entries are theirs.
    order = jnp.argsort(jnp.where(labelled, 0, 1), stable=True).astype(jnp.int32)  # [N]
    num_lab = jnp.sum(labelled.astype(jnp.int32))
    num_col_blocks = (num_lab + size - 1) // size

    def row_block(i, min_dist):
        start = _block_start(n, size, i)
        xb = jax.lax.dynamic_slice_in_dim(x, start, size)  # [b, D]
        sqb = jax.lax.dynamic_slice_in_dim(sq, start, size)  # [b]

        def col_block(k, best):
            cstart = _block_start(n, size, k)
            cols = jax.lax.dynamic_slice_in_dim(order, cstart, size)  # [b] pool indices
            valid = (cstart + jnp.arange(size)) < num_lab
            xc, sqc = x[cols], sq[cols]  # [b, D], [b]
            d = jnp.maximum(sqb[:, None] + sqc[None, :] - 2.0 * (xb @ xc.T), 0.0)  # [b, b]
            d = jnp.where(valid[None, :], d, jnp.inf)
            return jnp.minimum(best, jnp.min(d, axis=-1))

        best = jax.lax.fori_loop(0, num_col_blocks, col_block, jnp.full((size,), jnp.inf, x.dtype))
        return jax.lax.dynamic_update_slice_in_dim(min_dist, best, start, axis=0)

    return jax.lax.fori_loop(0, num_row_blocks, row_block, jnp.full((n,), jnp.inf, x.dtype))


def greedy_k_center(x, labels, budget: int, *, block_size: int = 4096):
    """The `budget` unlabelled rows that greedy k-center adds to the labelled
    centres, in pick order. x: [N, D], labels: [N] (-1 unlabelled) -> [B] int32."""
    x = x.astype(jnp.float32)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    labelled = labels >= 0
    min_dist = labelled_min_sq_dists(x, labelled, block_size=block_size)  # [N]
    # Rows that can no longer be picked carry -inf (labelled now, picked as we go).
    min_dist = jnp.where(labelled, -jnp.inf, min_dist)

    def step(t, carry):
        min_dist, picks = carry
        idx = jnp.argmax(min_dist).astype(jnp.int32)  # ties: lowest index
        d = jnp.sum(jnp.square(x - x[idx]), axis=-1)  # [N]
        min_dist = jnp.minimum(min_dist, d).at[idx].set(-jnp.inf)
        return min_dist, picks.at[t].set(idx)

    _, picks = jax.lax.fori_loop(0, budget, step, (min_dist, jnp.zeros((budget,), jnp.int32)))
    return picks


def make_coreset(*, budget: int, block_size: int = 4096, **_) -> Strategy:
    """CoreSet: greedy k-center on `view.embeddings` (see the module docstring)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")

    @jax.jit
    def query(key, view: PoolView) -> Query:
        del key  # deterministic
        return Query(greedy_k_center(view.embeddings, view.labels, budget, block_size=block_size), {})

    return Strategy("coreset", query)


STRATEGIES = {"coreset": make_coreset}
