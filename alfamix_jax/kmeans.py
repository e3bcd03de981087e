"""k-means on device: greedy k-means++ seeding, Lloyd iterations, and the
point nearest each centre. Jitted with fixed shapes.

Why not scikit-learn: its KMeans runs on the host, draws from the global
NumPy RNG, and spends most of its time in k-means++ seeding (23-34 s for
1000 centres on 20k x 512 here). Here the seeding is the same greedy
k-means++ (2 + log k local trials per centre), but each step scores all its
trials with one [M, D] x [D, trials] product, so it costs about one pass over
the points.

The points live in a fixed-size buffer `x [M, D]` whose first `n_valid` rows
are real (`n_valid` is a traced scalar). Every pass loops over the occupied
row blocks only, so the work follows the number of points actually there,
while shapes stay static and nothing recompiles when that number changes.
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


def kmeans_plus_plus(key, x, n_valid, k: int, *, block_size: int = 65536):
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant):
    each new centre is the best of `2 + log k` points drawn with probability
    proportional to the squared distance to the nearest centre so far.
    x: [M, D], first n_valid rows real. -> centres [k, D].
    Each step is one memory-bound pass over x; its temporaries are only
    [trials, block], so blocks are large (sliced copies cost 2x at 4096)."""
    m, dim = x.shape
    trials = 2 + int(math.log(k))
    size, num_blocks = _blocks(m, block_size, n_valid)
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

    def potentials(cands, mind):
        """For each trial point: sum over points of min(mind, d(point, trial)),
        plus the new mind for every trial. -> [trials], [trials, M]."""
        c = x[cands]  # [T, D]

        def body(j, carry):
            pot, new_mind = carry
            start, _, fresh = _block_rows(m, size, n_valid, j)
            xb = jax.lax.dynamic_slice_in_dim(x, start, size)
            sb = jax.lax.dynamic_slice_in_dim(sq_x, start, size)
            mb = jax.lax.dynamic_slice_in_dim(mind, start, size)
            d = jnp.minimum(_sq_dists(xb, sb, c).T, mb[None, :])  # [T, b]
            pot = pot + jnp.sum(jnp.where(fresh[None, :], d, 0.0), axis=-1)
            new_mind = jax.lax.dynamic_update_slice_in_dim(new_mind, d, start, axis=1)
            return pot, new_mind

        init = (jnp.zeros((trials,), x.dtype), jnp.broadcast_to(mind, (trials, m)))
        return jax.lax.fori_loop(0, num_blocks, body, init)

    key, first_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, jnp.maximum(n_valid, 1))
    centres = jnp.zeros((k, dim), x.dtype).at[0].set(x[first])
    mind = jnp.where(valid, jnp.sum((x - x[first]) ** 2, axis=-1), 0.0)

    def step(i, carry):
        centres, mind = carry
        cands = draw(jax.random.fold_in(key, i), mind, trials)
        pot, new_mind = potentials(cands, mind)
        best = jnp.argmin(pot)
        return centres.at[i].set(x[cands[best]]), jnp.where(valid, new_mind[best], 0.0)

    centres, _ = jax.lax.fori_loop(1, k, step, (centres, mind))
    return centres


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
    seed_block_size: int = 65536,
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

    centres = kmeans_plus_plus(key, x, n_valid, k, block_size=seed_block_size)

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
