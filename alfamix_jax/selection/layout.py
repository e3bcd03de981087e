"""Where the pool's rows live: the whole pool on one device, or split over a mesh axis.

Every ALFA-Mix stage is written once, as a function of a `Rows` and arrays of rows
(`stages.py`). `Layout.run` calls it on the whole pool (one device) or on every shard
inside `jax.shard_map` (a mesh); the few operations that cross rows go through `Rows`:

- `total` / `smallest`: an integer count or minimum over the pool (`psum` / `pmin`: exact);
- `top_k` / `first`: the k largest scores / first k True rows of the pool, as global rows,
  ties to the lower row (per-device lists merged in row order: exact);
- `mask`: global rows back to a mask of this shard's rows;
- `gather`: rows by global index, whole on every device (a psum of exact zeros).

So the same seed gives the same batch on any number of devices, bit for bit: per-row values
are computed by the same ops whatever the shard, and nothing adds floats across devices.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alfamix_jax.selection.mesh import mesh_size, padded_rows, put_rows, row_sharding
from alfamix_jax.selection.threefry import uniform_draws

PAD_LABEL = -2  # label of padding rows past N on a mesh: neither labelled nor eligible
NO_ROW = int(np.iinfo(np.int32).max)  # "no row" in a minimum over row indices
ROW, WHOLE = "row", "whole"  # specs for `Layout.run`: split by rows, or the same on every device


@dataclasses.dataclass(frozen=True)
class Rows:
    """The rows a stage sees: the whole pool (axis None) or this device's shard of `axis`."""

    axis: str | None = None

    def offset(self, n: int) -> jax.Array | int:
        """Global index of the first of these n rows."""
        return 0 if self.axis is None else jax.lax.axis_index(self.axis) * n

    def total(self, x: jax.Array) -> jax.Array:
        return x if self.axis is None else jax.lax.psum(x, self.axis)

    def smallest(self, x: jax.Array) -> jax.Array:
        return x if self.axis is None else jax.lax.pmin(x, self.axis)

    def top_k(self, values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
        """The k largest of values [n] over the pool -> (values [k], global rows [k] int32),
        ties to the lower row as `lax.top_k` on the whole pool; the dtype's lowest / -1 past it."""
        n = values.shape[0]
        top, at = jax.lax.top_k(values, min(k, n))
        rows = self.offset(n) + at.astype(jnp.int32)
        if self.axis is not None:  # each list is in (value desc, row asc) order; joined in row order
            every, every_rows = (jax.lax.all_gather(a, self.axis, tiled=True) for a in (top, rows))
            top, at = jax.lax.top_k(every, min(k, every.shape[0]))
            rows = every_rows[at]
        missing = k - top.shape[0]
        if missing:
            lowest = -jnp.inf if jnp.issubdtype(top.dtype, jnp.floating) else jnp.iinfo(top.dtype).min
            top = jnp.concatenate([top, jnp.full((missing,), lowest, top.dtype)])
            rows = jnp.concatenate([rows, jnp.full((missing,), -1, jnp.int32)])
        return top, rows

    def first(self, mask: jax.Array, k: int) -> jax.Array:
        """Global rows [k] int32 of the first k True rows of mask [n], in row order; -1 past them."""
        if self.axis is None:
            return jnp.nonzero(mask, size=k, fill_value=-1)[0].astype(jnp.int32)
        n = mask.shape[0]
        lowest = jnp.iinfo(jnp.int32).min
        score = jnp.where(mask, -(self.offset(n) + jnp.arange(n, dtype=jnp.int32)), lowest)  # int: exact at any N
        top, rows = self.top_k(score, k)
        return jnp.where(top > lowest, rows, -1)

    def mask(self, rows: jax.Array, n: int) -> jax.Array:
        """Global rows [R] (-1: none) -> [n] bool, True at those of these rows."""
        local = rows - self.offset(n)
        inside = (rows >= 0) & (local >= 0) & (local < n)
        return jnp.zeros((n,), bool).at[jnp.where(inside, local, n)].set(True, mode="drop")

    def gather(self, x: jax.Array, rows: jax.Array) -> jax.Array:
        """x [n, ...] at global rows [R] (each in the pool) -> [R, ...], the same on every device."""
        if self.axis is None:
            return x[rows]
        n = x.shape[0]
        local = rows - self.offset(n)
        inside = (local >= 0) & (local < n)
        picked = x[jnp.clip(local, 0, n - 1)]
        mask = inside.reshape(inside.shape + (1,) * (x.ndim - 1))
        return jax.lax.psum(jnp.where(mask, picked, jnp.zeros_like(picked)), self.axis)


class Layout:
    """How a selector's pool is laid out: `mesh=None` (one device) or over a 1-D mesh."""

    def __init__(self, mesh: Mesh | None):
        if mesh is not None and len(mesh.axis_names) != 1:
            raise ValueError(f"mesh: got axes {mesh.axis_names}; expected one axis (pool rows), e.g. "
                             "alfamix_jax.mesh.pool_mesh()")
        self.mesh = mesh
        self.rows = Rows(None if mesh is None else mesh.axis_names[0])
        self.devices = 1 if mesh is None else mesh_size(mesh)

    def run(self, fn: Callable[..., Any], in_specs: tuple, out_specs: Any) -> Callable[..., Any]:
        """`fn(rows, *args)` over the pool: called once on one device, per shard on a mesh.
        Specs are pytrees of ROW (split by rows) and WHOLE (the same everywhere)."""
        bound = functools.partial(fn, self.rows)
        if self.mesh is None:
            return bound
        spec = {ROW: P(self.rows.axis), WHOLE: P()}
        # check_vma=False: loop carries start replicated and become per-device; every collective is explicit.
        return jax.shard_map(bound, mesh=self.mesh, check_vma=False,
                             in_specs=jax.tree.map(spec.get, in_specs), out_specs=jax.tree.map(spec.get, out_specs))

    def gather(self, x: jax.Array, rows: jax.Array) -> jax.Array:
        """x [N', ...] at global rows [R] -> [R, ...], whole on every device (`Rows.gather`)."""
        return self.run(lambda r, x, i: r.gather(x, i), (ROW, WHOLE), WHOLE)(x, rows)

    def uniform(self, key: jax.Array, n: int) -> jax.Array:
        """[n] uniform draws, split by rows on a mesh. A row's draw does not depend on n or the mesh
        (partitionable threefry), so one device and any mesh draw the same value for a row."""
        draws = uniform_draws(key, n)
        return draws if self.mesh is None else jax.lax.with_sharding_constraint(draws, row_sharding(self.mesh))

    def padded(self, n: int) -> int:
        """Rows of a pool of n rows on this layout (a multiple of the device count)."""
        return padded_rows(n, self.devices)

    def place_labels(self, labels: np.ndarray) -> jax.Array:
        """Host labels [N] -> [N'] on the layout, padding rows PAD_LABEL."""
        labels = np.asarray(labels, np.int32)
        if self.mesh is None:
            return jnp.asarray(labels)
        return put_rows(self.mesh, labels, fill=PAD_LABEL)

    def place_rows(self, embeddings: jax.Array) -> jax.Array:
        """A device array [N, D] -> [N', D] split by rows (a copy unless it already is)."""
        if self.mesh is None:
            return embeddings
        n = embeddings.shape[0]
        sharding = row_sharding(self.mesh, 2)
        if n == self.padded(n) and embeddings.sharding.is_equivalent_to(sharding, 2):
            return embeddings
        return _pad_rows(embeddings, self.padded(n), sharding)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad_rows(x: jax.Array, rows: int, sharding: NamedSharding) -> jax.Array:
    padded = jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))
    return jax.lax.with_sharding_constraint(padded, sharding)
