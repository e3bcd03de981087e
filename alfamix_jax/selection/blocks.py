"""Row blocks of one static size over n rows, the last block shifted back to end at row n.

Shapes stay static (every block has `size` rows) and nothing is padded or copied; the rows
the last block shares with the one before are computed twice, with the same values, so a
caller that writes results back writes them twice alike, and one that adds them up counts
only the rows new to the block (`block_rows`' mask).
"""
import jax
import jax.numpy as jnp

from alfamix_jax.selection.reductions import prefix_sums


def block_start(n: int, size: int, j: jax.Array | int) -> jax.Array:
    """The first row of block j of `size` rows over n rows (n >= size). min(j * size, n - size):
    also idempotent, so a block index past the last gives the last block again."""
    return jnp.minimum(j * size, n - size)


def occupied_blocks(m: int, block_size: int, n_valid: jax.Array | int) -> tuple[int, jax.Array | int]:
    """Rows per block of M rows, and how many blocks hold the first n_valid."""
    size = min(block_size, m)
    return size, (n_valid + size - 1) // size


def block_rows(m: int, size: int, n_valid: jax.Array | int,
               j: jax.Array | int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Start of block j of M rows, its rows [size], and which of them are new to this block
    and valid (below n_valid)."""
    start = block_start(m, size, j)
    rows = start + jnp.arange(size)
    return start, rows, (rows >= j * size) & (rows < n_valid)


def append_flagged(packed: jax.Array, count: jax.Array, flags: jax.Array,
                   rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Append the rows [b] where flags [b] to the first `count` entries of packed [slots], in
    order (slots past the end: dropped). -> (packed, count)."""
    within = prefix_sums(flags.astype(jnp.float32)).astype(jnp.int32)  # [b] each flagged row's place
    slots = packed.shape[0]
    packed = packed.at[jnp.where(flags, count + within - 1, slots)].set(rows, mode="drop")
    return packed, count + within[-1]
