"""k-means on device: greedy k-means++ seeding, Lloyd iterations, and the
point nearest each centre. Jitted with fixed shapes.

Why not scikit-learn: its KMeans runs on the host, draws from the global
NumPy RNG, and spends most of its time in k-means++ seeding (23-34 s for
1000 centres on 20k x 512 here). Here the seeding is the same greedy
k-means++ (2 + log k local trials per centre), but each step scores all its
trials with one [M, D] x [D, trials] product, so it costs about one pass over
the points.

The points live in a fixed-size buffer `x [M, D]` whose first `n_valid` rows
are real (`n_valid` is a traced scalar). Lloyd passes loop over the occupied
row blocks only; seeding runs on the smallest of a few static prefixes that
holds them. So the work follows the number of points actually there, while
shapes stay static and nothing recompiles when that number changes.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike


class KMeansResult(NamedTuple):
    centres: jax.Array  # [k, D]
    assignment: jax.Array  # [M] int32 cluster of each point (-1 past n_valid)
    picks: jax.Array  # [k] int32 row nearest each centre among its members (-1: empty cluster)
    inertia: jax.Array  # [] sum of squared distances to the assigned centre
    iterations: jax.Array  # [] Lloyd iterations run


def _blocks(m: int, block_size: int, n_valid: jax.Array | int) -> tuple[int, jax.Array | int]:
    size = min(block_size, m)
    return size, (n_valid + size - 1) // size


def _block_rows(m: int, size: int, n_valid: jax.Array | int,
                j: jax.Array | int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Start of block j (the last one shifted back to fit in the buffer) and
    which of its rows are new to this block and valid."""
    start = jnp.minimum(j * size, m - size)
    rows = start + jnp.arange(size)
    return start, rows, (rows >= j * size) & (rows < n_valid)


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


def kmeans_plus_plus(key: jax.Array, x: jax.Array, n_valid: jax.Array | int, k: int, *, shrink: int = 4,
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
    m = x.shape[0]
    prefixes = sorted({max(1, m // shrink**j) for j in range(levels)})  # ascending, last = m
    branch = jnp.searchsorted(jnp.asarray(prefixes), n_valid, side="left")
    branches = [lambda p=p: _seed(key, x[:p], n_valid, k) for p in prefixes]
    return jax.lax.switch(jnp.minimum(branch, len(prefixes) - 1), branches)


class _PassStats(NamedTuple):
    """One assignment pass's totals, or one block's share of them."""

    sums: jax.Array  # [k, D] per-cluster sums of member rows
    counts: jax.Array  # [k] members per cluster
    best_d: jax.Array  # [k] squared distance of the nearest member (inf: none yet)
    best_i: jax.Array  # [k] int32 row of that member (ties: lowest row)
    inertia: jax.Array  # [] sum of squared distances to the assigned centre
    assignment: jax.Array  # [M] int32 (a pass) or [size] (a block: its rows' clusters)


def _block_stats(x: jax.Array, sq_x: jax.Array, n_valid: jax.Array | int, centres: jax.Array, size: int,
                 j: jax.Array) -> _PassStats:
    """Block j's share of an assignment pass (zero where its rows are not new and valid)."""
    m = x.shape[0]
    k = centres.shape[0]
    start, rows, fresh = _block_rows(m, size, n_valid, j)
    xb = jax.lax.dynamic_slice_in_dim(x, start, size)
    d = _sq_dists(xb, jax.lax.dynamic_slice_in_dim(sq_x, start, size), centres)
    a = jnp.argmin(d, axis=-1).astype(jnp.int32)
    own = jnp.where(fresh, jnp.take_along_axis(d, a[:, None], axis=-1)[:, 0], jnp.inf)
    w = fresh.astype(x.dtype)
    block_d = jax.ops.segment_min(own, a, num_segments=k)
    is_min = fresh & (own == block_d[a])
    sums, counts = _cluster_sums(xb * w[:, None], w, a, k)
    return _PassStats(
        sums=sums,
        counts=counts,
        best_d=block_d,
        best_i=jax.ops.segment_min(jnp.where(is_min, rows, m), a, num_segments=k),
        inertia=jnp.sum(jnp.where(fresh, own, 0.0)),
        assignment=a,
    )


def _cluster_sums(xw: jax.Array, w: jax.Array, a: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Per-cluster sums of the rows xw [b, D] and of their weights w [b].

    On CPU a scatter-add (segment_sum) adds rows in order. On GPUs XLA's
    scatter-add uses atomics, whose order (and so the float sums' last bits)
    changes from run to run; a one-hot matmul there costs one more [b, k, D]
    product but gives the same bits every run."""
    if jax.default_backend() == "cpu":
        return jax.ops.segment_sum(xw, a, num_segments=k), jax.ops.segment_sum(w, a, num_segments=k)
    one_hot = jax.nn.one_hot(a, k, dtype=xw.dtype)  # [b, k]
    return jnp.dot(one_hot.T, xw, precision="highest"), jnp.dot(one_hot.T, w, precision="highest")


def _combine(total: _PassStats, block: _PassStats, j: jax.Array, size: int, n_valid: jax.Array | int) -> _PassStats:
    """Add block j to the running totals. Blocks are always added in block
    order, so the float sums do not depend on where the blocks were computed."""
    m = total.assignment.shape[0]
    start, _, fresh = _block_rows(m, size, n_valid, j)
    better = block.best_d < total.best_d  # a tie keeps the earlier block's (lower) row
    previous = jax.lax.dynamic_slice_in_dim(total.assignment, start, size)
    return _PassStats(
        sums=total.sums + block.sums,
        counts=total.counts + block.counts,
        best_d=jnp.where(better, block.best_d, total.best_d),
        best_i=jnp.where(better, block.best_i, total.best_i),
        inertia=total.inertia + block.inertia,
        assignment=jax.lax.dynamic_update_slice_in_dim(
            total.assignment, jnp.where(fresh, block.assignment, previous), start, axis=0
        ),
    )


def _empty_pass(m: int, dim: int, k: int, dtype: DTypeLike) -> _PassStats:
    return _PassStats(
        sums=jnp.zeros((k, dim), dtype),
        counts=jnp.zeros((k,), dtype),
        best_d=jnp.full((k,), jnp.inf, dtype),
        best_i=jnp.full((k,), -1, jnp.int32),
        inertia=jnp.zeros((), dtype),
        assignment=jnp.full((m,), -1, jnp.int32),
    )


def _assign_pass(x: jax.Array, sq_x: jax.Array, n_valid: jax.Array | int, centres: jax.Array, size: int,
                 num_blocks: jax.Array | int) -> _PassStats:
    """One pass over the occupied blocks, in order, on this device."""
    m, dim = x.shape

    def body(j: jax.Array, total: _PassStats) -> _PassStats:
        return _combine(total, _block_stats(x, sq_x, n_valid, centres, size, j), j, size, n_valid)

    return jax.lax.fori_loop(0, num_blocks, body, _empty_pass(m, dim, centres.shape[0], x.dtype))


def _sharded_assign_pass(x: jax.Array, sq_x: jax.Array, n_valid: jax.Array | int, centres: jax.Array, size: int,
                         num_blocks: jax.Array | int, axis_name: str) -> _PassStats:
    """The same pass with its blocks split over the devices of `axis_name`
    (inside shard_map; x replicated). Each device computes its share of the
    blocks, the per-block results are gathered, and every device adds them up
    in block order: the result is bit-identical on any number of devices."""
    m, dim = x.shape
    k = centres.shape[0]
    devices = jax.lax.axis_size(axis_name)
    max_blocks = -(-m // size)
    slots = -(-max_blocks // devices)  # blocks per device, covering every possible block
    mine = jax.lax.axis_index(axis_name) * slots + jnp.arange(slots)

    def stats(j: jax.Array) -> _PassStats:
        # Blocks past the occupied ones (n_valid is traced) cost nothing.
        return jax.lax.cond(
            j < num_blocks,
            lambda: _block_stats(x, sq_x, n_valid, centres, size, j),
            lambda: _empty_pass(size, dim, k, x.dtype)._replace(assignment=jnp.zeros((size,), jnp.int32)),
        )

    local = jax.lax.map(stats, mine)  # [slots, ...] per field
    every = jax.lax.all_gather(local, axis_name, tiled=True)  # [devices * slots, ...], in block order

    def body(j: jax.Array, total: _PassStats) -> _PassStats:
        return _combine(total, jax.tree.map(lambda a: a[j], every), j, size, n_valid)

    return jax.lax.fori_loop(0, num_blocks, body, _empty_pass(m, dim, k, x.dtype))


_LloydState = tuple[jax.Array, jax.Array, jax.Array, _PassStats]  # (done, iterations, centres [k, D], last pass)


def kmeans(
    key: jax.Array,
    x: jax.Array,  # [M, D]
    n_valid: jax.Array | int,
    k: int,
    *,
    max_iters: int = 100,
    tol: float = 1e-4,
    block_size: int = 4096,
    axis_name: str | None = None,
) -> KMeansResult:
    """k-means++ then Lloyd until the centres move less than `tol` times the
    mean per-feature variance (scikit-learn's rule) or `max_iters`.
    An empty cluster keeps its centre. x: [M, D]; rows past n_valid ignored.

    axis_name: inside `shard_map`, with x replicated on every device of that
    mesh axis, each Lloyd pass splits its row blocks over the devices (see
    `_sharded_assign_pass`); the seeding, k sequential steps that each need
    every point, runs on every device alike. The result is the same on any
    number of devices."""
    m, _ = x.shape
    size, num_blocks = _blocks(m, block_size, n_valid)
    sq_x = jnp.sum(x * x, axis=-1)
    valid = (jnp.arange(m) < n_valid)[:, None]
    count = jnp.maximum(n_valid, 1).astype(x.dtype)
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=0) / count
    variance = jnp.sum(jnp.where(valid, (x - mean) ** 2, 0.0), axis=0) / count
    threshold = tol * jnp.mean(variance)

    centres = kmeans_plus_plus(key, x, n_valid, k)

    # Each iteration is one assignment pass with the current centres. The loop
    # ends on the pass after which the centres would move by <= threshold, so
    # the assignment and picks it returns belong to the centres returned (and
    # the pass is traced once, which halves the compile time).
    def cond(state: _LloydState) -> jax.Array:
        return ~state[0]

    def run_pass(centres: jax.Array) -> _PassStats:
        if axis_name is None:
            return _assign_pass(x, sq_x, n_valid, centres, size, num_blocks)
        return _sharded_assign_pass(x, sq_x, n_valid, centres, size, num_blocks, axis_name)

    def body(state: _LloydState) -> _LloydState:
        _, i, centres, _ = state
        out = run_pass(centres)
        sums, counts = out.sums, out.counts
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)
        done = (jnp.sum((new - centres) ** 2) <= threshold) | (i + 1 >= max_iters)
        return done, i + 1, jnp.where(done, centres, new), out

    init = (jnp.array(False), jnp.int32(0), centres, _empty_pass(m, x.shape[1], k, x.dtype))
    _, iterations, centres, out = jax.lax.while_loop(cond, body, init)
    return KMeansResult(centres, out.assignment, out.best_i, out.inertia, iterations)
