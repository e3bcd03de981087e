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
  clipped at 0, on embeddings centred on the unlabelled rows' mean first (distances do
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

import functools

import jax
import jax.numpy as jnp

from alfamix_jax.strategies.interface import PoolView, Query, Strategy

_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs


def _block_start(n: int, size: int, j):
    """Start of block j, the last one shifted back to fit inside n rows (its
    overlap with the previous block is recomputed; the minimum is idempotent)."""
    return jnp.minimum(j * size, n - size)


def min_sq_dists_to_centres(sub, x, centres, *, block_size: int = 4096):
    """Squared distance of every row of `sub` to its nearest centre (the rows of
    x where `centres`). sub: [S, F], x: [N, F], centres: [N] bool -> [S] (+inf
    where there is no centre). Tiles of [block_size, block_size]; only the
    occupied centre column blocks run."""
    s, n = sub.shape[0], x.shape[0]
    row_size, col_size = min(block_size, s), min(block_size, n)
    sq_sub, sq_x = jnp.sum(sub * sub, axis=-1), jnp.sum(x * x, axis=-1)  # [S], [N]
    # Centre rows first, in index order (stable); the first `num_centres` entries are theirs.
    order = jnp.argsort(jnp.where(centres, 0, 1), stable=True).astype(jnp.int32)  # [N]
    num_centres = jnp.sum(centres.astype(jnp.int32))
    num_col_blocks = (num_centres + col_size - 1) // col_size

    def row_block(i, min_dist):
        start = _block_start(s, row_size, i)
        xb = jax.lax.dynamic_slice_in_dim(sub, start, row_size)  # [b, F]
        sqb = jax.lax.dynamic_slice_in_dim(sq_sub, start, row_size)  # [b]

        def col_block(k, best):
            cstart = _block_start(n, col_size, k)
            cols = jax.lax.dynamic_slice_in_dim(order, cstart, col_size)  # [c] pool indices
            valid = (cstart + jnp.arange(col_size)) < num_centres
            xc, sqc = x[cols], sq_x[cols]  # [c, F], [c]
            d = jnp.maximum(sqb[:, None] + sqc[None, :] - 2.0 * _dot(xb, xc.T), 0.0)  # [b, c]
            d = jnp.where(valid[None, :], d, jnp.inf)
            return jnp.minimum(best, jnp.min(d, axis=-1))

        best = jax.lax.fori_loop(0, num_col_blocks, col_block, jnp.full((row_size,), jnp.inf, sub.dtype))
        return jax.lax.dynamic_update_slice_in_dim(min_dist, best, start, axis=0)

    return jax.lax.fori_loop(0, -(-s // row_size), row_block, jnp.full((s,), jnp.inf, sub.dtype))


def labelled_min_sq_dists(x, labelled, *, block_size: int = 4096):
    """Squared distance of every row to its nearest labelled row.
    x: [N, D] (centred), labelled: [N] bool -> [N] (+inf where none is labelled)."""
    return min_sq_dists_to_centres(x, x, labelled, block_size=block_size)


def furthest_first(sub, valid, x, centres, budget: int, *, block_size: int = 4096):
    """Greedy k-center (the original's `furthest_first`): `budget` positions of
    `sub` rows, each the valid row farthest from its nearest centre so far; the
    centres start as the rows of x where `centres` is True.
    sub: [S, F], valid: [S] bool, x: [N, F], centres: [N] bool -> [B] int32 positions in sub.
    Both are shifted by the valid rows' mean first (distances do not change; the
    cancellation in the expanded start distances shrinks with the norms)."""
    sub, x = sub.astype(jnp.float32), x.astype(jnp.float32)
    shift = jnp.sum(jnp.where(valid[:, None], sub, 0.0), axis=0) / jnp.maximum(jnp.sum(valid), 1)
    sub, x = sub - shift, x - shift
    min_dist = min_sq_dists_to_centres(sub, x, centres, block_size=block_size)  # [S]
    # Rows that can no longer be picked carry -inf (invalid, then picked as we go).
    min_dist = jnp.where(valid, min_dist, -jnp.inf)

    def step(t, carry):
        min_dist, picks = carry
        idx = jnp.argmax(min_dist).astype(jnp.int32)  # ties: lowest position
        d = jnp.sum(jnp.square(sub - sub[idx]), axis=-1)  # [S]
        return jnp.minimum(min_dist, d).at[idx].set(-jnp.inf), picks.at[t].set(idx)

    _, picks = jax.lax.fori_loop(0, budget, step, (min_dist, jnp.zeros((budget,), jnp.int32)))
    return picks


def greedy_k_center(x, labels, budget: int, *, block_size: int = 4096):
    """The `budget` unlabelled rows that greedy k-center adds to the labelled
    centres, in pick order. x: [N, D], labels: [N] (-1 unlabelled) -> [B] int32."""
    return furthest_first(x, labels < 0, x, labels >= 0, budget, block_size=block_size)


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
