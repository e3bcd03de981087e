"""Distance bounds that let a Lloyd pass skip the rows whose cluster cannot change
(Elkan 2003; Hamerly 2010; with groups of centres, Ding et al. 2015, "Yinyang k-means").

Each row keeps an upper bound on its distance to its own centre and, for each group of
`group_size` centres, a lower bound on its distance to the group's other centres. When
the centres move, the bounds widen by how far they moved (the triangle inequality); a
row is recomputed only when its upper bound is no longer clearly below every lower bound.
Late in a run few rows are: on the Fashion-MNIST protocol's learned-alpha candidates
(26,306 x 256, k = 100, 78 passes) a row was recomputed 17 times, against 78.

The same assignments as a full pass, bit for bit. A row is skipped only when
    upper^2 + 2 E < lower^2,   E = (gamma_D + 2 u) (|x| + max |c|)^2,
E bounding the float32 error of a squared distance as `kmeans._sq_dists` computes it
(|x|^2 - 2 x.c + |c|^2, any order of summation; u = 2^-24, gamma_D = D u / (1 - D u)):
then the computed distance to its own centre is strictly the smallest, as a full pass
would find it. The bounds themselves are kept on true distances, widened by E when set
and by a few ulps whenever they move, so rounding never tightens them. A recomputed row
gets its distances from the same [rows, D] x [D, k] product as a full pass's sub-block.
"""
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from alfamix_jax.selection.blocks import append_flagged, block_rows
from alfamix_jax.selection.points import Points
from alfamix_jax.selection.reductions import first_index_of

# Lower bounds per row at most: [M, 32] floats, 8 MiB for a 65,536-row buffer. More groups
# skip more rows but widen more bounds per pass: on the Fashion-MNIST candidates (k = 100)
# one bound per centre recomputed 13.4 rows per row over the run, groups of 4 centres 17.0,
# Hamerly's single bound 26.4, all in about the same time; at k = 1000 on 65,536 rows,
# 32 groups took no longer than 128.
MAX_GROUPS = 32
_ULP = 2.0**-24
_WIDEN, _NARROW = 1.0 + 4 * _ULP, 1.0 - 4 * _ULP  # a few ulps either way, for each rounded update

# dists(x [b, D], |x|^2 [b], centres [k, D]) -> squared distances [b, k], as a full pass computes them
DistsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Bounds(NamedTuple):
    """Every row's cluster and its distance bounds (rows past n_valid: never recomputed)."""

    assignment: jax.Array  # [M] int32 (-1: not computed yet)
    upper: jax.Array  # [M] >= the true distance to the row's centre (inf: not yet known)
    lower: jax.Array  # [M, G] <= the true distance to the other centres of each group
    norms: jax.Array  # [M] |x|, set when a row is first computed


def group_size(k: int) -> int:
    """Centres per group: one each (Elkan's bounds) up to MAX_GROUPS centres, else k / MAX_GROUPS."""
    return -(-k // MAX_GROUPS)


def _groups(k: int) -> int:
    """G: groups of `group_size(k)` centres, the last one possibly short."""
    return -(-k // group_size(k))


def initial(m: int, k: int, dtype: jnp.dtype) -> Bounds:
    """Bounds that know nothing: every row is recomputed on the first pass (no cluster yet: -1)."""
    return Bounds(jnp.full((m,), -1, jnp.int32), jnp.full((m,), jnp.inf, dtype), jnp.zeros((m, _groups(k)), dtype),
                  jnp.zeros((m,), dtype))


def _error(norms: jax.Array, centres: jax.Array) -> jax.Array:
    """E per row: the most a computed squared distance from it to any centre can be off. norms [b] -> [b]."""
    dim = centres.shape[1]
    gamma = dim * _ULP / (1.0 - dim * _ULP) + 2 * _ULP
    reach = norms + jnp.sqrt(jnp.max(jnp.sum(centres * centres, axis=-1)))
    # 1.01: second-order terms, the norms' own rounding (relative gamma_D / 2) and E's
    return jnp.float32(1.01 * gamma) * reach * reach


def _by_group(values: jax.Array, k: int, fill: float, reduce: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """Reduce the last axis [..., k] over groups of `group_size(k)` centres with an elementwise
    `reduce` (jnp.minimum, jnp.maximum) -> [..., G]. Group j holds centres j * size to
    j * size + size - 1 (size = `group_size(k)`), so member i of every group is the strided
    slice [..., i::size]: `size` elementwise steps, one loop fusion, the same values as a
    reduction over a reshaped [..., G, size] axis, which took 93 of 890 ms of a Fashion-MNIST
    round's k-means in a profile (the finish program 0.69 s against 0.75-0.77 s, one process)."""
    size, groups = group_size(k), _groups(k)
    pad = [(0, 0)] * (values.ndim - 1) + [(0, groups * size - k)]
    padded = jnp.pad(values, pad, constant_values=fill)
    out = padded[..., 0::size]
    for i in range(1, size):
        out = reduce(out, padded[..., i::size])
    return out


def _widened(bounds: Bounds, shifts: jax.Array, k: int) -> Bounds:
    """The bounds after the centres moved by shifts [k] (true distances, rounded up)."""
    upper = (bounds.upper + shifts[bounds.assignment]) * _WIDEN
    lower = jnp.maximum((bounds.lower - _by_group(shifts, k, 0.0, jnp.maximum)[None, :]) * _NARROW, 0.0)
    return bounds._replace(upper=upper, lower=lower)


def _unclear(bounds: Bounds, centres: jax.Array) -> jax.Array:
    """Rows whose own centre may no longer be strictly the nearest as a full pass computes
    distances: upper^2 + 2 E is not below every lower bound squared. -> [b] bool."""
    error = _error(bounds.norms, centres)
    nearest_other = jnp.min(bounds.lower, axis=-1)
    return ~((bounds.upper * bounds.upper + 2.0 * error) * _WIDEN < nearest_other * nearest_other * _NARROW)


def stale(bounds: Bounds, moved: jax.Array, centres: jax.Array, n_valid: jax.Array | int, size: int,
          num_blocks: jax.Array | int, slots: int) -> tuple[Bounds, jax.Array, jax.Array]:
    """Widen every valid row's bounds by how far the centres moved (moved [k]) and list the
    rows to recompute, over the occupied blocks of `size` rows only.
    -> (bounds, packed [slots >= M] int32 rows, the listed first; their count)."""
    m = bounds.upper.shape[0]
    k = centres.shape[0]

    def body(j: jax.Array, carry: tuple[Bounds, jax.Array, jax.Array]) -> tuple[Bounds, jax.Array, jax.Array]:
        bounds, packed, count = carry
        start, rows, fresh = block_rows(m, size, n_valid, j)
        part = jax.tree.map(lambda field: jax.lax.dynamic_slice_in_dim(field, start, size), bounds)
        wide = _widened(part, moved, k)
        keep = jax.tree.map(lambda new, old: jnp.where(fresh.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                            wide, part)  # rows an earlier block already widened stay as they are
        packed, count = append_flagged(packed, count, fresh & _unclear(keep, centres), rows)
        bounds = jax.tree.map(lambda old, new: jax.lax.dynamic_update_slice_in_dim(old, new, start, 0), bounds, keep)
        return bounds, packed, count

    init = (bounds, jnp.zeros((slots,), jnp.int32), jnp.int32(0))
    return jax.lax.fori_loop(0, num_blocks, body, init)


def shifts(old: jax.Array, new: jax.Array) -> jax.Array:
    """How far each centre moved, rounded up: [k, D] twice -> [k]."""
    dim = old.shape[1]
    return jnp.sqrt(jnp.sum((new - old) ** 2, axis=-1)) * jnp.float32(1.0 + (dim + 8) * _ULP)


def refresh(x: Points, bounds: Bounds, packed: jax.Array, count: jax.Array, centres: jax.Array, sub: int,
            dists: DistsFn) -> Bounds:
    """Recompute the first `count` rows of `packed` [slots, a multiple of sub] in sub-blocks
    of `sub` rows: their clusters and fresh bounds."""
    m = bounds.upper.shape[0]
    k = centres.shape[0]

    def body(c: jax.Array, bounds: Bounds) -> Bounds:
        rows = jax.lax.dynamic_slice_in_dim(packed, c * sub, sub)  # [sub]
        xb = x.take(rows)  # [sub, D]
        sq = jnp.sum(xb * xb, axis=-1)
        d = dists(xb, sq, centres)  # [sub, k]
        nearest = jnp.min(d, axis=-1)
        a = first_index_of(d, nearest, axis=-1)
        norms = jnp.sqrt(sq) * _WIDEN
        error = _error(norms, centres)[:, None]
        others = jnp.where(jnp.arange(k)[None, :] == a[:, None], jnp.inf, d)
        lower = jnp.sqrt(jnp.maximum(_by_group(others, k, jnp.inf, jnp.minimum) - error, 0.0)) * _NARROW
        upper = jnp.sqrt(nearest + error[:, 0]) * _WIDEN
        at = jnp.where(c * sub + jnp.arange(sub) < count, rows, m)  # past the count: dropped
        return jax.tree.map(lambda field, value: field.at[at].set(value, mode="drop"), bounds,
                            Bounds(a, upper, lower, norms))

    return jax.lax.fori_loop(0, (count + sub - 1) // sub, body, bounds)


def worth_it(n_valid: int, k: int) -> bool:
    """Whether bounds pay for themselves at n_valid rows and k centres (the host decides, as it
    knows the count). Each pass also widens the bounds and packs the rows in a pass of its
    own, the run ends with one full pass, and the program has more to compile. Measured on a
    2-core Intel Xeon, steady, the same centres either way
    (`experiments/results/fmnist_query/stages.md`, `experiments/results/kmeans/bounds_moved_sums.md`):
    - the Fashion-MNIST protocol's learned-alpha candidates, x 256, k = 100: 35,417 rows (354
      per centre, 64 passes) 0.42 s against 0.88 s for the finish program, 27,157 rows 0.36 s
      against 0.76 s; that program compiles in 1.50 s with bounds against 1.34 s;
    - 65,536 x 128, k = 1000 (65 rows per centre, random points), 36 passes: 4.26 s either way;
    - 20,000 x 64 blobs, k = 200 (100 per centre), 14 passes: 0.083 s against 0.118 s.
    So from 128 rows per centre, where the centres settle and a row is rarely recomputed, and
    the steady gain outweighs the compile in a run of a few rounds."""
    return n_valid >= 128 * k and n_valid >= 4096
