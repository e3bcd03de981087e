"""The default k-means seeding (alfamix_jax.selection.kmeans.sampled_kmeans_plus_plus: greedy
k-means++ over a uniform sample of 8 rows per centre, distances from the sample's Gram matrix):
distinct centres from the real rows (on a small prefix, the whole sample, and past the Gram
matrix's size limit), one result per key, and inertia after Lloyd within 1% of scikit-learn's
where the sample is smaller than the buffer. Its pieces: prefix sums, the Gram matrix over the
real rows. The exact seeding stays available (`seeding="exact"`)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from alfamix_jax import kmeans
from alfamix_jax.selection.kmeans import (
    _GRAM_MAX,
    _gram,
    _uniforms,
    prefix_rows,
    sample_size,
    sampled_kmeans_plus_plus,
    seeding_rows,
)
from alfamix_jax.selection.reductions import prefix_sums


@functools.partial(jax.jit, static_argnames=("k", "seeding"))
def kmeans_jit(key, x, n_valid, k, seeding="sample"):
    return kmeans(key, x, n_valid, k, block_size=512, seeding=seeding)


seed_jit = jax.jit(sampled_kmeans_plus_plus, static_argnames=("k", "sample"))


@functools.partial(jax.jit, static_argnames=("k", "seed_rows"))
def kmeans_sized(key, x, n_valid, k, seed_rows):
    return kmeans(key, x, n_valid, k, block_size=512, seed_rows=seed_rows)


def pool_rows(seed, n=10000, dim=32, classes=10):
    """Rows as the benchmark pool draws them (class means * 0.25 + unit noise), L2-normalised,
    as the selection clusters them."""
    rng = np.random.RandomState(seed)
    mu = rng.randn(classes, dim) * 0.25
    x = mu[rng.randint(0, classes, n)] + rng.randn(n, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_sample_is_smaller_than_the_buffer_here():
    assert sample_size(100) < 9000 < 10000


@pytest.mark.parametrize("n_valid,k,sample", [(9000, 100, None), (250, 60, None), (2500, 30, _GRAM_MAX + 1)],
                         ids=["sampled", "all-rows-on-a-prefix", "past-the-gram-limit"])
def test_k_distinct_centres_from_the_real_rows(n_valid, k, sample):
    x = pool_rows(0, n=10000 if sample is None else sample + 100, dim=32 if sample is None else 8)
    x[n_valid:] = 50.0  # far away: would be drawn first if rows past n_valid counted
    centres = np.asarray(seed_jit(jax.random.key(3), jnp.asarray(x), n_valid, k=k, sample=sample))
    assert centres.shape == (k, x.shape[1])
    rows = [np.flatnonzero(np.all(x[:n_valid] == c, axis=1)) for c in centres]
    assert all(len(r) == 1 for r in rows), "a centre that is not one real row"
    assert len({int(r[0]) for r in rows}) == k, "repeated centres"


def test_the_seeding_size_is_the_smallest_prefix_of_the_ladder_that_holds_the_rows():
    assert prefix_rows(40) == 256 and prefix_rows(500) == 1024
    assert [seeding_rows(n, 40, 2500) for n in (41, 256, 257, 384, 385, 513, 1100, 2048, 2049, 9000)] == [
        256, 256, 384, 384, 512, 768, 1536, 2048, 2560, 2560]  # past 2048: the whole sample, in tiles
    assert [seeding_rows(n, 500, 20000) for n in (570, 1000, 1100, 9000)] == [768, 1024, 1536, 8192]


def _loops(n_valid, rows, x):
    """Loops in the traced seeding (fori_loop traces to a scan or a while)."""
    fn = functools.partial(sampled_kmeans_plus_plus, k=40, rows=rows)
    text = str(jax.make_jaxpr(fn)(jax.random.key(2), x, jnp.int32(n_valid)))
    return text.count("scan[") + text.count("while[")


@pytest.mark.parametrize("n_valid", [41, 255, 256], ids=["few", "under", "at"])
def test_a_size_known_on_the_host_gives_the_prefix_bits_from_one_seeding(n_valid):
    """Up to 2k rows, the size the selector derives from its host count must give what the
    program's lax.cond gives (the prefix, bit for bit), with the sample's loops left out."""
    x = jnp.asarray(pool_rows(4, n=2500))
    rows = seeding_rows(n_valid, 40, 2500)
    both = seed_jit(jax.random.key(2), x, n_valid, k=40)
    known = jax.jit(functools.partial(sampled_kmeans_plus_plus, k=40, rows=rows))(jax.random.key(2), x, n_valid)
    np.testing.assert_array_equal(np.asarray(known), np.asarray(both))
    assert _loops(n_valid, rows, x) < _loops(n_valid, None, x)


@pytest.mark.parametrize("n_valid", [300, 700, 2400], ids=["prefix-384", "prefix-768", "sample"])
def test_past_2k_rows_a_known_size_seeds_as_well_on_fewer_rows(n_valid):
    """Past 2k rows the program's lax.cond seeds on the whole sample; a known size seeds on
    the smallest prefix of the ladder that holds the rows instead: k distinct real rows,
    whose inertia after Lloyd is as good (within 2% of the sample's, mean over 3 keys)."""
    x = pool_rows(5, n=2500)
    x[n_valid:] = 50.0  # far away: would be drawn if rows past n_valid counted
    rows = seeding_rows(n_valid, 40, 2500)
    known = functools.partial(sampled_kmeans_plus_plus, k=40, rows=rows)
    centres = np.asarray(jax.jit(known)(jax.random.key(3), jnp.asarray(x), n_valid))
    found = [np.flatnonzero(np.all(x[:n_valid] == c, axis=1)) for c in centres]
    assert all(len(r) == 1 for r in found) and len({int(r[0]) for r in found}) == 40
    if rows < 2560:
        assert _loops(n_valid, rows, jnp.asarray(x)) < _loops(n_valid, None, jnp.asarray(x))
    inertia = {size: np.mean([float(kmeans_sized(jax.random.key(s), jnp.asarray(x), n_valid, 40, size).inertia)
                              for s in range(3)]) for size in (rows, None)}
    assert inertia[rows] <= 1.02 * inertia[None], inertia


def test_same_key_same_centres_other_key_others():
    x = jnp.asarray(pool_rows(1, n=3000))
    a = np.asarray(seed_jit(jax.random.key(5), x, 2800, k=100))
    b = np.asarray(seed_jit(jax.random.key(5), x, 2800, k=100))
    c = np.asarray(seed_jit(jax.random.key(6), x, 2800, k=100))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_inertia_within_one_percent_of_scikit_learn():
    # 10,000 rows, k = 100: the seeding sees an 8192-row sample; Lloyd then sees every row.
    ours, theirs = [], []
    for seed in range(3):
        x = pool_rows(seed)
        ours.append(float(kmeans_jit(jax.random.key(seed), jnp.asarray(x), len(x), 100).inertia))
        theirs.append(KMeans(n_clusters=100, init="k-means++", n_init=1, random_state=seed).fit(x).inertia_)
    assert np.mean(ours) <= 1.01 * np.mean(theirs), (ours, theirs)


def test_exact_seeding_is_still_there():
    x = jnp.asarray(pool_rows(2, n=1000, dim=8))
    exact = jax.device_get(kmeans_jit(jax.random.key(0), x, 900, 20, seeding="exact"))
    sampled = jax.device_get(kmeans_jit(jax.random.key(0), x, 900, 20))
    assert np.all(np.asarray(exact.assignment)[900:] == -1) and int(exact.iterations) > 0
    assert float(exact.inertia) == pytest.approx(float(sampled.inertia), rel=0.05)
    with pytest.raises(ValueError, match="seeding"):
        kmeans(jax.random.key(0), x, 900, 20, seeding="kmeans||")


def test_uniforms_are_uniform_and_keyed():
    u = np.asarray(_uniforms(jax.random.key(0), 100_000))
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_allclose(np.histogram(u, bins=10, range=(0, 1))[0] / len(u), 0.1, atol=0.005)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    other = np.asarray(_uniforms(jax.random.key(1), 100_000))
    assert np.mean(u == other) < 0.001


def test_prefix_sums_are_cumsum():
    v = np.random.default_rng(0).uniform(size=1024).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(prefix_sums)(jnp.asarray(v))), np.cumsum(v, dtype=np.float64),
                               rtol=1e-5)


def test_the_gram_matrix_covers_the_real_rows():
    x = np.random.default_rng(1).normal(size=(512, 16)).astype(np.float32)
    g = np.asarray(jax.jit(_gram)(jnp.asarray(x), 300))
    np.testing.assert_allclose(g[:300, :300], x[:300] @ x[:300].T, rtol=1e-4, atol=1e-4)
    assert np.all(g[384:] == 0)  # panels of 128 rows past the real ones: not computed
