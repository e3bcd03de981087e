"""Class anchors: the mean labelled embedding of each class."""
import jax
import jax.numpy as jnp

from alfamix_jax.selection.threefry import uniform_draws

# Labelled rows per partial sum of the class sums (`_class_sums`).
ANCHOR_TILE = 64


def _class_sums(embeddings: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Per-class sums [C, D] and counts [C] of the labelled rows, added in one fixed order: the labelled
    rows in row order, ANCHOR_TILE at a time, each tile's product added to the running
    sums in turn. Why not one [C, N] x [N, D] product: its float32 rounding follows N and
    where the labelled rows sit, so the whole pool on one device and a mesh's gathered
    labelled rows gave anchors 1 ulp apart. Here both visit the same tiles, and only
    ceil(L / ANCHOR_TILE) tiles of the L labelled rows are read.
    embeddings: [N, D]; labels: [N] int, -1 = unlabelled."""
    n, dim = embeddings.shape
    labelled = labels >= 0
    count = jnp.sum(labelled, dtype=jnp.int32)
    order = jnp.nonzero(labelled, size=n, fill_value=0)[0]  # [N] labelled rows first, in row order

    def add_tile(j: jax.Array, totals: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        rank = j * ANCHOR_TILE + jnp.arange(ANCHOR_TILE)  # [T] places among the labelled rows
        real = rank < count
        rows = order[jnp.minimum(rank, n - 1)]
        x = jnp.where(real[:, None], embeddings[rows], 0.0)  # [T, D]; a non-finite unlabelled row adds nothing
        one_hot = jax.nn.one_hot(jnp.where(real, labels[rows], -1), num_classes, dtype=embeddings.dtype)  # [T, C]
        sums, counts = totals
        # float32 products on GPUs too, not TF32; counts are whole numbers, exact in any order
        return sums + jnp.dot(one_hot.T, x, precision="highest"), counts + one_hot.sum(axis=0)

    tiles = (count + ANCHOR_TILE - 1) // ANCHOR_TILE
    init = (jnp.zeros((num_classes, dim), embeddings.dtype), jnp.zeros((num_classes,), embeddings.dtype))
    return jax.lax.fori_loop(0, tiles, add_tile, init)


def compute_anchors(embeddings: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Mean labelled embedding per class; a class with no labelled row takes
    the mean of all labelled rows (as the original does).

    embeddings: [N, D]; labels: [N] int, -1 = unlabelled. -> [C, D].
    Works on the whole pool with a mask, so its shapes do not change as the
    labelled set grows; the same bits for the whole pool and for its labelled
    rows gathered in row order (`_class_sums`), so on one device and on a mesh.
    """
    sums, counts = _class_sums(embeddings, labels, num_classes)  # [C, D], [C]
    # Every labelled row is in exactly one class, so the class sums add up to
    # the labelled sum: no second pass for the all-labelled mean.
    overall = sums.sum(axis=0) / jnp.maximum(counts.sum(), 1.0)  # [D]
    class_means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, class_means, overall[None, :])


def labelled_anchors(key: jax.Array, embeddings: jax.Array, labels: jax.Array,
                     max_anchors: int) -> tuple[jax.Array, jax.Array]:
    """Every labelled row as an anchor (the paper's "all labelled" ablation), in
    a static buffer of `max_anchors` rows. Unused slots repeat a labelled row:
    a candidate is a flip for *some* anchor, so duplicates change nothing. With
    more labelled rows than slots, a uniform random subset (by `key`).

    embeddings: [N, D]; labels: [N] int, -1 = unlabelled. -> ([min(max_anchors, N), D], rows used).
    """
    max_anchors = min(max_anchors, labels.shape[0])
    labelled = labels >= 0
    count = jnp.sum(labelled, dtype=jnp.int32)
    priority = jnp.where(labelled, uniform_draws(key, labels.shape[0]), -1.0)
    idx = jax.lax.top_k(priority, max_anchors)[1]  # [max_anchors]; labelled rows first
    idx = jnp.where(jnp.arange(max_anchors) < count, idx, idx[0])  # pad with a labelled row
    return embeddings[idx], jnp.minimum(count, max_anchors)
