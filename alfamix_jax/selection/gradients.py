"""Direction of the pseudo-label loss gradient w.r.t. the pool embeddings.

The original takes `d/du CrossEntropy(f(u), p)` with mean reduction and then
divides by its row norm, so only the direction of each row matters. Two
numerical points, both measured against the original's float32 torch code:
- The 1/N of the mean reduction only shrinks entries towards the subnormal
  range, which XLA on CPU flushes to zero (torch does not). We use the sum
  reduction: per-row gradients are identical up to that positive scale.
- Squaring entries near 1e-20 underflows, so `g / ||g||` would be 0/0. We
  divide a row by its max-abs entry first, which is exact in direction.
A row whose gradient is exactly zero (a saturated softmax) has no direction;
`normalise_rows` returns zeros for it and a mask saying so.
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

from alfamix_jax.selection.heads import HeadApply


def pseudo_label_loss(head_apply: HeadApply, head_params: Any, z: jax.Array, labels: jax.Array) -> jax.Array:
    """Sum over rows of CE(head(z), labels). z: [N, D], labels: [N]."""
    logits = head_apply(head_params, z)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def loss_gradient(head_apply: HeadApply, head_params: Any, z: jax.Array, labels: jax.Array) -> jax.Array:
    """d loss / d z via jax.grad, for any row-wise head. -> [N, D]."""
    return jax.grad(pseudo_label_loss, argnums=2)(head_apply, head_params, z, labels)


def normalise_rows(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unit rows, robust to tiny entries. g: [N, D] -> ([N, D], has_direction [N])."""
    scale = jnp.max(jnp.abs(g), axis=-1, keepdims=True)
    has_direction = scale[:, 0] > 0
    g = g / jnp.where(scale > 0, scale, 1.0)
    norm = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return g / jnp.where(norm > 0, norm, 1.0), has_direction
