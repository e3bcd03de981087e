"""The rows k-means clusters, as a view: row i is source[rows[i]] / scale[i].

Why a view: on one device the candidates are rows of the pool, and a copy of
them in a fixed-size buffer is a fresh [capacity, D] array on every call: at
20,000 x 512 writing it cost ~15 ms, where k-means on 570 candidates costs
less. The view reads each row where k-means needs it, in blocks of the rows
actually there. `normalised` gives the rows F.normalize(p=2, eps=1e-12), as
the original does before k-means, each row's norm computed once.

Give `rows` whenever bits must agree between views: XLA fuses a reduction
over a row (a norm, |x|^2) with the gather or slice that read it, and rounds
it differently after each (1 ulp in ~10% of norms, measured). So a mesh,
which gathers the candidates into a buffer first, reads that buffer through
`rows = arange`, as one device reads the pool through the candidates' rows.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from alfamix_jax.selection.blocks import block_rows, occupied_blocks

NORM_EPS = 1e-12  # F.normalize's eps


def l2_norms(x: jax.Array) -> jax.Array:
    """max(||row||, 1e-12) per row of x [b, D] -> [b]: F.normalize's divisor."""
    return jnp.maximum(jnp.linalg.norm(x, axis=-1), NORM_EPS)


class Points(NamedTuple):
    """M rows of D features: row i is source[rows[i]] / scale[i]."""

    source: jax.Array  # [S, D]
    rows: jax.Array | None = None  # [M] int32 rows of source; None: source itself, sliced (M = S)
    scale: jax.Array | None = None  # [M] divisor of each row; None: 1

    @property
    def shape(self) -> tuple[int, int]:
        m = self.source.shape[0] if self.rows is None else self.rows.shape[0]
        return m, self.source.shape[1]

    @property
    def dtype(self) -> jnp.dtype:
        return self.source.dtype

    def block(self, start: jax.Array | int, size: int) -> jax.Array:
        """Rows start .. start + size - 1 (start + size <= M) -> [size, D]."""
        if self.rows is None:
            x = jax.lax.dynamic_slice_in_dim(self.source, start, size)
        else:
            x = self.source[jax.lax.dynamic_slice_in_dim(self.rows, start, size)]
        return x if self.scale is None else x / jax.lax.dynamic_slice_in_dim(self.scale, start, size)[:, None]

    def take(self, idx: jax.Array) -> jax.Array:
        """Rows idx [R] (each in [0, M)) -> [R, D]."""
        x = self.source[idx] if self.rows is None else self.source[self.rows[idx]]
        return x if self.scale is None else x / self.scale[idx][:, None]


def as_points(x: "jax.Array | Points") -> Points:
    return x if isinstance(x, Points) else Points(x)


PASS_BLOCK = 256  # rows per block of a one-off pass over the points (`normalised`, k-means' variance)


def normalised(points: Points, n_valid: jax.Array | int) -> Points:
    """The same rows L2-normalised (F.normalize: x / max(||x||, 1e-12)): each of the first n_valid rows'
    norm computed once, in blocks of PASS_BLOCK rows over those rows only; the rest
    scale 1. points: unscaled."""
    m, _ = points.shape
    size, num_blocks = occupied_blocks(m, PASS_BLOCK, n_valid)

    def body(j: jax.Array, scale: jax.Array) -> jax.Array:
        start, _, _ = block_rows(m, size, n_valid, j)
        return jax.lax.dynamic_update_slice_in_dim(scale, l2_norms(points.block(start, size)), start, axis=0)

    scale = jax.lax.fori_loop(0, num_blocks, body, jnp.ones((m,), points.dtype))
    return points._replace(scale=jnp.where(jnp.arange(m) < n_valid, scale, 1.0))
