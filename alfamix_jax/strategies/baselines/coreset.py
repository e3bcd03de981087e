"""CoreSet (Sener & Savarese, ICLR 2018): greedy k-center on the embeddings.

The labelled rows are the initial centres. Each of the B steps picks the
unlabelled row farthest from its nearest centre and makes it a centre. This is
the paper's greedy 2-approximation (its Algorithm 1), which the paper also
uses to initialise its robust mixed-integer program.

Memory is O(N*D + N), never N x N:
- `min_dist [N]`, the squared distance of each row to its nearest labelled
  row, is built tile by tile: row blocks of the pool against column blocks of
  the labelled rows (gathered to the front by a stable sort, so only
  ceil(L / 128) column blocks run, L being traced). A tile is
  [block_size, 128]. Its distances are ||a||^2 + ||b||^2 - 2 a.b
  clipped at 0, on embeddings centred on the unlabelled rows' mean first (distances do
  not change; the cancellation in the expansion shrinks with the norms, which
  matters for post-ReLU features that sit far from the origin).
- The greedy steps are lazy (`lazy_k_center`): a stored minimum only falls as
  centres are added, so it is an upper bound, and only a row that reaches the
  top is brought up to date (direct differences, sum((x - c)^2), against the
  centres it has not seen) before it is accepted. The picks are those of a
  full O(N*D) update per step; a step costs a few O(N / 256 + 256) argmaxes
  on most pools (the block maxima are kept up to date), and at most one
  blocked matmul refresh of all rows on clustered ones. This
  is what keeps the time linear in N: a full update per step streams the pool
  from memory B times (100k x 512 x B = 1000: 200 GB read).
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

from alfamix_jax.selection.blocks import block_start
from alfamix_jax.strategies.interface import PoolView, Query, Strategy

ARGMAX_BLOCK = 256  # entries per block of first_argmax
CENTRE_BLOCK = 128  # columns (centres) per distance tile
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs


def min_sq_dists_to_centres(sub, x, centres, *, block_size: int = 4096):
    """Squared distance of every row of `sub` to its nearest centre (the rows of
    x where `centres`). sub: [S, F], x: [N, F], centres: [N] bool -> [S] (+inf
    where there is no centre). Tiles of [block_size, block_size]; only the
    occupied centre column blocks run."""
    s, n = sub.shape[0], x.shape[0]
    # Narrow centre blocks: the count of centres is traced, so a wide block would multiply
    # mostly padding (4096 columns for 300 labelled rows cost 14x the work).
    row_size, col_size = min(block_size, s), min(block_size, n, CENTRE_BLOCK)
    sq_sub, sq_x = jnp.sum(sub * sub, axis=-1), jnp.sum(x * x, axis=-1)  # [S], [N]
    # Centre rows first, in index order (stable); the first `num_centres` entries are theirs.
    order = jnp.argsort(jnp.where(centres, 0, 1), stable=True).astype(jnp.int32)  # [N]
    num_centres = jnp.sum(centres.astype(jnp.int32))
    num_col_blocks = (num_centres + col_size - 1) // col_size

    def row_block(i, min_dist):
        start = block_start(s, row_size, i)
        xb = jax.lax.dynamic_slice_in_dim(sub, start, row_size)  # [b, F]
        sqb = jax.lax.dynamic_slice_in_dim(sq_sub, start, row_size)  # [b]

        def col_block(k, best):
            cstart = block_start(n, col_size, k)
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


def lazy_k_center(min_dist, feats, row_dists, block_dists, budget: int, *, priority=None, fallback=None,
                  first=None, chunk: int = 32, max_lazy: int = 64, block_size: int = 4096):
    """Greedy k-center steps with lazy updates: the same picks as updating every
    row's `min_dist` with each new centre, without streaming the pool per step.

    min_dist: [S] each row's distance to its nearest starting centre (-inf: never
    pick it). feats: pytree of [S, ...] row features. row_dists(row, cents) -> [W]
    and block_dists(rows, cents) -> [R, W]: distances between a row's (rows')
    features and W centres' features (pytrees with leading W).
    -> picks [B] int32 (in pick order) and min_dist [S] after them (-inf at picks).

    Why: a row's stored min_dist only falls as centres are added, so a stale value
    is an upper bound. Each step takes the argmax of the stored values; if that
    row has not yet seen every centre, it is brought up to date (distances to the
    centres added since, in chunks of `chunk`) and the argmax is taken again. The
    first up-to-date argmax is the greedy pick (its value is exact and no other row
    can exceed its bound; ties still go to the lowest index, as np.argmax). On
    pools whose new centres rarely move the farthest rows (most real and
    high-dimensional pools) a step costs a few argmaxes instead of an O(S * F)
    pass, and each is O(S / 256 + 256): the maxima of the scores per block of
    ARGMAX_BLOCK rows are kept up to date as rows change (`blocked_argmax`), so
    without a priority a step never rescans the pool (with one, adding it is the
    step's one O(S) pass). After `max_lazy` catch-ups in one step (clustered pools, or
    no starting centre) every row is brought up to date at once, as matmul-sized
    [block, chunk] tiles, so the worst case stays O(S * F) per step.

    priority(t) -> [S], optional: added to min_dist when step t compares rows (BADGE's
    Gumbel noise on log distances: the argmax is then a D^2 draw, and the stale bound
    still holds). fallback [S] bool, optional: when the pick's score is -inf (nothing
    left to draw), take the argmax of priority(t) over the rows still open instead.
    first [], optional: pick 0, already made, whose distances min_dist already holds
    (BADGE's first centre): the steps start at 1 with every row up to date, rather
    than catching every row up with it (a pass over the pool per centre in a chunk).
    No library offers this (sklearn / FAISS k-center are eager and on the host)."""
    s = min_dist.shape[0]
    cents0 = jax.tree.map(lambda f: jnp.zeros((budget + chunk, *f.shape[1:]), f.dtype), feats)
    rows = min(block_size, s)
    pad = -s % ARGMAX_BLOCK  # -inf rows at the end, so first_argmax can reshape

    def refresh_all(md, g, t, cents):
        """Every row up to date with centres g..t-1 (then g = t)."""
        def body(j, md):
            start = block_start(s, rows, j)
            block = jax.tree.map(lambda f: jax.lax.dynamic_slice_in_dim(f, start, rows), feats)
            new = chunk_min(block_dists, block, g, t, cents, jax.lax.dynamic_slice_in_dim(md, start, rows), chunk)
            return jax.lax.dynamic_update_slice_in_dim(md, new, start, 0)
        return jax.lax.fori_loop(0, -(-s // rows), body, md)

    def step(t, carry):
        md, bm, seen, g, picks, cents, open_ = carry
        pr, sc = None, None  # without a priority the scores are md itself (no copy per step)
        if priority is not None:
            pr = jnp.pad(priority(t), (0, pad))  # [S + pad]
            sc = md + pr  # the step's scores, kept in step with md so an iteration stays O(S / 256)
            bm = block_maxima(sc)

        def stale(c):
            md, sc, bm, seen, g, n, i = c
            return jnp.maximum(seen[i], g) < t

        def catch_up(c):
            md, sc, bm, seen, g, n, i = c

            def one_row(md, sc, bm, seen, g):
                row = jax.tree.map(lambda f: f[i], feats)
                new = chunk_min(row_dists, row, jnp.maximum(seen[i], g), t, cents, md[i], chunk)
                md = md.at[i].set(new)
                sc = None if sc is None else sc.at[i].set(new + pr[i])
                return md, sc, refresh_block(md if sc is None else sc, bm, i), seen.at[i].set(t), g

            def all_rows(md, sc, bm, seen, g):
                md = refresh_all(md, g, t, cents)
                sc = None if sc is None else md + pr
                return md, sc, block_maxima(md if sc is None else sc), seen, t

            md, sc, bm, seen, g = jax.lax.cond(n < max_lazy, one_row, all_rows, md, sc, bm, seen, g)
            return md, sc, bm, seen, g, n + 1, blocked_argmax(md if sc is None else sc, bm)

        start = (md, sc, bm, seen, g, jnp.int32(0), blocked_argmax(md if sc is None else sc, bm))
        md, sc, bm, seen, g, _, i = jax.lax.while_loop(stale, catch_up, start)
        if fallback is not None:  # i is up to date; -inf there means -inf everywhere
            drawn = md[i] if sc is None else sc[i]
            i = jax.lax.cond(drawn > -jnp.inf, lambda: i,
                             lambda: first_argmax(jnp.where(open_, 0.0 if pr is None else pr, -jnp.inf)))
        cents = jax.tree.map(lambda c, f: c.at[t].set(f[i]), cents, feats)  # the pick
        md = md.at[i].set(-jnp.inf)
        return md, refresh_block(md, bm, i), seen.at[i].set(t), g, picks.at[t].set(i), cents, open_.at[i].set(False)

    md0 = jnp.pad(min_dist, (0, pad), constant_values=-jnp.inf)
    open0 = jnp.pad(jnp.zeros((s,), bool) if fallback is None else fallback, (0, pad))
    picks0, done = jnp.zeros((budget,), jnp.int32), 0
    if first is not None:  # step 0 taken: `first` is centre 0 and every row has seen it (g = 1)
        md0, open0, picks0, done = md0.at[first].set(-jnp.inf), open0.at[first].set(False), picks0.at[0].set(first), 1
        cents0 = jax.tree.map(lambda c, f: c.at[0].set(f[first]), cents0, feats)
    init = (md0, block_maxima(md0), jnp.zeros((s + pad,), jnp.int32), jnp.int32(done), picks0, cents0, open0)
    md, _, _, g, picks, cents, _ = jax.lax.fori_loop(done, budget, step, init)
    return picks, refresh_all(md, g, budget, cents)[:s]


def chunk_min(dists_fn, target, lo, hi, cents, init, chunk: int):
    """min(init, distances of `target` to centres lo..hi-1), `chunk` centres at a time.
    dists_fn(target, cents) -> [..., chunk]; cents: pytree of [B + chunk, ...]."""
    def body(k, best):
        first = lo + k * chunk
        d = dists_fn(target, jax.tree.map(lambda c: jax.lax.dynamic_slice_in_dim(c, first, chunk), cents))
        live = (first + jnp.arange(chunk)) < hi  # [W]
        return jnp.minimum(best, jnp.min(jnp.where(live, d, jnp.inf), axis=-1))
    return jax.lax.fori_loop(0, (hi - lo + chunk - 1) // chunk, body, init)


def block_maxima(v):
    """Maxima of v [K * ARGMAX_BLOCK] per block of ARGMAX_BLOCK entries -> [K]."""
    return jnp.max(v.reshape(-1, ARGMAX_BLOCK), axis=1)


def refresh_block(v, bm, i):
    """bm [K] (block_maxima of v) after v [K * ARGMAX_BLOCK] changed at row i only: O(ARGMAX_BLOCK)."""
    b = i // ARGMAX_BLOCK
    return bm.at[b].set(jnp.max(jax.lax.dynamic_slice_in_dim(v, b * ARGMAX_BLOCK, ARGMAX_BLOCK)))


def blocked_argmax(v, bm):
    """jnp.argmax of v [K * ARGMAX_BLOCK] given its block maxima bm [K]: the first block
    holding the maximum, then the first index in it (ties: the lowest index). O(K +
    ARGMAX_BLOCK), so a greedy step that changes a few rows never rescans the pool."""
    b = jnp.argmax(bm)
    return (b * ARGMAX_BLOCK + jnp.argmax(jax.lax.dynamic_slice_in_dim(v, b * ARGMAX_BLOCK, ARGMAX_BLOCK))
            ).astype(jnp.int32)


def first_argmax(v):
    """jnp.argmax of v [K * ARGMAX_BLOCK] (the lowest index among the maxima), in two
    levels: block maxima, then the first block holding the maximum. XLA:CPU's argmax
    is a scalar loop (0.32 ms for 60k rows); two vectorised maxes and two short
    argmaxes take a quarter of that."""
    return blocked_argmax(v, block_maxima(v))


def _sq_dists_direct(row, cents):
    """Squared distances by differences (exact 0 for a copy). row: ([F], []), cents: ([W, F], [W]) -> [W]."""
    return jnp.sum(jnp.square(cents[0] - row[0]), axis=-1)


def _sq_dists_expanded(rows, cents):
    """||a||^2 + ||b||^2 - 2 a.b clipped at 0 (one matmul per tile).
    rows: ([R, F], [R]), cents: ([W, F], [W]) -> [R, W]."""
    return jnp.maximum(rows[1][:, None] + cents[1][None, :] - 2.0 * _dot(rows[0], cents[0].T), 0.0)


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
    feats = (sub, jnp.sum(sub * sub, axis=-1))  # [S, F], [S]
    picks, _ = lazy_k_center(min_dist, feats, _sq_dists_direct, _sq_dists_expanded, budget, block_size=block_size)
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
