"""The unrolled threefry draws (selection/threefry.py) against jax.random, bit for bit, with
typed and legacy raw keys, in one jitted program each (compiles dominate)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alfamix_jax.selection import mixing, threefry

pytestmark = pytest.mark.shipping_codegen

DIMS = (1, 7, 64)
SIZES = (1, 5, 20200)


def _bits(x):
    return np.asarray(x).view(np.uint32)


@jax.jit
def _normals(keys, raw):
    """normal_rows and jax.random.normal on the same keys (typed [65], legacy raw [9, 2])."""
    ours = [threefry.normal_rows(keys, d) for d in DIMS] + [threefry.normal_rows(raw, 5)]
    theirs = [jax.vmap(lambda k, d=d: jax.random.normal(k, (d,)))(keys) for d in DIMS]
    return ours, theirs + [jax.vmap(lambda k: jax.random.normal(k, (5,)))(raw)]


def test_normal_rows_is_jax_random_normal_bit_for_bit():
    keys = mixing.row_keys(jax.random.key(3), jnp.arange(65))
    raw = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(1), jnp.arange(9))  # legacy keys
    for ours, theirs in zip(*_normals(keys, raw), strict=True):
        np.testing.assert_array_equal(_bits(ours), _bits(theirs))


@jax.jit
def _uniforms(key, raw):
    pairs = [(threefry.uniform_draws(k, n), jax.random.uniform(k, (n,))) for k in (key, raw) for n in SIZES]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_uniform_draws_are_jax_random_uniform_bit_for_bit():
    ours, theirs = _uniforms(jax.random.key(11), jax.random.PRNGKey(12))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    big = _bits(ours[2])
    assert len(np.unique(big)) > 20000 and float(np.min(ours[2])) >= 0 and float(np.max(ours[2])) < 1


def test_other_prngs_fall_back_to_jax_random():
    key = jax.random.key(4, impl="rbg")
    assert threefry.threefry_data(key[None]) is None
    np.testing.assert_array_equal(_bits(threefry.uniform_draws(key, 9)), _bits(jax.random.uniform(key, (9,))))


@jax.jit
def _folds(keys, raw, data):
    """(ours, jax.random's): typed keys [50], one typed key folded per row (`row_keys`), raw keys [50, 2]."""
    one = jax.vmap(jax.random.fold_in, (None, 0))
    ours = [threefry.fold_in(keys, data), mixing.row_keys(keys[0], data), threefry.fold_in(raw, data)]
    theirs = [jax.vmap(jax.random.fold_in)(keys, data), one(keys[0], data), jax.vmap(jax.random.fold_in)(raw, data)]
    as_data = lambda keys: [jax.random.key_data(k) for k in keys[:2]] + keys[2:]  # noqa: E731
    return as_data(ours), as_data(theirs)


def test_fold_in_is_jax_random_fold_in_bit_for_bit():
    data = jnp.arange(50, dtype=jnp.int32) * 7919
    ours, theirs = _folds(jax.random.split(jax.random.key(3), 50), jax.random.split(jax.random.PRNGKey(3), 50), data)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(np.unique(np.asarray(ours[1])[:, 1])) == 50


def test_split_is_jax_random_split_bit_for_bit():
    for key in (jax.random.key(21), jax.random.PRNGKey(21)):
        for num in (2, 3):
            ours, theirs = jax.jit(threefry.split, static_argnums=1)(key, num), jax.random.split(key, num)
            if jnp.issubdtype(theirs.dtype, jax.dtypes.prng_key):
                ours, theirs = jax.random.key_data(ours), jax.random.key_data(theirs)
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
