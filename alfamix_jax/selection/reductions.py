"""Index reductions that XLA:CPU vectorises.

XLA:CPU lowers `jnp.argmin` / `jnp.argmax` along an axis to a scalar loop
(a variadic reduce of value and index); a min over masked indices is a
plain vectorised reduce. On a Lloyd pass's [256, 1000] distance tiles the
masked form cut the argmin from about 0.15 s to 0.02 s per 65,536 rows.
"""
import jax
import jax.numpy as jnp


def first_index_of(values: jax.Array, target: jax.Array, axis: int) -> jax.Array:
    """The first index along `axis` where values == target (target has that axis
    removed): `jnp.argmin(values, axis)` when target is the min along it,
    `jnp.argmax` when the max. values: [..., K, ...] -> int32 with `axis` removed;
    K - 1 where nothing matches (a NaN target: the callers' rows are finite)."""
    k = values.shape[axis]
    shape = [1] * values.ndim
    shape[axis] = k
    index = jnp.arange(k, dtype=jnp.int32).reshape(shape)
    hit = jnp.where(values == jnp.expand_dims(target, axis), index, k)
    return jnp.minimum(jnp.min(hit, axis=axis), k - 1)
