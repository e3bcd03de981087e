"""The diversity baselines (alfamix_jax.strategies.baselines.coreset, .badge): the
strategy invariants, known answers on constructed pools, NumPy float64
references written from the papers, and that neither ever holds an N x N
(or [N, C*D]) array."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import make_pool

from alfamix_jax import LinearHead
from alfamix_jax.strategies import PoolView
from alfamix_jax.strategies.baselines import badge, coreset
from alfamix_jax.strategies.baselines.badge import gradient_factors, make_badge, sq_dists_to_row
from alfamix_jax.strategies.baselines.coreset import greedy_k_center, make_coreset

FACTORIES = {"coreset": make_coreset, "badge": make_badge}


def pool_view(x, labels, head):
    x = jnp.asarray(x)
    logits = x @ head.weight.T + head.bias
    return PoolView(x, logits, jnp.asarray(labels), head)


def view_of(embeddings, logits, labels):
    embeddings, logits = jnp.asarray(embeddings, jnp.float32), jnp.asarray(logits, jnp.float32)
    n, c = logits.shape
    head = LinearHead(jnp.zeros((c, embeddings.shape[1])), jnp.zeros((c,)))
    return PoolView(embeddings, logits, jnp.asarray(labels, jnp.int32), head)


# ---------------------------------------------------------------- NumPy references (float64)

def np_greedy_k_center(x, labels, budget):
    """Sener & Savarese's greedy k-center: labelled rows are the centres; add
    the unlabelled row farthest from its nearest centre, B times (lowest index on ties)."""
    x = np.asarray(x, np.float64)
    lab = labels >= 0
    if lab.any():
        d = ((x[:, None, :] - x[None, lab, :]) ** 2).sum(-1)
        min_dist = d.min(axis=1)
    else:
        min_dist = np.full(len(x), np.inf)
    min_dist[lab] = -np.inf
    picks = []
    for _ in range(budget):
        i = int(np.argmax(min_dist))
        picks.append(i)
        min_dist = np.minimum(min_dist, ((x - x[i]) ** 2).sum(-1))
        min_dist[i] = -np.inf
    return np.array(picks)


def np_grad_embeddings(logits, z, include_bias=False):
    """BADGE's explicit [N, C*D] embedding: (p - onehot(argmax p)) (x) z (+ the bias gradient)."""
    logits, z = np.asarray(logits, np.float64), np.asarray(z, np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    a = p - np.eye(p.shape[1])[p.argmax(1)]
    g = (a[:, :, None] * z[:, None, :]).reshape(len(z), -1)
    return np.concatenate([g, a], axis=1) if include_bias else g


# ---------------------------------------------------------------- invariants

@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("seed,labelled,budget", [(0, 60, 25), (1, 1, 40), (2, 0, 10), (3, 280, 20)])
def test_invariants(name, seed, labelled, budget):
    x, labels, _, head = make_pool(seed, n=300, dim=16, num_classes=5, labelled=labelled)
    strategy = FACTORIES[name](budget=budget, num_classes=5, block_size=64, unknown_setting=1)
    assert strategy.name == name
    view = pool_view(x, labels, head)
    key = jax.random.key(seed)
    picks = np.asarray(strategy.query(key, view).selected)
    assert picks.shape == (budget,) and picks.dtype == np.int32
    assert len(np.unique(picks)) == budget
    assert np.all(labels[picks] == -1)
    again = np.asarray(strategy.query(key, view).selected)
    np.testing.assert_array_equal(picks, again)


def test_registries():
    assert set(coreset.STRATEGIES) == {"coreset"} and set(badge.STRATEGIES) == {"badge"}
    for factory in (make_coreset, make_badge):
        with pytest.raises(ValueError, match="budget"):
            factory(budget=0, num_classes=3)


def test_badge_key_matters():
    x, labels, _, head = make_pool(4, n=300, labelled=30)
    query = make_badge(budget=20, num_classes=5).query
    view = pool_view(x, labels, head)
    runs = {tuple(np.asarray(query(jax.random.key(k), view).selected)) for k in range(4)}
    assert len(runs) > 1


# ---------------------------------------------------------------- CoreSet

def test_coreset_picks_far_outlier_first():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    x[37] += 50.0
    labels = np.full(100, -1, np.int32)
    labels[:10] = 0
    picks = np.asarray(make_coreset(budget=3).query(jax.random.key(0), view_of(x, np.zeros((100, 2)), labels)).selected)
    assert picks[0] == 37


def test_coreset_line_midpoint():
    # Points 0..10 on a line, the ends labelled: the midpoint first, then the
    # lowest-index row among the tied next-farthest (x = 2, 3, 7, 8 all at distance 2).
    x = np.zeros((11, 3), np.float32)
    x[:, 0] = np.arange(11)
    labels = np.full(11, -1, np.int32)
    labels[[0, 10]] = 1
    picks = np.asarray(make_coreset(budget=2).query(jax.random.key(0), view_of(x, np.zeros((11, 2)), labels)).selected)
    np.testing.assert_array_equal(picks, [5, 2])


@pytest.mark.parametrize("seed,labelled,block_size",
                         [(0, 37, 64), (1, 0, 64), (2, 150, 4096), (3, 1, 7), (4, 400, 128)])
def test_coreset_matches_numpy(seed, labelled, block_size):
    rng = np.random.default_rng(seed)
    n = 500
    # Offset from the origin like post-ReLU features.
    x = (rng.normal(size=(n, 12)) + 3.0).astype(np.float32)
    labels = np.full(n, -1, np.int32)
    labels[rng.choice(n, labelled, replace=False)] = 0
    budget = 40
    got = np.asarray(jax.jit(greedy_k_center, static_argnums=2, static_argnames="block_size")(
        jnp.asarray(x), jnp.asarray(labels), budget, block_size=block_size))
    np.testing.assert_array_equal(got, np_greedy_k_center(x, labels, budget))


def test_coreset_labelled_min_dists_match_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 10)).astype(np.float32)
    lab = rng.random(300) < 0.3
    got = np.asarray(coreset.labelled_min_sq_dists(jnp.asarray(x), jnp.asarray(lab), block_size=32))
    want = ((x[:, None, :].astype(np.float64) - x[None, lab, :]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- BADGE

@pytest.mark.parametrize("include_bias", [False, True])
def test_badge_factorised_distances_match_explicit(include_bias):
    rng = np.random.default_rng(6)
    n, c, d = 60, 4, 7
    z = rng.normal(size=(n, d)).astype(np.float32)
    logits = (2.0 * rng.normal(size=(n, c))).astype(np.float32)
    z[5], logits[5] = z[3], logits[3]  # an exact duplicate: distance 0
    g = np_grad_embeddings(logits, z, include_bias)
    a, zz, sq_a, sq_z = gradient_factors(jnp.asarray(logits), jnp.asarray(z), include_bias=include_bias)
    np.testing.assert_allclose(np.asarray(sq_a * sq_z), (g**2).sum(1), rtol=1e-5, atol=1e-6)
    for centre in (0, 3, 17, 59):
        got = np.asarray(sq_dists_to_row(a, zz, sq_z, centre, include_bias=include_bias))
        want = ((g - g[centre]) ** 2).sum(1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(sq_dists_to_row(a, zz, sq_z, 3, include_bias=include_bias)[5]) == 0.0


def test_badge_first_pick_is_largest_gradient_norm():
    x, labels, _, head = make_pool(7, n=200, labelled=50)
    view = pool_view(x, labels, head)
    g = np_grad_embeddings(np.asarray(view.logits), x)
    norms = np.where(labels < 0, (g**2).sum(1), -np.inf)
    picks = np.asarray(make_badge(budget=5, num_classes=5).query(jax.random.key(0), view).selected)
    assert picks[0] == np.argmax(norms)


def test_badge_forced_second_pick():
    # Every unlabelled row has the same gradient embedding but row 9, whose
    # norm is smaller (a more confident prediction). The first pick is the
    # lowest-index unlabelled row (largest norm, tie); then all others are at
    # distance 0, so D^2 sampling must take row 9; then every distance is 0
    # and the third is uniform among the rest.
    n = 12
    z = np.tile([[1.0, 2.0, -1.0]], (n, 1))
    logits = np.tile([[1.0, 0.5, 0.0]], (n, 1))
    logits[9] = [5.0, 0.0, 0.0]
    labels = np.full(n, -1, np.int32)
    labels[[0, 1]] = 2
    view = view_of(z, logits, labels)
    query = make_badge(budget=3, num_classes=3).query
    thirds = set()
    for k in range(8):
        picks = np.asarray(query(jax.random.key(k), view).selected)
        assert picks[0] == 2 and picks[1] == 9
        thirds.add(int(picks[2]))
    assert thirds <= set(range(3, 12)) - {9} and len(thirds) > 1


def test_badge_second_pick_follows_d2_distribution():
    # Four unlabelled rows; the second pick's frequencies over 4000 keys
    # against the exact D^2 distribution from the explicit embeddings.
    rng = np.random.default_rng(8)
    z = rng.normal(size=(6, 3)).astype(np.float32)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, -1, -1, 1, -1, -1], np.int32)
    g = np_grad_embeddings(logits, z)
    unl = labels < 0
    first = int(np.argmax(np.where(unl, (g**2).sum(1), -np.inf)))
    w = np.where(unl, ((g - g[first]) ** 2).sum(1), 0.0)
    w[first] = 0.0
    want = w / w.sum()
    query = make_badge(budget=2, num_classes=4).query
    view = view_of(z, logits, labels)
    keys = jax.random.split(jax.random.key(0), 4000)
    picks = np.asarray(jax.vmap(lambda k: query(k, view).selected)(keys))
    assert np.all(picks[:, 0] == first)
    freq = np.bincount(picks[:, 1], minlength=6) / len(keys)
    np.testing.assert_allclose(freq, want, atol=0.03)  # 4 sigma at p = 1/2 is 0.032


# ---------------------------------------------------------------- memory: never N x N

def _largest_intermediate(jaxpr):
    """Largest number of elements in any value of a jaxpr, sub-jaxprs included."""
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()), dtype=np.int64)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    biggest = max(biggest, _largest_intermediate(getattr(inner, "jaxpr", inner)))
    return biggest


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_n_by_n(name):
    n, d, c = 20000, 32, 10
    view = PoolView(jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((n, c), jnp.float32),
                    jax.ShapeDtypeStruct((n,), jnp.int32),
                    LinearHead(jax.ShapeDtypeStruct((c, d), jnp.float32), jax.ShapeDtypeStruct((c,), jnp.float32)))
    query = FACTORIES[name](budget=100, num_classes=c, block_size=1024).query
    key = jax.random.key(0)
    largest = _largest_intermediate(jax.make_jaxpr(query)(key, view).jaxpr)
    assert largest <= max(n * d, 1024 * 1024), largest  # never N x N nor [N, C*D]
    stats = query.lower(key, view).compile().memory_analysis()
    if stats is not None:
        assert stats.temp_size_in_bytes < n * n * 4 / 50, stats.temp_size_in_bytes
