"""Class anchors: the mean labelled embedding of each class."""
import jax
import jax.numpy as jnp


def compute_anchors(embeddings: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Mean labelled embedding per class; a class with no labelled row takes
    the mean of all labelled rows (as the original does).

    embeddings: [N, D]; labels: [N] int, -1 = unlabelled. -> [C, D].
    Works on the whole pool with a mask, so its shapes do not change as the
    labelled set grows.
    """
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=embeddings.dtype)  # [N, C]; -1 -> zeros
    sums = jnp.dot(one_hot.T, embeddings, precision="highest")  # [C, D], the one pass (float32, not TF32)
    counts = one_hot.sum(axis=0)  # [C]
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
    priority = jnp.where(labelled, jax.random.uniform(key, labels.shape), -1.0)
    idx = jax.lax.top_k(priority, max_anchors)[1]  # [max_anchors]; labelled rows first
    idx = jnp.where(jnp.arange(max_anchors) < count, idx, idx[0])  # pad with a labelled row
    return embeddings[idx], jnp.minimum(count, max_anchors)
