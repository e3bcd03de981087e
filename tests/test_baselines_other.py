"""DropQuery, CDAL and Adversarial DeepFool: invariants, and known answers
against NumPy float64 references written from the papers / the original code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import count_compiles, make_pool

from alfamix_jax import LinearHead
from alfamix_jax.strategies import PoolView
from alfamix_jax.strategies.baselines import cdal, deepfool, dropquery

# DropQuery compiles k-means (the slow part), so every DropQuery test shares one
# strategy and one pool shape: N=200, D=64, C=2, budget 5.
DQ_N, DQ_D, DQ_BUDGET = 200, 64, 5


def make_view(x, labels, head):
    x = jnp.asarray(x, jnp.float32)
    head = LinearHead(jnp.asarray(head.weight, jnp.float32), jnp.asarray(head.bias, jnp.float32))
    return PoolView(x, x @ head.weight.T + head.bias, jnp.asarray(labels, jnp.int32), head)


@pytest.fixture(scope="module")
def strategies():
    # Small blocks so the pools span several of them and the last one is shifted back.
    return {
        "dropquery": dropquery.make_dropquery(budget=DQ_BUDGET, num_classes=2, block_size=64),
        "cdal": cdal.make_cdal(budget=10, num_classes=5, block_size=64),
        "adversarial_deepfool": deepfool.make_adversarial_deepfool(budget=10, num_classes=5, block_size=64),
    }


def pool_for(name, seed):
    if name == "dropquery":
        return make_pool(seed, n=DQ_N, dim=DQ_D, num_classes=2, labelled=40, sep=0.3)
    return make_pool(seed, n=300, dim=16, num_classes=5, labelled=60)


# --- invariants ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["dropquery", "cdal", "adversarial_deepfool"])
def test_invariants_and_no_recompile(strategies, name):
    strategy = strategies[name]
    for seed in range(3):
        x, labels, _, head = pool_for(name, seed)
        view = make_view(x, labels, head)
        key = jax.random.key(seed)
        with count_compiles() as compiles:
            query = strategy.query(key, view)
        if seed > 0:
            assert compiles[0] == 0  # a new round (other labels, other values) reuses the program
        picked = np.asarray(query.selected)
        assert picked.dtype == np.int32 and picked.shape == (DQ_BUDGET if name == "dropquery" else 10,)
        assert len(np.unique(picked)) == picked.shape[0]
        assert np.all(labels[picked] == -1)
        again = strategy.query(key, view)
        np.testing.assert_array_equal(np.asarray(again.selected), picked)


# --- Adversarial DeepFool --------------------------------------------------------


def deepfool_reference(z, w, b, *, max_iter=50, overshoot=0.02, compat="default"):
    """DeepFool per row in float64 (Moosavi-Dezfooli et al. 2016, Alg. 2, with
    LTS4's +1e-4 and overshoot; compat="reference": the ALFA-Mix original's
    loop, where the last class wins, no overshoot, squared norm)."""
    z, w, b = (np.asarray(a, np.float64) for a in (z, w, b))
    reference = compat == "reference"
    scale = 1.0 if reference else 1.0 + overshoot
    scores = []
    for x in z:
        f = w @ x + b
        p = int(np.argmax(f))
        r = np.zeros_like(x)
        i = 0
        while int(np.argmax(f)) == p and i < max_iter:
            chosen = None
            for k in range(len(b)):
                if k == p:
                    continue
                wk = w[k] - w[p]
                value = abs(f[k] - f[p]) / np.linalg.norm(wk)
                if reference or chosen is None or value < chosen[0]:
                    chosen = (value, wk)
            value, wk = chosen
            r += (value if reference else value + 1e-4) * wk / np.linalg.norm(wk)
            f = w @ (x + scale * r) + b
            i += 1
        total = scale * r
        scores.append(np.sum(total**2) if reference else np.linalg.norm(total))
    return np.array(scores)


def test_deepfool_picks_the_row_nearest_the_boundary():
    rng = np.random.default_rng(0)
    n, dim = 40, 8
    w = rng.normal(size=(2, dim))
    b = rng.normal(size=2)
    u = (w[1] - w[0]) / np.linalg.norm(w[1] - w[0])  # unit normal of the boundary f_1 = f_0
    base = rng.normal(size=(n, dim))
    base -= ((base @ (w[1] - w[0]) + b[1] - b[0]) / np.linalg.norm(w[1] - w[0]))[:, None] * u  # on the boundary
    dist = rng.uniform(0.5, 3.0, n)
    dist[17] = 0.01  # the obvious pick
    dist[3] = 0.001  # nearer still, but labelled
    x = base + (rng.choice([-1.0, 1.0], n) * dist)[:, None] * u
    labels = np.full(n, -1, np.int32)
    labels[[3, 8]] = [0, 1]
    head = LinearHead(w, b)
    view = make_view(x, labels, head)

    found = jax.jit(deepfool.deepfool_scores)(view.embeddings, view.head_params)
    expected = deepfool_reference(x, w, b)
    np.testing.assert_allclose(np.asarray(found.score), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(expected, 1.02 * (dist + 1e-4), rtol=1e-6)  # two classes: one exact step
    assert np.all(np.asarray(found.iterations) == 1) and np.all(np.asarray(found.flipped))

    strategy = deepfool.make_adversarial_deepfool(budget=3, num_classes=2)
    picked = np.asarray(strategy.query(jax.random.key(0), view).selected)
    assert picked[0] == 17
    unlabelled = np.flatnonzero(labels == -1)
    np.testing.assert_array_equal(picked, unlabelled[np.argsort(dist[unlabelled])[:3]])


@pytest.mark.parametrize("compat", ["default", "reference"])
def test_deepfool_scores_match_the_reference_on_five_classes(compat):
    x, labels, _, head = make_pool(3, n=120, dim=16, num_classes=5, labelled=20)
    view = make_view(x, labels, head)
    scores = jax.jit(deepfool.deepfool_scores, static_argnames=("compat", "block_size"))
    found = scores(view.embeddings, view.head_params, compat=compat, block_size=32)
    expected = deepfool_reference(x, np.asarray(head.weight), np.asarray(head.bias), compat=compat)
    np.testing.assert_allclose(np.asarray(found.score), expected, rtol=1e-4, atol=1e-6)
    if compat == "default":  # linear head: one step always crosses
        assert np.all(np.asarray(found.iterations) == 1)


def test_deepfool_reference_mode_steps_towards_the_last_class():
    # Class 1's boundary is nearest, but the original's loop steps towards class 2 (the last).
    w = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    b = np.array([0.0, -0.1, -1.0])  # at z = (0.2, 0): f = (0.2, -0.1, -1.2)
    z = np.array([[0.2, 0.0]])
    view = make_view(z, np.array([-1]), LinearHead(w, b))
    scores = jax.jit(deepfool.deepfool_scores, static_argnames=("compat",))
    default = scores(view.embeddings, view.head_params)
    reference = scores(view.embeddings, view.head_params, compat="reference")
    np.testing.assert_allclose(float(default.score[0]), 1.02 * (0.3 + 1e-4), rtol=1e-5)  # |0.2 + 0.1| / 1
    np.testing.assert_allclose(float(reference.score[0]), (1.4 / 2.0) ** 2, rtol=1e-4)  # (|0.2 + 1.2| / 2)^2


# --- CDAL ------------------------------------------------------------------------


def cdal_reference(logits, labels, budget, *, double_softmax=False):
    """The original's CDAL-CS (cdal_sampling.py + CDALModel.select_coreset) in float64."""
    def softmax(a):
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    probs = softmax(np.asarray(logits, np.float64))
    if double_softmax:
        probs = softmax(probs)
    unlabelled = np.flatnonzero(labels < 0)
    x, x_set = probs[unlabelled], probs[labels >= 0]

    def pairwise(a, b):
        dist = np.zeros((len(a), len(b)))
        for i, bi in enumerate(b):
            dist[:, i] = 0.5 * np.sum(a * np.log(a / bi), axis=1) + 0.5 * np.sum(bi * np.log(bi / a), axis=1)
        return dist

    min_dist = np.full(len(x), np.inf) if len(x_set) == 0 else pairwise(x, x_set).min(axis=1)
    picks = []
    for _ in range(budget):
        idx = int(min_dist.argmax())
        picks.append(idx)
        min_dist = np.minimum(min_dist, pairwise(x, x[[idx]])[:, 0])
    return unlabelled[picks]


@pytest.mark.parametrize("compat", ["default", "reference"])
def test_cdal_matches_the_reference_k_center(compat):
    strategy = cdal.make_cdal(budget=12, num_classes=4, compat=compat, block_size=32)
    for seed in range(2):
        x, labels, _, head = make_pool(10 + seed, n=150, dim=8, num_classes=4, labelled=25)
        view = make_view(x, labels, head)
        picked = np.asarray(strategy.query(jax.random.key(0), view).selected)
        expected = cdal_reference(np.asarray(view.logits), labels, 12, double_softmax=compat == "reference")
        np.testing.assert_array_equal(picked, expected)
    # Nothing labelled: every distance starts at +inf, so the first pick is the first row (as np.argmax).
    nothing = np.full(150, -1, np.int32)
    view = make_view(x, nothing, head)
    picked = np.asarray(strategy.query(jax.random.key(0), view).selected)
    assert picked[0] == 0
    np.testing.assert_array_equal(picked, cdal_reference(np.asarray(view.logits), nothing, 12,
                                                         double_softmax=compat == "reference"))


def test_cdal_distance_is_the_symmetric_kl_of_the_rows():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 6)) * 3
    labels = np.full(30, -1, np.int32)
    labels[[2, 11, 29]] = 0
    p, log_p = jax.jit(cdal.class_distributions)(jnp.asarray(logits, jnp.float32))
    got = jax.jit(cdal.distance_to_labelled, static_argnames=("block_size",))(
        p, log_p, jnp.asarray(labels >= 0), block_size=7)
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    kl = lambda a, c: np.sum(a * np.log(a / c), axis=-1)  # noqa: E731
    expected = np.min([0.5 * kl(q, q[j]) + 0.5 * kl(q[j], q) for j in (2, 11, 29)], axis=0)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-6)


# --- DropQuery -------------------------------------------------------------------


def dropquery_changes_reference(x, w, b, keep, rate):
    """How many dropout passes change the prediction, float64, given the keep-masks [P, N, D]."""
    x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
    y_star = np.argmax(x @ w.T + b, axis=1)
    preds = np.argmax((x * keep / (1.0 - rate)) @ w.T + b, axis=-1)  # [P, N]
    return np.sum(preds != y_star, axis=0)


def boundary_pool(seed, num_near):
    """Two classes with W = (+1, -1) * ones and b = 0: a far row has every
    coordinate of one sign, so no dropout mask short of dropping all 64 can
    flip it; a near row sums to about 0, so dropout flips it often."""
    rng = np.random.default_rng(seed)
    w = np.stack([np.ones(DQ_D), -np.ones(DQ_D)])
    far = rng.choice([-1.0, 1.0], (DQ_N, 1)) * rng.uniform(0.5, 2.0, (DQ_N, DQ_D))
    near = rng.normal(size=(DQ_N, DQ_D))
    near += -near.mean(axis=1, keepdims=True) + rng.choice([-0.01, 0.01], (DQ_N, 1))
    is_near = np.arange(DQ_N) < num_near
    x = np.where(is_near[:, None], near, far)
    labels = np.full(DQ_N, -1, np.int32)
    labels[rng.choice(DQ_N, 20, replace=False)] = 0
    return x, labels, LinearHead(w, np.zeros(2)), is_near


def test_dropquery_changes_match_the_reference_given_the_masks():
    x, labels, _, head = make_pool(5, n=150, dim=12, num_classes=4, labelled=20)
    key = jax.random.key(7)
    keep = np.asarray(jax.jit(dropquery.dropout_masks, static_argnums=2, static_argnames=("passes", "rate"))(
        key, jnp.arange(150), 12, passes=3, rate=0.75))
    assert keep.shape == (3, 150, 12) and 0.2 < keep.mean() < 0.3  # rate 0.75 drops three in four
    expected = dropquery_changes_reference(x, head.weight, head.bias, keep, 0.75)
    changes = jax.jit(dropquery.prediction_changes, static_argnames=("block_size",))
    for block_size in (32, 4096):  # the masks belong to rows, not blocks
        got = changes(key, jnp.asarray(x), head, block_size=block_size)
        np.testing.assert_array_equal(np.asarray(got), expected)
    assert 0 < np.sum(expected > 1) < 150  # the rule has something to separate


def test_dropquery_candidates_are_the_rows_near_the_boundary(strategies):
    strategy = strategies["dropquery"]
    x, labels, head, is_near = boundary_pool(0, num_near=100)
    view = make_view(x, labels, head)
    key = jax.random.key(3)
    mask_key = jax.random.split(key, 3)[0]  # the strategy's first sub-key draws the masks
    keep = np.asarray(jax.jit(dropquery.dropout_masks, static_argnums=2, static_argnames=("passes", "rate"))(
        mask_key, jnp.arange(DQ_N), DQ_D, passes=3, rate=0.75))
    changes = dropquery_changes_reference(x, head.weight, head.bias, keep, 0.75)
    assert np.all(changes[~is_near] == 0)  # far rows never change
    candidates = (changes >= 2) & (labels == -1)  # more than 3 // 2 of the 3 passes
    assert np.all(is_near[candidates]) and candidates.sum() > 3 * DQ_BUDGET

    query = strategy.query(key, view)
    assert int(query.diagnostics["num_candidates"]) == candidates.sum()
    assert int(query.diagnostics["num_filled"]) == 0
    picked = np.asarray(query.selected)
    assert np.all(candidates[picked])


def test_dropquery_fills_at_random_when_nothing_is_a_candidate(strategies):
    strategy = strategies["dropquery"]
    x, labels, head, _ = boundary_pool(1, num_near=0)  # only far rows: no candidates
    view = make_view(x, labels, head)
    query = strategy.query(jax.random.key(0), view)
    picked = np.asarray(query.selected)
    assert int(query.diagnostics["num_candidates"]) == 0 and int(query.diagnostics["num_filled"]) == DQ_BUDGET
    assert len(set(picked)) == DQ_BUDGET and np.all(labels[picked] == -1)
    other = np.asarray(strategy.query(jax.random.key(1), view).selected)
    assert set(other) != set(picked)  # the fill follows the key


# --- settings ----------------------------------------------------------------------


@pytest.mark.parametrize("factory,kwargs,match", [
    (dropquery.make_dropquery, dict(dropout_rate=1.0), "dropout_rate"),
    (dropquery.make_dropquery, dict(passes=0), "passes"),
    (cdal.make_cdal, dict(compat="torch"), "compat"),
    (deepfool.make_adversarial_deepfool, dict(max_iter=0), "max_iter"),
    (deepfool.make_adversarial_deepfool, dict(overshoot=-0.1), "overshoot"),
])
def test_bad_settings_are_rejected(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(budget=5, num_classes=3, **kwargs)


def test_registry_names_and_unknown_settings_are_ignored():
    for module, name in ((dropquery, "dropquery"), (cdal, "cdal"), (deepfool, "adversarial_deepfool")):
        strategy = module.STRATEGIES[name](budget=2, num_classes=3, alfamix=None, something_else=1)
        assert strategy.name == name and strategy.needs == frozenset()
