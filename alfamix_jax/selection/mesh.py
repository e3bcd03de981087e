"""The device mesh that selection and training share: one axis, "pool", over
which pool rows (and training batches) are split.

    mesh = pool_mesh()                      # every device of every process
    x = put_rows(mesh, embeddings)          # [N, D] rows split over the devices
    pool = shard_pool(mesh, embeddings)     # the same, with N kept, for a mesh selector

`put_rows` builds the global array from a callback, so it works unchanged
when several processes (hosts) share the mesh through `jax.distributed`:
each process reads only the rows its own devices hold, from NumPy arrays or
a memory-mapped `.npy`.
"""
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

POOL_AXIS = "pool"


def pool_mesh(devices: Sequence[jax.Device] | None = None, *, axis: str = POOL_AXIS) -> Mesh:
    """A 1-D mesh over `devices` (default: `jax.devices()`, all processes).

    The axis is Auto: jit's partitioner places what shard_map does not
    place itself (random draws over the pool, small replicated arrays)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: got an empty list; pass at least one device (or None for all)")
    return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def mesh_size(mesh: Mesh) -> int:
    return int(np.prod(list(mesh.shape.values())))


def row_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Rows (axis 0) split over every mesh axis, other axes whole."""
    return NamedSharding(mesh, P(tuple(mesh.axis_names), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def padded_rows(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple`."""
    return -(-n // multiple) * multiple


def put_rows(mesh: Mesh, array: np.ndarray | jax.Array, *, rows: int | None = None, fill: float = 0) -> jax.Array:
    """`array` [N, ...] as a global array with rows split over the mesh,
    padded with `fill` to `rows` (default: N rounded up to the mesh size).

    Each process reads only the rows of its own devices, so `array` may be a
    memory-mapped `.npy` larger than one process's memory."""
    n = array.shape[0]
    rows = padded_rows(n, mesh_size(mesh)) if rows is None else rows
    if rows < n or rows % mesh_size(mesh):
        raise ValueError(f"rows: got {rows}; expected >= {n} and a multiple of the mesh size {mesh_size(mesh)}")
    shape = (rows, *array.shape[1:])

    def shard(index: tuple[slice, ...] | None) -> np.ndarray:
        assert index is not None  # jax's callback type allows None; it always passes this shard's index
        start, stop, _ = index[0].indices(rows)
        if stop <= n:  # wholly inside: hand over the rows themselves (a view), no host copy
            return np.asarray(array[start:stop])
        out = np.full((stop - start, *array.shape[1:]), fill, dtype=array.dtype)
        real = max(0, min(stop, n) - start)
        if real:
            out[:real] = array[start:start + real]
        return out

    return jax.make_array_from_callback(shape, row_sharding(mesh, len(shape)), shard)


class ShardedPool(NamedTuple):
    """A pool placed on a mesh once, for a mesh selector: `rows` [N', D] split over the
    devices (N' = N rounded up to a multiple of the device count; rows past N are padding)
    and `size` = N, so a labels array of the wrong length cannot pass for padding."""

    rows: jax.Array  # [N', D]
    size: int


def shard_pool(mesh: Mesh, embeddings: np.ndarray | jax.Array) -> ShardedPool:
    """`put_rows` for a selection pool: each process reads only its own devices' rows of
    `embeddings` [N, D] (a NumPy array or memory-mapped `.npy`)."""
    return ShardedPool(put_rows(mesh, embeddings), int(embeddings.shape[0]))
