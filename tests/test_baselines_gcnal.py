"""GCNAL (alfamix_jax.strategies.baselines.gcnal): the factorised graph against the
original's dense `aff_to_adj` in NumPy float64, the GCN forward and loss, the
k-center against the original's `furthest_first`, the subset draw, the query's
invariants, known answers for CoreGCN and UncertainGCN, and no recompilation
when the labelled set changes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import count_compiles, make_pool

from alfamix_jax import LinearHead
from alfamix_jax.strategies import PoolView
from alfamix_jax.strategies.baselines import gcnal

# --- NumPy float64 references, written from the original (gcn_sampling.py, core_set.py) ---

def np_normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_aff_to_adj(x):
    """The original's aff_to_adj on the node features (rows already normalised)."""
    adj = x @ x.T
    adj += -1.0 * np.eye(adj.shape[0])
    adj_diag = np.sum(adj, axis=0)
    adj = adj @ np.diag(1 / adj_diag)
    return adj + np.eye(adj.shape[0])


def np_furthest_first(x, x_set, n):
    """The original's CoreSet.furthest_first (Euclidean distances, float64)."""
    def pairwise(a, b):
        return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))

    m = x.shape[0]
    min_dist = np.full(m, np.inf) if x_set.shape[0] == 0 else pairwise(x, x_set).min(axis=1)
    idxs = []
    for _ in range(n):
        idx = int(min_dist.argmax())
        idxs.append(idx)
        min_dist = np.minimum(min_dist, pairwise(x, x[[idx]])[:, 0])
    return idxs


def small_graph(seed, n=14, d=5):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, d)))  # post-ReLU-like: non-negative similarities
    nodes = rng.random(n) < 0.7
    nodes[:3] = True
    return x, nodes


def view_of(x, labels):
    n, d = x.shape
    return PoolView(jnp.asarray(x, jnp.float32), jnp.zeros((n, 3)), jnp.asarray(labels, jnp.int32),
                    LinearHead(jnp.zeros((3, d)), jnp.zeros(3)))


# --- the graph ---

@pytest.mark.parametrize("seed", range(3))
def test_adjacency_matches_original(seed):
    x, nodes = small_graph(seed)
    xn = np_normalise(x)
    ref = np_aff_to_adj(xn[nodes])  # [M, M]
    xj = gcnal.normalise_rows(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(xj), xn, rtol=1e-6, atol=1e-7)
    inv = gcnal.inverse_degrees(xj, jnp.asarray(nodes))
    # adj itself: adj @ I, read on the node rows and columns.
    dense = np.asarray(gcnal.propagate(xj, jnp.asarray(nodes), inv, jnp.eye(len(x))), np.float64)
    np.testing.assert_allclose(dense[np.ix_(nodes, nodes)], ref, rtol=1e-5, atol=1e-6)
    # adj @ h for a random h: the node rows equal the reference; the others are zero.
    h = np.random.default_rng(seed + 10).normal(size=(len(x), 3))
    out = np.asarray(gcnal.propagate(xj, jnp.asarray(nodes), inv, jnp.asarray(h, jnp.float32)))
    np.testing.assert_allclose(out[nodes], ref @ h[nodes], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[~nodes], 0.0)


def test_zero_degree_column_is_dropped():
    # Two orthogonal nodes: each column of X X^T - I sums to 0; the original divides by zero.
    x = jnp.eye(2, 3)
    nodes = jnp.array([True, True])
    inv = gcnal.inverse_degrees(x, nodes)
    np.testing.assert_array_equal(np.asarray(inv), 0.0)
    np.testing.assert_allclose(np.asarray(gcnal.propagate(x, nodes, inv, jnp.eye(2))), np.eye(2))


@pytest.mark.parametrize("seed", range(2))
def test_forward_and_loss_match_dense_reference(seed):
    x, nodes = small_graph(seed, n=16, d=6)
    xn = np_normalise(x)
    xj, nj = jnp.asarray(xn, jnp.float32), jnp.asarray(nodes)
    params = gcnal.init_gcn(jax.random.key(seed), 6, 8)
    inv = gcnal.inverse_degrees(xj, nj)
    z, feat = gcnal.gcn_forward(params, xj, gcnal.propagate(xj, nj, inv, xj), nj, inv)
    # The original's order: adj @ (x @ W1), then adj @ (feat @ w2).
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    adj = np_aff_to_adj(xn[nodes])
    ref_feat = np.maximum(adj @ (xn[nodes] @ p["w1"]) + p["b1"], 0.0)
    ref_z = (adj @ (ref_feat @ p["w2"]) + p["b2"])[:, 0]
    np.testing.assert_allclose(np.asarray(feat)[nodes], ref_feat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z)[nodes], ref_z, rtol=1e-4, atol=1e-5)
    # BCEAdjLoss: labelled = the first half of the nodes, unlabelled = the rest.
    node_idx = np.flatnonzero(nodes)
    lbl = np.zeros(len(x), bool)
    lbl[node_idx[: len(node_idx) // 2]] = True
    nlbl = nodes & ~lbl
    s = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
    ref_loss = -np.mean(np.log(s[lbl])) - 1.2 * np.mean(np.log(1 - s[nlbl]))
    loss = gcnal.bce_adj_loss(z, jnp.asarray(lbl), jnp.asarray(nlbl), 1.2)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)


# --- k-center and the subset ---

@pytest.mark.parametrize("seed,block_size,num_centres", [(0, 3, 7), (1, 64, 7), (2, 4, 0)])
def test_furthest_first_matches_original(seed, block_size, num_centres):
    rng = np.random.default_rng(seed)
    sub = rng.normal(size=(20, 4))
    pool = rng.normal(size=(25, 4))
    centres = np.zeros(25, bool)
    centres[rng.choice(25, num_centres, replace=False)] = True
    valid = np.ones(20, bool)
    picks = gcnal.furthest_first(jnp.asarray(sub, jnp.float32), jnp.asarray(valid), jnp.asarray(pool, jnp.float32),
                                 jnp.asarray(centres), 6, block_size=block_size)
    assert np.asarray(picks).tolist() == np_furthest_first(sub, pool[centres], 6)


def test_furthest_first_skips_invalid_rows():
    rng = np.random.default_rng(3)
    sub = rng.normal(size=(10, 3))
    sub[0] = 100.0  # farthest, but not a real subset row
    valid = np.arange(10) != 0
    picks = gcnal.furthest_first(jnp.asarray(sub, jnp.float32), jnp.asarray(valid), jnp.asarray(sub, jnp.float32),
                                 jnp.zeros(10, bool), 9)
    assert sorted(np.asarray(picks).tolist()) == list(range(1, 10))


def test_subset_masks_when_few_unlabelled():
    labels = np.full(30, 2, np.int32)
    labels[[3, 7, 11, 29]] = -1
    idx, valid = gcnal.sample_subset(jax.random.key(0), jnp.asarray(labels), 10)
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert idx.shape == (10,) and len(set(idx.tolist())) == 10
    assert sorted(idx[valid].tolist()) == [3, 7, 11, 29]
    assert np.all(labels[idx[~valid]] >= 0)


# --- the query ---
# One pool shape (N=120, D=16), one budget and one set of settings for every
# query test below, so each method compiles once (a compile is ~3 s of CPU).
# The GCN settings are the original's (200 Adam steps at lr 1e-3, hidden 128):
# at N=120 they run in milliseconds, and 50 steps leave every score near 0.5.
N, DIM, BUDGET = 120, 16, 10
SETTINGS = dict(subset_size=60)


@functools.cache
def strategy(method):
    return gcnal.make_gcnal(budget=BUDGET, num_classes=3, method=method, **SETTINGS)


def random_pool(seed, labelled):
    x, labels, _, _ = make_pool(seed, n=N, dim=DIM, num_classes=3, labelled=labelled)
    return x, labels


@pytest.mark.parametrize("method,labelled", [("core", 30), ("uncertain", 30), ("core", 80), ("uncertain", 80)])
def test_invariants(method, labelled):
    # 90 unlabelled rows: a random subset of 60; 40 unlabelled: all of them, the rest of the subset masked.
    x, labels = random_pool(0, labelled)
    view = view_of(x, labels)
    query = strategy(method).query
    a = np.asarray(query(jax.random.key(1), view).selected)
    b = np.asarray(query(jax.random.key(1), view).selected)
    c = np.asarray(query(jax.random.key(2), view).selected)
    assert a.shape == (BUDGET,) and a.dtype == np.int32
    assert len(set(a.tolist())) == BUDGET
    assert np.all(labels[a] == -1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def copies_and_cluster(seed, *, cluster=BUDGET):
    """60 labelled rows near e0, an unlabelled exact copy of each of the first
    50, and an unlabelled cluster near e1 (nearly orthogonal: its own part of
    the graph). The 60 unlabelled rows all fit in the subset.
    -> x [N, DIM], labels [N], the cluster's rows."""
    labelled, copies = N - SETTINGS["subset_size"], SETTINGS["subset_size"] - cluster
    rng = np.random.default_rng(seed)
    lab = np.abs(0.2 * rng.normal(size=(labelled, DIM)))
    lab[:, 0] += 3.0
    far = np.abs(0.2 * rng.normal(size=(cluster, DIM)))
    far[:, 1] += 3.0
    x = np.concatenate([lab, lab[:copies], far]).astype(np.float32)
    labels = np.concatenate([np.arange(labelled) % 3, np.full(copies + cluster, -1)]).astype(np.int32)
    return x, labels, np.arange(labelled + copies, N)


@pytest.mark.parametrize("seed", range(2))
def test_coregcn_picks_the_separate_cluster(seed):
    # A copy of a labelled row has the same GCN features as its original
    # (distance 0 to a centre); every cluster row is farther, so k-center takes them all.
    x, labels, far = copies_and_cluster(seed)
    picks = np.asarray(strategy("core").query(jax.random.key(seed), view_of(x, labels)).selected)
    assert sorted(picks.tolist()) == far.tolist()


@functools.partial(jax.jit, static_argnames="settings")
def gcn_scores(key, x, labels, settings):
    """The query's graph rows, which are the subset's, and eval-mode scores, recomputed
    from its keys (at N = 120 the graph has one capacity, the pool size)."""
    settings = dict(settings)
    subset_key, gcn_key = jax.random.split(key)
    idx, valid = gcnal.sample_subset(subset_key, labels, settings.pop("subset_size"))
    (capacity,) = gcnal.node_capacities(labels.shape[0], idx.shape[0])
    rows, unl, lab = gcnal.graph_nodes(idx, valid, labels, capacity)
    z, _, _ = gcnal.train_gcn(gcn_key, gcnal.normalise_rows(x[rows]), lab, unl, **settings)
    return rows, unl, jax.nn.sigmoid(z)


@pytest.mark.parametrize("seed", range(2))
def test_uncertaingcn_picks_rows_closest_to_the_margin(seed):
    x, labels, far = copies_and_cluster(seed)
    key = jax.random.key(seed)
    picks = np.asarray(strategy("uncertain").query(key, view_of(x, labels)).selected)
    # The original's rule on the same scores: argsort(-|s - s_margin|)[-n:] over the subset.
    rows, unl, s = gcn_scores(key, jnp.asarray(x), jnp.asarray(labels), tuple(sorted(SETTINGS.items())))
    idx = np.asarray(rows)[np.asarray(unl)]
    s = np.asarray(s, np.float64)[np.asarray(unl)]
    ref = idx[np.argsort(-np.abs(s - 0.1))[-BUDGET:]]
    assert sorted(picks.tolist()) == sorted(ref.tolist())
    # The known answer: a copy of a labelled row cannot be told from it (its
    # score is pulled towards 1); the separate cluster is confidently unlabelled.
    copies = ~np.isin(idx, far)
    assert s[~copies].max() < 0.1 and s[copies].min() > 0.3
    assert sorted(picks.tolist()) == far.tolist()


def test_no_recompile_when_labelled_set_changes():
    x, labels = random_pool(1, 30)
    query = strategy("core").query
    first = np.asarray(query(jax.random.key(0), view_of(x, labels)).selected)
    labels2 = labels.copy()
    labels2[first] = 0
    with count_compiles() as compiles:
        second = np.asarray(query(jax.random.key(1), view_of(x, labels2)).selected)
    assert compiles[0] == 0
    assert np.all(labels2[second] == -1)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="subset_size"):
        gcnal.make_gcnal(budget=20, subset_size=10)
    with pytest.raises(ValueError, match="method"):
        gcnal.make_gcnal(budget=2, method="coregcn")
    assert gcnal.STRATEGIES["gcnal_uncertain"](budget=3, num_classes=4).name == "gcnal_uncertain"
    assert gcnal.STRATEGIES["gcnal"](budget=3, num_classes=4, unknown_setting=1).name == "gcnal"


# --- the graph: the subset and the labelled rows, never the rest of the pool ---

def test_node_capacities():
    # The paper's subset (10000) on a 60k pool: room for 1024, 4096, 16384 labelled rows, then the pool.
    assert gcnal.node_capacities(60000, 10000) == (11024, 14096, 26384, 60000)
    assert gcnal.node_capacities(120, 60) == (120,)


def test_graph_holds_the_subset_and_every_labelled_row():
    x, labels = random_pool(3, 30)
    idx, valid = gcnal.sample_subset(jax.random.key(0), jnp.asarray(labels), 50)
    rows, unl, lab = (np.asarray(v) for v in gcnal.graph_nodes(idx, valid, jnp.asarray(labels), 100))
    assert rows.shape == unl.shape == lab.shape == (100,)
    np.testing.assert_array_equal(rows[unl], np.asarray(idx)[np.asarray(valid)])  # the subset, in its order
    np.testing.assert_array_equal(rows[lab], np.flatnonzero(labels >= 0))  # every labelled row
    assert unl.sum() == 50 and lab.sum() == 30 and not (unl & lab).any()
    assert not (unl | lab)[80:].any()  # padding


def test_rows_outside_the_graph_do_not_matter():
    # 90 unlabelled rows, a subset of 60: the other 30 never enter the graph.
    x, labels = random_pool(4, 30)
    key = jax.random.key(5)
    idx, valid = gcnal.sample_subset(jax.random.split(key)[0], jnp.asarray(labels), SETTINGS["subset_size"])
    outside = (labels < 0) & ~np.isin(np.arange(N), np.asarray(idx)[np.asarray(valid)])
    assert outside.sum() == 30
    moved = x.copy()
    moved[outside] = 50.0 * np.random.default_rng(0).normal(size=(30, DIM))
    for method in ("core", "uncertain"):
        a = np.asarray(strategy(method).query(key, view_of(x, labels)).selected)
        b = np.asarray(strategy(method).query(key, view_of(moved, labels)).selected)
        np.testing.assert_array_equal(a, b)
        assert not outside[a].any()


def test_graph_size_follows_the_labelled_rows(monkeypatch):
    # Room for 32 * 4^k labelled rows: graphs of 52 rows, then the pool (120), one branch each.
    monkeypatch.setattr(gcnal, "LABELLED_BLOCK", 32)
    sizes, train = [], gcnal.train_gcn

    def spy(key, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return train(key, x, *args, **kwargs)

    monkeypatch.setattr(gcnal, "train_gcn", spy)
    query = gcnal.make_gcnal(budget=4, num_classes=3, method="uncertain", subset_size=20, train_steps=5).query
    for labelled in (5, 70):  # the graph needs 25 rows, then 90
        x, labels = random_pool(6, labelled)
        a = np.asarray(query(jax.random.key(labelled), view_of(x, labels)).selected)
        assert len(set(a.tolist())) == 4 and np.all(labels[a] == -1)
        np.testing.assert_array_equal(a, np.asarray(query(jax.random.key(labelled), view_of(x, labels)).selected))
    assert sorted(sizes) == [52, 120]  # traced once per capacity; a few labelled rows never need the pool


def test_graph_matches_the_node_mask_over_the_pool():
    # Gathering the nodes changes nothing but the order of sums: the GCN on the compact
    # graph equals the GCN over the whole pool with non-nodes masked (no dropout).
    x, labels = random_pool(7, 30)
    idx, valid = gcnal.sample_subset(jax.random.key(1), jnp.asarray(labels), 40)
    rows, unl, lab = gcnal.graph_nodes(idx, valid, jnp.asarray(labels), N)  # 70 nodes, 50 rows of padding
    train = jax.jit(functools.partial(gcnal.train_gcn, dropout_rate=0.0, train_steps=20))  # one shape: one compile
    z_graph, _, _ = train(jax.random.key(2), gcnal.normalise_rows(jnp.asarray(x)[rows]), lab, unl)
    pool_unl = jnp.zeros(N, bool).at[idx].set(valid)
    z_pool, _, _ = train(jax.random.key(2), gcnal.normalise_rows(jnp.asarray(x)), jnp.asarray(labels) >= 0, pool_unl)
    nodes = np.asarray(unl | lab)
    np.testing.assert_allclose(np.asarray(z_graph)[nodes], np.asarray(z_pool)[np.asarray(rows)[nodes]], atol=1e-4)
