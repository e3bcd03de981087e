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


class KMeansResult(NamedTuple):
    centres: jax.Array  # [k, D]
    assignment: jax.Array  # [M] int32 cluster of each point (-1 past n_valid)
    picks: jax.Array  # [k] int32 row nearest each centre among its members (-1: empty cluster)
    inertia: jax.Array  # [] sum of squared distances to the assigned centre
    iterations: jax.Array  # [] Lloyd iterations run


def _blocks(m: int, block_size: int, n_valid):
    size = min(block_size, m)
    return size, (n_valid + size - 1) // size


def _block_rows(m, size, n_valid, j):
    """Start of block j (the last one shifted back to fit in the buffer) and
    which of its rows are new to this block and valid."""
    start = jnp.minimum(j * size, m - size)
    rows = start + jnp.arange(size)
    return start, rows, (rows >= j * size) & (rows < n_valid)


def _sq_dists(x, sq_x, centres):
    """[b, D], [b], [k, D] -> squared distances [b, k]."""
    sq_c = jnp.sum(centres * centres, axis=-1)
    return jnp.maximum(sq_x[:, None] - 2.0 * (x @ centres.T) + sq_c[None, :], 0.0)


def _seed(key, x, n_valid, k: int):
    """Greedy k-means++ over all of x (one block): the rows past n_valid
    weigh nothing. -> centres [k, D]."""
    m, dim = x.shape
    trials = 2 + int(math.log(k))
    sq_x = jnp.sum(x * x, axis=-1)
    valid = jnp.arange(m) < n_valid

    def draw(key, weights, count):
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

    def step(i, carry):
        centres, mind = carry
        cands = draw(jax.random.fold_in(key, i), mind, trials)
        # Every trial scored in one [M, D] x [D, trials] product.
        new_mind = jnp.minimum(_sq_dists(x, sq_x, x[cands]).T, mind[None, :])  # [T, M]
        best = jnp.argmin(jnp.sum(jnp.where(valid[None, :], new_mind, 0.0), axis=-1))
        return centres.at[i].set(x[cands[best]]), jnp.where(valid, new_mind[best], 0.0)

    centres, _ = jax.lax.fori_loop(1, k, step, (centres, mind))
    return centres


def kmeans_plus_plus(key, x, n_valid, k: int, *, shrink: int = 4, levels: int = 3):
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


def _assign_pass(x, sq_x, n_valid, centres, size, num_blocks, *, shapes_only=False):
    """One pass: per-cluster sums and counts, the nearest member of each
    cluster, the inertia and the assignment. shapes_only: the empty result."""
    m, dim = x.shape
    k = centres.shape[0]

    def body(j, carry):
        sums, counts, best_d, best_i, inertia, assignment = carry
        start, rows, fresh = _block_rows(m, size, n_valid, j)
        xb = jax.lax.dynamic_slice_in_dim(x, start, size)
        d = _sq_dists(xb, jax.lax.dynamic_slice_in_dim(sq_x, start, size), centres)
        a = jnp.argmin(d, axis=-1).astype(jnp.int32)
        own = jnp.where(fresh, jnp.take_along_axis(d, a[:, None], axis=-1)[:, 0], jnp.inf)
        w = fresh.astype(x.dtype)
        sums = sums + jax.ops.segment_sum(xb * w[:, None], a, num_segments=k)
        counts = counts + jax.ops.segment_sum(w, a, num_segments=k)
        inertia = inertia + jnp.sum(jnp.where(fresh, own, 0.0))
        # Nearest member per cluster; ties go to the lowest row index.
        block_d = jax.ops.segment_min(own, a, num_segments=k)
        is_min = fresh & (own == block_d[a])
        block_i = jax.ops.segment_min(jnp.where(is_min, rows, m), a, num_segments=k)
        better = block_d < best_d
        best_d, best_i = jnp.where(better, block_d, best_d), jnp.where(better, block_i, best_i)
        previous = jax.lax.dynamic_slice_in_dim(assignment, start, size)
        assignment = jax.lax.dynamic_update_slice_in_dim(assignment, jnp.where(fresh, a, previous), start, axis=0)
        return sums, counts, best_d, best_i, inertia, assignment

    init = (
        jnp.zeros((k, dim), x.dtype),
        jnp.zeros((k,), x.dtype),
        jnp.full((k,), jnp.inf, x.dtype),
        jnp.full((k,), -1, jnp.int32),
        jnp.zeros((), x.dtype),
        jnp.full((m,), -1, jnp.int32),
    )
    if shapes_only:
        return init
    return jax.lax.fori_loop(0, num_blocks, body, init)


def kmeans(
    key,
    x,
    n_valid,
    k: int,
    *,
    max_iters: int = 100,
    tol: float = 1e-4,
    block_size: int = 4096,
):
    """k-means++ then Lloyd until the centres move less than `tol` times the
    mean per-feature variance (scikit-learn's rule) or `max_iters`.
    An empty cluster keeps its centre. x: [M, D]; rows past n_valid ignored."""
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
    def cond(state):
        return ~state[0]

    def body(state):
        _, i, centres, _ = state
        out = _assign_pass(x, sq_x, n_valid, centres, size, num_blocks)
        sums, counts = out[0], out[1]
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)
        done = (jnp.sum((new - centres) ** 2) <= threshold) | (i + 1 >= max_iters)
        return done, i + 1, jnp.where(done, centres, new), out

    init = (jnp.array(False), jnp.int32(0), centres, _assign_pass(x, sq_x, n_valid, centres, 0, 0, shapes_only=True))
    _, iterations, centres, out = jax.lax.while_loop(cond, body, init)
    _, _, _, picks, inertia, assignment = out
    return KMeansResult(centres, assignment, picks, inertia, iterations)
