"""k-means on device: greedy k-means++ seeding, Lloyd iterations, and the
point nearest each centre. Jitted with fixed shapes.

Why not scikit-learn: its KMeans runs on the host, draws from the global
NumPy RNG, and spends most of its time in k-means++ seeding (23-34 s for
1000 centres on 20k x 512 here).

Seeding (`kmeans(seeding=)`):
- "sample" (the default): greedy k-means++ (scikit-learn's variant, 2 + log k
  local trials per centre) over a uniform random sample of 8 rows per centre,
  at least 8192 (`sampled_kmeans_plus_plus`), as scikit-learn's MiniBatchKMeans
  seeds from a sample; all the rows when there are no more. The sample's Gram
  matrix is built from products over panels of its real rows only; the k
  sequential steps then only look distances up in it (no pass over the rows
  per step). Its randomness is drawn before the loop from a small counter hash
  of the key, so the program stays small.
- "exact": the same greedy k-means++ over the whole buffer
  (`kmeans_plus_plus`), each step scoring all its trials with one
  [M, D] x [D, trials] product; k sequential passes over the buffer.

The points live in a fixed-size buffer `x [M, D]` whose first `n_valid` rows
are real (`n_valid` is a traced scalar). Lloyd passes loop over the occupied
row blocks only, in sub-blocks of `_sub_rows(k, D)` rows; the seeding, when there
are at most 2k rows, runs on a static prefix of 2k rows. So the work follows the
number of points actually there, while shapes stay static and nothing
recompiles when that number changes. A caller that knows n_valid on the host
(the selector, between its stages) gives the seeding's size instead
(`seeding_rows`): one compiled seeding, on a prefix of at most 1.5x the rows.
With many rows per centre it also asks for Lloyd passes that skip the rows whose
cluster cannot change (`lloyd_bounds`; `sizing` decides both), with the same result.
Every pass keeps the clusters' sums up to date by moving only the rows that changed
cluster (`_moved_sums`), not by summing every row again.
"""
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from alfamix_jax.selection import lloyd_bounds
from alfamix_jax.selection.blocks import append_flagged, block_rows, block_start, occupied_blocks
from alfamix_jax.selection.points import PASS_BLOCK, Points, as_points
from alfamix_jax.selection.reductions import first_index_of, prefix_sums


class KMeansResult(NamedTuple):
    centres: jax.Array  # [k, D]
    assignment: jax.Array  # [M] int32 cluster of each point (-1 past n_valid)
    picks: jax.Array  # [k] int32 row nearest each centre among its members (-1: empty cluster)
    inertia: jax.Array  # [] sum of squared distances to the assigned centre
    iterations: jax.Array  # [] Lloyd iterations run
    rows_computed: jax.Array | int = 0  # [] rows whose distances to every centre the passes computed


def _sq_dists(x: jax.Array, sq_x: jax.Array, centres: jax.Array) -> jax.Array:
    """[b, D], [b], [k, D] -> squared distances [b, k]."""
    sq_c = jnp.sum(centres * centres, axis=-1)
    # precision="highest": float32 products on GPUs too (their default is TF32), as the reference computes.
    return jnp.maximum(sq_x[:, None] - 2.0 * jnp.dot(x, centres.T, precision="highest") + sq_c[None, :], 0.0)


def _seed(key: jax.Array, x: jax.Array, n_valid: jax.Array | int, k: int) -> jax.Array:
    """Greedy k-means++ over all of x (one block): the rows past n_valid
    weigh nothing. -> centres [k, D]."""
    m, dim = x.shape
    trials = 2 + int(math.log(k))
    sq_x = jnp.sum(x * x, axis=-1)
    valid = jnp.arange(m) < n_valid

    def draw(key: jax.Array, weights: jax.Array, count: int) -> jax.Array:
        """`count` indices of valid rows, with probability proportional to weights."""
        cdf = jnp.cumsum(jnp.where(valid, weights, 0.0))
        total = cdf[-1]
        u = jax.random.uniform(key, (count,)) * total
        idx = jnp.searchsorted(cdf, u, side="right")
        uniform = jax.random.randint(key, (count,), 0, jnp.maximum(n_valid, 1))
        return jnp.where(total > 0, jnp.minimum(idx, n_valid - 1), uniform)

    key, first_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, jnp.maximum(n_valid, 1))
    centres = jnp.zeros((k, dim), x.dtype).at[0].set(x[first])
    mind = jnp.where(valid, jnp.sum((x - x[first]) ** 2, axis=-1), 0.0)

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        centres, mind = carry
        cands = draw(jax.random.fold_in(key, i), mind, trials)
        # Every trial scored in one [M, D] x [D, trials] product.
        new_mind = jnp.minimum(_sq_dists(x, sq_x, x[cands]).T, mind[None, :])  # [T, M]
        best = jnp.argmin(jnp.sum(jnp.where(valid[None, :], new_mind, 0.0), axis=-1))
        return centres.at[i].set(x[cands[best]]), jnp.where(valid, new_mind[best], 0.0)

    centres, _ = jax.lax.fori_loop(1, k, step, (centres, mind))
    return centres


def kmeans_plus_plus(key: jax.Array, x: jax.Array | Points, n_valid: jax.Array | int, k: int, *, shrink: int = 4,
                     levels: int = 3) -> jax.Array:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant):
    each new centre is the best of `2 + log k` points drawn with probability
    proportional to the squared distance to the nearest centre so far.
    x: [M, D], first n_valid rows real. -> centres [k, D].

    Each of the k steps is one memory-bound pass, so it runs over the
    smallest static prefix x[:M / shrink^j] (j < levels) that holds the valid
    rows, chosen once by `lax.switch`: a nearly empty buffer costs its
    content, not its size, and shapes stay static. Row blocks in a loop would
    do the same but cost 2x on a full buffer (sliced copies)."""
    points = as_points(x)
    m = points.shape[0]
    x = points.source if points.rows is None and points.scale is None else points.take(jnp.arange(m))  # [M, D]
    prefixes = sorted({max(1, m // shrink**j) for j in range(levels)})  # ascending, last = m
    branch = jnp.searchsorted(jnp.asarray(prefixes), n_valid, side="left")
    branches = [lambda p=p: _seed(key, x[:p], n_valid, k) for p in prefixes]
    return jax.lax.switch(jnp.minimum(branch, len(prefixes) - 1), branches)



def sample_size(k: int) -> int:
    """Rows the default seeding draws its sample of: 8 per centre, at least 8192. Fewer
    lose clusters: on 200 separated blobs (20,000 x 64, k = 200), over 30 seeds a 2048-row
    sample missed a blob in 16 runs, 4096 rows in 10, 8064 in 3, scikit-learn on every row
    in 8."""
    return max(8 * k, 8192)


_TILE = 128  # rows per tile of the seeding's Gram matrix
_GRAM_MAX = 8192  # the largest sample whose Gram matrix is built (256 MiB); past it, distances per step


def _sub_rows(k: int, dim: int) -> int:
    """Rows per sub-block of a Lloyd pass: a power of 2, at least 256, with about 2^18 * 256
    multiply-adds in its product (256 rows at k = 500, D = 512; 2048 at k = 100, D = 256).
    Few enough that a small pool costs its rows, not the block size (a sub-block costs about
    a millisecond here); enough that each product is worth its overhead: at k = 100,
    D = 256, 29k rows, a pass took 2.1x as long in 256-row sub-blocks as in 1024-row ones."""
    return 256 * 2 ** max(0, (2**18 // (k * dim)).bit_length() - 1)


def _pass_sub_rows(size: int, k: int, dim: int) -> int:
    """Rows per sub-block of a Lloyd pass in blocks of `size` rows."""
    return min(size, _sub_rows(k, dim))


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finaliser: every input bit flips each output bit with probability ~1/2."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _uniforms(key: jax.Array, n: int) -> jax.Array:
    """n uniforms in [0, 1) from the key: its words hashed with a counter. A statistically
    sound stream for sampling (not for cryptography) that compiles to one small fusion,
    where `jax.random.uniform`'s threefry costs ~0.3 s of compile on CPU. -> [n] float32."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    h = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
    for w in words.reshape(-1).astype(jnp.uint32):  # 2 words (threefry keys), 4 (rbg)
        h = _mix32(h ^ w)
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def _gram(xs: jax.Array, n_valid: jax.Array | int) -> jax.Array:
    """xs [P, D] -> xs xs^T [P, P], only the row panels over the first n_valid rows
    computed (the rest zero): a few real rows cost a few rows, whatever P."""
    p = xs.shape[0]

    def panel(i: jax.Array, g: jax.Array) -> jax.Array:
        rows = jax.lax.dynamic_slice_in_dim(xs, i * _TILE, _TILE)
        return jax.lax.dynamic_update_slice_in_dim(g, jnp.dot(rows, xs.T, precision="highest"), i * _TILE, 0)

    return jax.lax.fori_loop(0, (n_valid + _TILE - 1) // _TILE, panel, jnp.zeros((p, p), xs.dtype))


def _greedy(u: jax.Array, xs: jax.Array, n_valid: jax.Array | int, k: int, gram: bool) -> jax.Array:
    """Greedy k-means++ over xs [P, D] (P a multiple of _TILE) whose first n_valid rows
    are real, its randomness drawn ahead: u [k, T] uniforms in [0, 1) (T trials; u[0, 0]
    picks the first centre). gram: look distances up in the Gram matrix, else compute
    them each step. Rows past n_valid are zeroed and start, so stay, at distance 0:
    never drawn, adding nothing. -> [k] int32 rows of xs."""
    p = xs.shape[0]
    valid = jnp.arange(p) < n_valid
    xs = jnp.where(valid[:, None], xs, 0.0)
    last = jnp.maximum(n_valid, 1) - 1
    sq = jnp.sum(xs * xs, axis=-1)  # [P]
    g = _gram(xs, n_valid) if gram else None

    def dists(c: jax.Array) -> jax.Array:
        """[T] rows -> [T, P] squared distances from each to every row."""
        cross = g[c] if g is not None else jnp.dot(xs[c], xs.T, precision="highest")
        return jnp.maximum(sq[c][:, None] - 2.0 * cross + sq[None, :], 0.0)

    first = jnp.minimum((u[0, 0] * (last + 1)).astype(jnp.int32), last)
    mind = jnp.where(valid, dists(first[None])[0], 0.0)  # [P]

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        chosen, mind = carry
        cdf = prefix_sums(mind)
        # D^2 draws by inverse CDF, searched as a count. All distances 0 (no more distinct
        # rows than centres): the last real row, a repeat, as good as any. Each of the k - 1
        # steps is 16 small kernels, so each one counts: the count is a float sum, one kernel
        # where an integer sum took two (exact below 2^24 rows): 9% of the steps' time.
        below = cdf[None, :] <= jax.lax.dynamic_index_in_dim(u, i, keepdims=False)[:, None] * cdf[-1]  # [T, P]
        count = jnp.sum(below.astype(mind.dtype), axis=1)
        cands = jnp.minimum(count.astype(jnp.int32), last)  # [T]
        new_mind = jnp.minimum(dists(cands), mind[None, :])  # [T, P]
        best = jnp.argmin(jnp.sum(new_mind, axis=1))
        return jax.lax.dynamic_update_index_in_dim(chosen, cands[best], i, 0), new_mind[best]

    chosen, _ = jax.lax.fori_loop(1, k, step, (jnp.zeros((k,), jnp.int32).at[0].set(first), mind))
    return chosen


def _padded(x: jax.Array, rows: int) -> jax.Array:
    """x [M, D] cut or zero-padded to [rows, D]."""
    return x[:rows] if rows <= x.shape[0] else jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def prefix_rows(k: int) -> int:
    """Rows of the static prefix the default seeding runs on when it holds every valid row:
    2k, in whole tiles."""
    return _round_up(max(2 * k, 2 * _TILE), _TILE)


def _sample_rows(k: int, m: int, sample: int | None) -> tuple[int, int]:
    """(rows of the seeding's sample, in whole tiles) for k centres over M rows."""
    size = min(m, sample_size(k) if sample is None else sample)
    return size, _round_up(size, _TILE)


def seeding_rows(n_valid: int, k: int, m: int, sample: int | None = None) -> int:
    """The static number of rows the default seeding works on, for n_valid real rows of M
    known on the host: the smallest of 256, 384, 512, 768, 1024, 1536, ... (whole tiles, each
    at most 1.5x the last) that holds them all, else the whole sample.
    `sampled_kmeans_plus_plus(rows=)` takes it. Each size is one compiled seeding; 1.5x
    steps waste at most a third of a prefix's columns (570 candidates of the 20k pool:
    768 rows, 8.5 ms where the 1024-row prefix took 11)."""
    top = _sample_rows(k, m, sample)[1]
    rows = 2 * _TILE
    while rows < min(n_valid, top):
        rows = rows * 3 // 2 if rows & (rows - 1) == 0 else rows * 4 // 3  # 2^j -> 1.5 * 2^j -> 2^(j+1)
    return min(rows, top)


class Sizing(NamedTuple):
    """What a caller that knows the number of real rows on the host tells `kmeans`, as static
    arguments (the selector reads the candidate count between its stages): one compiled path,
    sized to the rows there."""

    seed_rows: int | None = None  # `seeding_rows`
    bounded: bool = False  # Lloyd passes with distance bounds (`lloyd_bounds.worth_it`)


def sizing(n_valid: int, k: int, m: int, sample: int | None = None) -> Sizing:
    """The `Sizing` for n_valid real rows of M and k centres."""
    return Sizing(seeding_rows(n_valid, k, m, sample), lloyd_bounds.worth_it(n_valid, k))


def sampled_kmeans_plus_plus(key: jax.Array, x: jax.Array | Points, n_valid: jax.Array | int, k: int, *,
                             sample: int | None = None, rows: int | None = None) -> jax.Array:
    """Greedy k-means++ (2 + log k trials per centre, as `kmeans_plus_plus`) over a
    uniform random sample of `sample` valid rows (default `sample_size(k)`; all of
    them when there are no more). x: [M, D], first n_valid rows real. -> centres [k, D].

    The sample's squared distances come from its Gram matrix, products over the row
    panels of real rows only; the k sequential steps only look them up (unless that
    costs more, see `gram`). When the valid rows fit in fewer rows than the sample, the
    seeding runs on a static prefix of x that holds them, so a small pool costs its rows.

    rows: `seeding_rows(n_valid, k, M, sample)`, when the caller knows n_valid on the host:
    the seeding then works on x[:rows] (or the sample), the one path compiled. None: the
    program chooses between the prefix x[:2k] (`prefix_rows`) and the sample by `lax.cond`,
    two greedy seedings (about 0.3 s more compile on a 2-core CPU), and a count just past
    2k costs a whole sample (k = 500: 1,100 rows seeded in 0.48 s instead of 19 ms for
    1,000). Where rows is that prefix's size, the same bits as None."""
    points = as_points(x)
    m = points.shape[0]
    size, top = _sample_rows(k, m, sample)
    trials = 2 + int(math.log(k))
    u = _uniforms(key, m + k * trials)  # one draw: the sample's order, then the seeding's
    seeds_u = u[m:].reshape(k, trials)

    def gram(p: int) -> bool:
        """Build the Gram matrix of p rows (p^2 D), or compute each step's distances (k T p D)?
        A whole product runs ~2x as fast as the steps' thin ones."""
        return p <= _GRAM_MAX and p <= 2 * k * trials

    def sampled() -> jax.Array:
        order = jnp.argsort(jnp.where(jnp.arange(m) < n_valid, u[:m], 2.0))[:size]  # valid rows first, shuffled
        rows = jnp.where(n_valid > size, order, jnp.arange(size))
        xs = _padded(points.take(rows), top)
        return xs[_greedy(seeds_u, xs, jnp.minimum(n_valid, size), k, gram(top))]

    def prefix(p: int) -> jax.Array:
        """The seeding on x[:p], which holds every valid row."""
        xs = _padded(points.take(jnp.arange(min(p, m))), p)
        return xs[_greedy(seeds_u, xs, n_valid, k, gram(p))]

    if rows is not None:
        return prefix(rows) if rows < top else sampled()
    # k-means runs on more points than centres: up to 2k of them, the seeding runs on a prefix.
    small = prefix_rows(k)
    if small >= top:
        return sampled()
    return jax.lax.cond(n_valid <= small, lambda: prefix(small), sampled)


class _PassStats(NamedTuple):
    """One assignment pass's totals, or one block's share of them (the clusters' sums are
    kept up to date apart, by `_moved_sums`)."""

    best_d: jax.Array  # [k] squared distance of the nearest member (inf: none yet)
    best_i: jax.Array  # [k] int32 row of that member (ties: lowest row)
    inertia: jax.Array  # [] sum of squared distances to the assigned centre
    assignment: jax.Array  # [M] int32 (a pass) or [size] (a block: its rows' clusters)


def _sub_stats(x: Points, centres: jax.Array, start: jax.Array, fresh: jax.Array, size: int) -> _PassStats:
    """The share of rows x[start:start + size] where fresh [size] (zero elsewhere)."""
    m = x.shape[0]
    k = centres.shape[0]
    xb = x.block(start, size)  # [size, D]
    rows = start + jnp.arange(size)
    d = _sq_dists(xb, jnp.sum(xb * xb, axis=-1), centres)  # [size, k]
    nearest = jnp.min(d, axis=-1)
    a = first_index_of(d, nearest, axis=-1)  # jnp.argmin(d, axis=-1), vectorised
    own = jnp.where(fresh, nearest, jnp.inf)
    block_d = jax.ops.segment_min(own, a, num_segments=k)
    is_min = fresh & (own == block_d[a])
    return _PassStats(
        best_d=block_d,
        best_i=jax.ops.segment_min(jnp.where(is_min, rows, m), a, num_segments=k),
        inertia=jnp.sum(jnp.where(fresh, own, 0.0)),
        assignment=a,
    )


def _block_stats(x: Points, n_valid: jax.Array | int, centres: jax.Array, size: int, j: jax.Array) -> _PassStats:
    """Block j's share of an assignment pass (zero where its rows are not new and valid),
    summed over its occupied sub-blocks of `_sub_rows(k, D)` rows, in order: the same sums
    whichever device computes the block."""
    m = x.shape[0]
    sub = _pass_sub_rows(size, *centres.shape)

    def body(start: jax.Array, offset: jax.Array, fresh: jax.Array, total: _PassStats) -> _PassStats:
        return _combine(total, _sub_stats(x, centres, start + offset, fresh, sub), offset, fresh)

    return _each_sub_block(m, size, sub, n_valid, j, body, _empty_pass(size, centres.shape[0], x.dtype))


def _each_sub_block(m: int, size: int, sub: int, n_valid: jax.Array | int, j: jax.Array,
                    body: Callable[[jax.Array, jax.Array, jax.Array, Any], Any], init: Any) -> Any:
    """body(start, offset, fresh [sub], carry) -> carry over the occupied sub-blocks of `sub` rows
    of block j of `size` rows, in order: start is the block's first row, offset the
    sub-block's (block-relative), fresh its rows new to it and valid."""
    start, _, _ = block_rows(m, size, n_valid, j)
    first, end = j * size - start, jnp.minimum(n_valid, start + size) - start  # its new rows, block-relative

    def step(s: jax.Array, carry: Any) -> Any:
        offset = block_start(size, sub, s)
        rows = offset + jnp.arange(sub)
        return body(start, offset, (rows >= s * sub) & (rows >= first) & (rows < end), carry)

    return jax.lax.fori_loop(first // sub, (end + sub - 1) // sub, step, init)


def _cluster_sums(xb: jax.Array, fresh: jax.Array, a: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Per-cluster sums [k, D] of the rows xb [b, D] where fresh [b], in clusters a [b], and
    their counts [k]: a chunk of the rows `_moved_sums` moves.

    The rows not fresh are dropped by their cluster index (k, out of range) instead of
    being multiplied by a zero weight: one product fewer, the same sums but for a zero's
    sign (a finite row times zero added only a zero).

    On CPU a scatter-add (segment_sum) adds rows in order. On GPUs XLA's
    scatter-add uses atomics, whose order (and so the float sums' last bits)
    changes from run to run; a one-hot matmul there costs one more [b, k, D]
    product but gives the same bits every run. The counts are summed apart on CPU: a
    scatter adds each column on its own, and appending them to the rows cost a copy of
    the block."""
    a = jnp.where(fresh, a, k)  # segment_sum drops an index out of range; one_hot gives zeros
    if jax.default_backend() == "cpu":
        ones = jnp.ones(a.shape, xb.dtype)
        return jax.ops.segment_sum(xb, a, num_segments=k), jax.ops.segment_sum(ones, a, num_segments=k)
    rows = jnp.concatenate([xb, jnp.ones((xb.shape[0], 1), xb.dtype)], axis=1)  # [b, D + 1]: one product for both
    sums = jnp.dot(jax.nn.one_hot(a, k, dtype=xb.dtype).T, rows, precision="highest")  # [k, D + 1]
    return sums[:, :-1], sums[:, -1]


def _combine(total: _PassStats, part: _PassStats, offset: jax.Array, fresh: jax.Array) -> _PassStats:
    """Add a part (a block, or a sub-block of one) whose rows start at `offset` of total's
    assignment and count where fresh [size]. Parts are always added in row order, so
    the float sums do not depend on where they were computed."""
    size = part.assignment.shape[0]
    better = part.best_d < total.best_d  # a tie keeps the earlier part's (lower) row
    previous = jax.lax.dynamic_slice_in_dim(total.assignment, offset, size)
    return _PassStats(
        best_d=jnp.where(better, part.best_d, total.best_d),
        best_i=jnp.where(better, part.best_i, total.best_i),
        inertia=total.inertia + part.inertia,
        assignment=jax.lax.dynamic_update_slice_in_dim(
            total.assignment, jnp.where(fresh, part.assignment, previous), offset, axis=0
        ),
    )


def _add_block(total: _PassStats, block: _PassStats, j: jax.Array, size: int, n_valid: jax.Array | int) -> _PassStats:
    """Add block j to a pass's totals."""
    start, _, fresh = block_rows(total.assignment.shape[0], size, n_valid, j)
    return _combine(total, block, start, fresh)


def _empty_pass(m: int, k: int, dtype: DTypeLike) -> _PassStats:
    return _PassStats(
        best_d=jnp.full((k,), jnp.inf, dtype),
        best_i=jnp.full((k,), -1, jnp.int32),
        inertia=jnp.zeros((), dtype),
        assignment=jnp.full((m,), -1, jnp.int32),
    )


def _assign_pass(x: Points, n_valid: jax.Array | int, centres: jax.Array, size: int,
                 num_blocks: jax.Array | int) -> _PassStats:
    """One pass over the occupied blocks, in order, on this device."""
    m = x.shape[0]

    def body(j: jax.Array, total: _PassStats) -> _PassStats:
        return _add_block(total, _block_stats(x, n_valid, centres, size, j), j, size, n_valid)

    return jax.lax.fori_loop(0, num_blocks, body, _empty_pass(m, centres.shape[0], x.dtype))


def _sharded_assign_pass(x: Points, n_valid: jax.Array | int, centres: jax.Array, size: int,
                         num_blocks: jax.Array | int, axis_name: str) -> _PassStats:
    """The same pass with its blocks split over the devices of `axis_name`
    (inside shard_map; x replicated). Each device computes its share of the
    blocks, the per-block results are gathered, and every device adds them up
    in block order: the result is bit-identical on any number of devices."""
    m = x.shape[0]
    k = centres.shape[0]
    devices = jax.lax.axis_size(axis_name)
    max_blocks = -(-m // size)
    slots = -(-max_blocks // devices)  # blocks per device, covering every possible block
    mine = jax.lax.axis_index(axis_name) * slots + jnp.arange(slots)

    def stats(j: jax.Array) -> _PassStats:
        # Blocks past the occupied ones (n_valid is traced) cost nothing.
        return jax.lax.cond(
            j < num_blocks,
            lambda: _block_stats(x, n_valid, centres, size, j),
            lambda: _empty_pass(size, k, x.dtype)._replace(assignment=jnp.zeros((size,), jnp.int32)),
        )

    local = jax.lax.map(stats, mine)  # [slots, ...] per field
    every = jax.lax.all_gather(local, axis_name, tiled=True)  # [devices * slots, ...], in block order

    def body(j: jax.Array, total: _PassStats) -> _PassStats:
        return _add_block(total, jax.tree.map(lambda a: a[j], every), j, size, n_valid)

    return jax.lax.fori_loop(0, num_blocks, body, _empty_pass(m, k, x.dtype))


def _mean_variance(x: Points, n_valid: jax.Array | int) -> jax.Array:
    """The mean per-feature variance of the first n_valid rows of x [M, D], once per
    k-means, over the occupied sub-blocks only: taken about x[0] so that the mean's
    square does not cancel the spread."""
    m, dim = x.shape
    size, num_blocks = occupied_blocks(m, PASS_BLOCK, n_valid)
    first_row = x.block(0, 1)[0]  # [D]

    def body(j: jax.Array, sums: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        start, _, fresh = block_rows(m, size, n_valid, j)
        about = jnp.where(fresh[:, None], x.block(start, size) - first_row, 0.0)  # [size, D]
        return sums[0] + jnp.sum(about, axis=0), sums[1] + jnp.sum(about * about)

    shifted, spread = jax.lax.fori_loop(0, num_blocks, body, (jnp.zeros((dim,), x.dtype), jnp.zeros((), x.dtype)))
    count = jnp.maximum(n_valid, 1).astype(x.dtype)
    return jnp.maximum(spread - jnp.sum(shifted**2) / count, 0.0) / (count * dim)


# (done, iterations, centres [k, D], last pass, the clusters' sums [k, D] and counts [k])
_LloydState = tuple[jax.Array, jax.Array, jax.Array, _PassStats, jax.Array, jax.Array]


def _moved(centres: jax.Array, sums: jax.Array, counts: jax.Array, i: jax.Array, threshold: jax.Array,
           max_iters: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """After pass i with `centres` [k, D], whose clusters sum to sums [k, D] over counts [k] rows:
    (done, the centres to go on from, the updated centres). The loop ends on the pass after
    which the centres would move by <= threshold, so the assignment and picks it returns
    belong to the centres returned. An empty cluster keeps its centre."""
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)
    done = (jnp.sum((new - centres) ** 2) <= threshold) | (i + 1 >= max_iters)
    return done, jnp.where(done, centres, new), new


# Rows per block when the bounded passes widen the bounds and list the rows to recompute, and
# when a pass lists the rows that changed cluster: the work is elementwise and the list in row
# order, so any block size gives the same bits. Each block is a loop step of ~25 small
# operations, so one block for a buffer of up to 65,536 rows (the default most candidates;
# [65536, 32] bounds are 8 MiB): on the Fashion-MNIST protocol's rounds (26-35k candidates in
# a 60,000-row buffer) the finish program took 0.35-0.41 s against 0.38-0.47 s with blocks of
# 16,384 rows, though the one block also widens the rows past the candidates.
_WIDE_BLOCK = 65536


def _moved_sums(x: Points, before: jax.Array, after: jax.Array, n_valid: jax.Array | int, sums: jax.Array,
                counts: jax.Array, sub: int) -> tuple[jax.Array, jax.Array]:
    """The clusters' sums [k, D] and counts [k] once the rows whose cluster changed from
    `before` [M] to `after` [M] (-1: none) have moved: each added to its new cluster and taken
    from its old one, in row order, `sub` rows at a time (the first pass adds every row).

    Why not sum every row each pass, as scikit-learn does: late in a run few rows move, and
    the sums then cost those rows, not a read of the whole buffer (on the Fashion-MNIST
    protocol's 35,417 x 256 candidates, k = 100, about 3 of 11 ms a pass, and the bounded
    passes' [M, D] copy of the view). Full passes, bounded passes and a mesh all update the
    sums this way from the same assignments, so they agree bit for bit. Each move rounds the
    sums once more; over a run that is a few ulps of a cluster's sum, far below the
    convergence tolerance."""
    m = before.shape[0]
    k = sums.shape[0]
    wide, wide_blocks = occupied_blocks(m, _WIDE_BLOCK, n_valid)

    def listed(j: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        start, rows, fresh = block_rows(m, wide, n_valid, j)
        changed = jax.lax.dynamic_slice_in_dim(before, start, wide) != jax.lax.dynamic_slice_in_dim(after, start, wide)
        return append_flagged(*carry, fresh & changed, rows)

    slots = _round_up(m, sub)
    packed, count = jax.lax.fori_loop(0, wide_blocks, listed, (jnp.zeros((slots,), jnp.int32), jnp.int32(0)))

    def chunk(c: jax.Array, totals: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        rows = jax.lax.dynamic_slice_in_dim(packed, c * sub, sub)  # [sub]
        live = c * sub + jnp.arange(sub) < count
        xb = x.take(rows)  # [sub, D]
        joined, joiners = _cluster_sums(xb, live, after[rows], k)
        old = before[rows]
        left, leavers = _cluster_sums(xb, live & (old >= 0), old, k)
        return totals[0] + joined - left, totals[1] + joiners - leavers

    return jax.lax.fori_loop(0, (count + sub - 1) // sub, chunk, (sums, counts))


# (done, iterations, centres [k, D], how far each moved [k], bounds, rows recomputed, sums [k, D], counts [k])
_BoundedState = tuple[jax.Array, jax.Array, jax.Array, jax.Array, lloyd_bounds.Bounds, jax.Array, jax.Array,
                      jax.Array]


def _bounded_lloyd(x: Points, n_valid: jax.Array | int, centres: jax.Array, size: int, threshold: jax.Array,
                   max_iters: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lloyd's iterations with distance bounds (`lloyd_bounds`): each pass recomputes only
    the rows whose cluster may have changed, then moves the rows that changed cluster in
    the sums (`_moved_sums`). The same centres and iterations as `kmeans`' full passes, bit
    for bit. -> (centres [k, D], iterations, rows recomputed)."""
    m, dim = x.shape
    k = centres.shape[0]
    sub = _pass_sub_rows(size, k, dim)  # a full pass's sub-block: the same product per row, the same sums
    wide, wide_blocks = occupied_blocks(m, _WIDE_BLOCK, n_valid)

    def body(state: _BoundedState) -> _BoundedState:
        _, i, centres, moved, bounds, computed, sums, counts = state
        before = bounds.assignment
        bounds, packed, count = lloyd_bounds.stale(bounds, moved, centres, n_valid, wide, wide_blocks,
                                                   _round_up(m, sub))
        bounds = lloyd_bounds.refresh(x, bounds, packed, count, centres, sub, _sq_dists)
        sums, counts = _moved_sums(x, before, bounds.assignment, n_valid, sums, counts, sub)
        done, kept, new = _moved(centres, sums, counts, i, threshold, max_iters)
        return done, i + 1, kept, lloyd_bounds.shifts(centres, new), bounds, computed + count, sums, counts

    init = (jnp.array(False), jnp.int32(0), centres, jnp.zeros((k,), x.dtype), lloyd_bounds.initial(m, k, x.dtype),
            jnp.int32(0), jnp.zeros((k, dim), x.dtype), jnp.zeros((k,), x.dtype))
    _, iterations, centres, _, _, computed, _, _ = jax.lax.while_loop(lambda state: ~state[0], body, init)
    return centres, iterations, computed


def kmeans(
    key: jax.Array,
    x: jax.Array | Points,  # [M, D]
    n_valid: jax.Array | int,
    k: int,
    *,
    max_iters: int = 100,
    tol: float = 1e-4,
    block_size: int = 4096,
    axis_name: str | None = None,
    seeding: str = "sample",
    sample: int | None = None,
    seed_rows: int | None = None,
    bounded: bool = False,
) -> KMeansResult:
    """k-means++ then Lloyd until the centres move less than `tol` times the
    mean per-feature variance (scikit-learn's rule) or `max_iters`.
    An empty cluster keeps its centre. x: [M, D], an array or a `Points` view (rows of a
    pool, read where needed: no [M, D] copy); rows past n_valid ignored (finite).

    seeding: "sample" (greedy k-means++ over a uniform sample of `sample` rows,
    default `sample_size(k)`; see `sampled_kmeans_plus_plus`) or "exact" (over
    every row, `kmeans_plus_plus`). seed_rows: `seeding_rows(n_valid, k, M, sample)` when the
    caller knows n_valid on the host (the "sample" seeding's `rows`: one compiled path,
    sized to the rows there). bounded: skip, in each Lloyd pass, the rows whose cluster cannot
    change (`lloyd_bounds`; one device, the same result bit for bit; on a mesh, ignored).
    `Sizing` holds both, as `sizing(...)` decides them.
    block_size: rows per block of a Lloyd pass (each block in sub-blocks of `_sub_rows(k, D)`
    rows, 256 at k = 500 and D = 512, so a few real rows cost a few rows, not a block).
    axis_name: inside `shard_map`, with x replicated on every device of that
    mesh axis, each Lloyd pass splits its row blocks over the devices (see
    `_sharded_assign_pass`); the seeding, k sequential steps, runs on every
    device alike. The result is the same on any number of devices."""
    x = as_points(x)
    m, _ = x.shape
    size, num_blocks = occupied_blocks(m, block_size, n_valid)
    threshold = tol * _mean_variance(x, n_valid)  # scikit-learn's scale

    if seeding == "exact":
        centres = kmeans_plus_plus(key, x, n_valid, k)
    elif seeding == "sample":
        centres = sampled_kmeans_plus_plus(key, x, n_valid, k, sample=sample, rows=seed_rows)
    else:
        raise ValueError(f"kmeans: seeding={seeding!r}; expected 'sample' or 'exact'")

    def run_pass(centres: jax.Array) -> _PassStats:
        if axis_name is None:
            return _assign_pass(x, n_valid, centres, size, num_blocks)
        return _sharded_assign_pass(x, n_valid, centres, size, num_blocks, axis_name)

    if bounded and axis_name is None:
        centres, iterations, computed = _bounded_lloyd(x, n_valid, centres, size, threshold, max_iters)
        out = run_pass(centres)  # the last pass in full: its picks and inertia
        return KMeansResult(centres, out.assignment, out.best_i, out.inertia, iterations, computed + n_valid)

    # Each iteration is one assignment pass with the current centres (the pass is traced
    # once, which halves the compile time).
    sub = _pass_sub_rows(size, k, x.shape[1])

    def body(state: _LloydState) -> _LloydState:
        _, i, centres, last, sums, counts = state
        out = run_pass(centres)
        sums, counts = _moved_sums(x, last.assignment, out.assignment, n_valid, sums, counts, sub)
        done, kept, _ = _moved(centres, sums, counts, i, threshold, max_iters)
        return done, i + 1, kept, out, sums, counts

    init = (jnp.array(False), jnp.int32(0), centres, _empty_pass(m, k, x.dtype), jnp.zeros((k, x.shape[1]), x.dtype),
            jnp.zeros((k,), x.dtype))
    _, iterations, centres, out, _, _ = jax.lax.while_loop(lambda state: ~state[0], body, init)
    return KMeansResult(centres, out.assignment, out.best_i, out.inertia, iterations, iterations * n_valid)
