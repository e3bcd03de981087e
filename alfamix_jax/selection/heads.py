"""Classifier heads: `head_apply(head_params, z) -> logits`, row-wise.

The selection core only ever calls a head function, so any Flax module's
`apply` (or any pure function) works. The linear head is named here because
the closed form has an exact shortcut for it (see `candidates.py`).
"""
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

HeadApply = Callable[[Any, jax.Array], jax.Array]


class LinearHead(NamedTuple):
    """PyTorch Linear convention: logits = z @ weight.T + bias."""

    weight: jax.Array  # [C, D]
    bias: jax.Array  # [C]


def linear_head_apply(params: LinearHead, z: jax.Array) -> jax.Array:
    """z: [N, D] -> logits [N, C]."""
    return jnp.dot(z, params.weight.T, precision="highest") + params.bias  # float32, not TF32, on GPUs


def pseudo_labels(head_apply: HeadApply, head_params: Any, z: jax.Array) -> jax.Array:
    """argmax of the head's logits (= argmax of its softmax). z: [N, D] -> [N]."""
    return jnp.argmax(head_apply(head_params, z), axis=-1).astype(jnp.int32)
