"""Class anchors: the mean labelled embedding of each class."""
import jax
import jax.numpy as jnp


def compute_anchors(embeddings, labels, num_classes: int):
    """Mean labelled embedding per class; a class with no labelled row takes
    the mean of all labelled rows (as the original does).

    embeddings: [N, D]; labels: [N] int, -1 = unlabelled. -> [C, D].
    Works on the whole pool with a mask, so its shapes do not change as the
    labelled set grows.
    """
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=embeddings.dtype)  # [N, C]; -1 -> zeros
    sums = one_hot.T @ embeddings  # [C, D], the one pass over the pool
    counts = one_hot.sum(axis=0)  # [C]
    # Every labelled row is in exactly one class, so the class sums add up to
    # the labelled sum: no second pass for the all-labelled mean.
    overall = sums.sum(axis=0) / jnp.maximum(counts.sum(), 1.0)  # [D]
    class_means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, class_means, overall[None, :])
