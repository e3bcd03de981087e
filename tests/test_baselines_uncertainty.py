"""Margin, least confidence and BALD against float64 NumPy references and on constructed cases
where the right pick is obvious; the strategy invariants; Trainer.mc_logits (MC dropout with
BatchNorm on running averages)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from support import count_compiles

from alfamix_jax.experiment.models import make_model
from alfamix_jax.experiment.training import TrainConfig, make_trainer
from alfamix_jax.selection.heads import LinearHead
from alfamix_jax.strategies import PoolView, make_entropy
from alfamix_jax.strategies.baselines.uncertainty import (
    STRATEGIES,
    bald_scores,
    least_confidence_scores,
    make_bald,
    make_least_confidence,
    make_margin,
    margin_scores,
)

# ---- float64 NumPy references, written from the definitions ---------------------------------


def np_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def np_margin(logits):  # -(p_(1) - p_(2))
    p = np.sort(np_softmax(np.asarray(logits, np.float64)), axis=-1)
    return -(p[:, -1] - p[:, -2])


def np_least_confidence(logits):  # -max p
    return -np_softmax(np.asarray(logits, np.float64)).max(axis=-1)


def np_bald(mc_logits):  # H(mean_t p_t) - mean_t H(p_t)
    p = np_softmax(np.asarray(mc_logits, np.float64))  # [T, N, C]
    return np_entropy(p.mean(axis=0)) - np_entropy(p).mean(axis=0)


def np_select(score, labels, budget):
    """Top-`budget` unlabelled rows by score, ties to the lower index."""
    score = np.where(labels >= 0, -np.inf, score)
    return np.argsort(-score, kind="stable")[:budget]


# ---- helpers --------------------------------------------------------------------------------

N, C, D, T = 300, 7, 8, 6


def _view(seed, *, n=N, labelled=80, passes=T, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = scale * rng.normal(size=(n, C))
    mc = logits + scale * rng.normal(size=(passes, n, C))
    labels = np.full(n, -1, np.int32)
    chosen = rng.choice(n, labelled, replace=False)
    labels[chosen] = rng.integers(0, C, labelled)
    head = LinearHead(jnp.zeros((C, D)), jnp.zeros(C))
    view = PoolView(jnp.zeros((n, D)), jnp.asarray(logits, jnp.float32), jnp.asarray(labels), head,
                    jnp.asarray(mc, jnp.float32))
    return view, logits, mc, labels


def _view_from(logits, labels=None, mc=None):
    logits = np.asarray(logits, np.float32)
    n = logits.shape[0]
    labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    head = LinearHead(jnp.zeros((logits.shape[1], 2)), jnp.zeros(logits.shape[1]))
    return PoolView(jnp.zeros((n, 2)), jnp.asarray(logits), jnp.asarray(labels), head,
                    None if mc is None else jnp.asarray(mc, jnp.float32))


FACTORIES = {"margin": make_margin, "least_confidence": make_least_confidence, "bald": make_bald}
REFERENCES = {
    "margin": lambda logits, mc: np_margin(logits),
    "least_confidence": lambda logits, mc: np_least_confidence(logits),
    "bald": lambda logits, mc: np_bald(mc),
}


def test_registry():
    assert STRATEGIES == FACTORIES
    bald = make_bald(budget=3, num_classes=C)
    assert bald.name == "bald" and bald.needs == frozenset({"mc_logits"}) and bald.mc_passes == 5
    assert make_bald(budget=3, num_classes=C, passes=10, block_size=7, unknown=1).mc_passes == 10
    for name in ("margin", "least_confidence"):
        strategy = STRATEGIES[name](budget=3, num_classes=C, passes=4)
        assert strategy.name == name and strategy.needs == frozenset() and strategy.mc_passes == 0


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bald_rejects_bad_passes(bad):
    with pytest.raises(ValueError, match="passes"):
        make_bald(budget=3, num_classes=C, passes=bad)


def test_bald_needs_mc_logits():
    view, *_ = _view(0)
    with pytest.raises(ValueError, match="mc_logits"):
        make_bald(budget=3, num_classes=C).query(jax.random.key(0), view._replace(mc_logits=None))


# ---- scores and selections against the float64 references ----------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_numpy_reference(seed):
    view, logits, mc, _ = _view(seed)
    np.testing.assert_allclose(margin_scores(view.logits), np_margin(logits), atol=2e-6)
    np.testing.assert_allclose(least_confidence_scores(view.logits), np_least_confidence(logits), atol=2e-6)
    np.testing.assert_allclose(bald_scores(view.mc_logits), np_bald(mc), atol=2e-5)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_invariants_and_reference_selection(name, seed):
    budget = 25
    view, logits, mc, labels = _view(seed)
    strategy = FACTORIES[name](budget=budget, num_classes=C, passes=T)
    selected = np.asarray(strategy.query(jax.random.key(seed), view).selected)
    assert selected.dtype == np.int32 and selected.shape == (budget,)
    assert len(set(selected.tolist())) == budget
    assert np.all(labels[selected] == -1)
    again = np.asarray(strategy.query(jax.random.key(seed), view).selected)
    np.testing.assert_array_equal(selected, again)
    # Deterministic scores: the pick does not depend on the key, and it is the reference's.
    other = np.asarray(strategy.query(jax.random.key(seed + 100), view).selected)
    np.testing.assert_array_equal(selected, other)
    np.testing.assert_array_equal(selected, np_select(REFERENCES[name](logits, mc), labels, budget))


def test_labels_change_without_recompiling():
    view, *_ = _view(0)
    strategy = make_bald(budget=10, num_classes=C, passes=T)
    strategy.query(jax.random.key(0), view)
    labels = np.asarray(view.labels).copy()
    with count_compiles() as compiles:
        for round_ in range(3):
            labels[np.flatnonzero(labels < 0)[:10]] = round_ % C
            strategy.query(jax.random.key(round_), view._replace(labels=jnp.asarray(labels)))
    assert compiles[0] == 0


# ---- known answers --------------------------------------------------------------------------

# Row 0: a clear winner; 1: the top two tied (margin 0, max .45); 2: the flattest max (.4, margin
# .1); 3: confident. Margin picks 1, least confidence picks 2.
PROBS = np.array([[0.70, 0.20, 0.10], [0.45, 0.45, 0.10], [0.40, 0.30, 0.30], [0.90, 0.05, 0.05]])


def test_margin_picks_the_tied_top_two():
    logits = np.log(PROBS)
    view = _view_from(logits)
    assert make_margin(budget=1, num_classes=3).query(jax.random.key(0), view).selected.tolist() == [1]
    np.testing.assert_allclose(margin_scores(view.logits), [-0.5, 0.0, -0.1, -0.85], atol=1e-6)
    np.testing.assert_allclose(margin_scores(view.logits), np_margin(logits), atol=1e-6)
    # With row 1 labelled the next smallest margin is row 2's.
    view = _view_from(logits, labels=[-1, 0, -1, -1])
    assert make_margin(budget=1, num_classes=3).query(jax.random.key(0), view).selected.tolist() == [2]


def test_least_confidence_picks_the_flattest_max():
    logits = np.log(PROBS)
    view = _view_from(logits)
    assert make_least_confidence(budget=1, num_classes=3).query(jax.random.key(0), view).selected.tolist() == [2]
    assert make_least_confidence(budget=2, num_classes=3).query(jax.random.key(0), view).selected.tolist() == [2, 1]
    np.testing.assert_allclose(least_confidence_scores(view.logits), -PROBS.max(axis=1), atol=1e-6)


def test_bald_prefers_confident_disagreement_over_uniform_uncertainty():
    """Row 2's passes each say one class with p ~ 1 but disagree (MI = log 2); row 1 is uniform
    in every pass (MI = 0, yet the highest entropy). Entropy picks row 1, BALD row 2."""
    big = 30.0
    mc = np.zeros((2, 5, 2))
    mc[:, 0] = [big, 0.0]  # confident, agreeing: MI 0, entropy 0
    mc[:, 1] = [0.0, 0.0]  # uniform in every pass: MI 0, entropy log 2
    mc[0, 2], mc[1, 2] = [big, 0.0], [0.0, big]  # confident, disagreeing: MI log 2
    mc[0, 3], mc[1, 3] = [1.0, 0.0], [0.0, 1.0]  # mildly disagreeing: 0 < MI < log 2
    mc[:, 4] = [2.0, 0.0]  # agreeing, fairly sure: MI 0
    view = _view_from(mc.mean(axis=0), mc=mc)
    scores = np.asarray(bald_scores(view.mc_logits))
    np.testing.assert_allclose(scores, np_bald(mc), atol=1e-6)
    np.testing.assert_allclose(scores[2], np.log(2.0), atol=1e-6)
    assert scores[0] == scores[1] == scores[4] == 0.0  # exactly: the passes agree
    assert 0.0 < scores[3] < scores[2]
    bald = make_bald(budget=2, num_classes=2, passes=2)
    assert bald.query(jax.random.key(0), view).selected.tolist() == [2, 3]
    entropy = make_entropy(budget=1, num_classes=2)
    assert entropy.query(jax.random.key(0), view).selected.tolist() == [1]


def test_bald_with_identical_passes_is_zero_and_falls_back_to_index_order():
    """Dropout 0: every pass equals the eval pass, MI is exactly 0, ties go to the lowest
    unlabelled indices."""
    rng = np.random.default_rng(0)
    logits = 4.0 * rng.normal(size=(40, 5))
    mc = np.broadcast_to(logits, (5, 40, 5))
    labels = np.full(40, -1, np.int32)
    labels[[0, 2, 3]] = 1
    view = _view_from(logits, labels=labels, mc=mc)
    assert np.all(np.asarray(bald_scores(view.mc_logits)) == 0.0)
    selected = make_bald(budget=4, num_classes=5).query(jax.random.key(0), view).selected
    assert selected.tolist() == [1, 4, 5, 6]


def test_bald_finite_when_a_probability_underflows():
    mc = np.array([[[200.0, 0.0, -200.0]], [[0.0, 200.0, -200.0]]])  # exp(-200) underflows in float32
    score = np.asarray(bald_scores(jnp.asarray(mc, jnp.float32)))
    assert np.isfinite(score).all()
    np.testing.assert_allclose(score, np.log(2.0), atol=1e-6)


# ---- Trainer.mc_logits ----------------------------------------------------------------------

POOL, DIM, CLASSES = 50, 6, 3  # 50 rows in eval blocks of 16: the last block is shifted back


class BatchNormDropoutNet(nnx.Module):
    """BatchNorm, then Dropout inside the embedding network (not at its end), so mc_logits must
    run the whole network per pass."""

    def __init__(self, *, dropout: float, rngs: nnx.Rngs):
        self.num_classes = CLASSES
        self.hidden = nnx.Linear(DIM, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(dropout)
        self.fc = nnx.Linear(32, 16, rngs=rngs)
        self.classifier = nnx.Linear(16, CLASSES, rngs=rngs)

    def embed(self, x, *, rngs=None):
        h = self.drop(jax.nn.relu(self.bn(self.hidden(x))), rngs=rngs)
        return jax.nn.relu(self.fc(h))

    def head(self, z):
        return self.classifier(z)

    def __call__(self, x, *, rngs=None):
        return self.head(self.embed(x, rngs=rngs))


def _pool(seed=0):
    return np.random.default_rng(seed).normal(size=(POOL, DIM)).astype(np.float32)


def _trainer(model, loop="device"):
    cfg = TrainConfig(eval_batch_size=16, loop=loop)
    return make_trainer(model, cfg, pool_size=POOL)


def _mlp(dropout, embed_dim=32, seed=0):
    return make_model("mlp", input_shape=(DIM,), num_classes=CLASSES, rngs=nnx.Rngs(seed),
                      embed_dim=embed_dim, dropout=dropout)


def _with_running_stats(state, seed=0):
    """Running averages far from any batch's statistics, so batch statistics would show."""
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.2, 3.0, leaf.shape), leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 2.0, leaf.shape), leaf.dtype)

    return state._replace(batch_stats=jax.tree_util.tree_map_with_path(perturb, state.batch_stats))


def test_mc_logits_without_dropout_are_the_eval_logits():
    trainer = _trainer(_mlp(0.0))
    state, x = trainer.init_state(), _pool()
    mc = trainer.mc_logits(state, x, jax.random.key(0), passes=4)
    assert mc.shape == (4, POOL, CLASSES)
    np.testing.assert_array_equal(mc, np.broadcast_to(trainer.logits(state, x), mc.shape))
    # BALD on them: MI exactly 0 everywhere, so the lowest-index unlabelled rows.
    labels = jnp.asarray(np.r_[0, 1, np.full(POOL - 2, -1)].astype(np.int32))
    view = PoolView(trainer.embed(state, x), trainer.logits(state, x), labels, trainer.head_params(state), mc)
    assert make_bald(budget=3, num_classes=CLASSES, passes=4).query(jax.random.key(0), view).selected.tolist() == [
        2, 3, 4]


@pytest.mark.parametrize("loop", ["device", "host"])
def test_mc_logits_use_batchnorm_running_averages_and_update_nothing(loop):
    """Dropout 0 through the whole-network path: every pass is the eval pass, which it is only if
    BatchNorm normalises with the running averages (set far from the pool's statistics)."""
    trainer = _trainer(BatchNormDropoutNet(dropout=0.0, rngs=nnx.Rngs(0)), loop=loop)
    trainer._mc_path = "network"  # would be "deterministic" (no active dropout); force the full network
    state = _with_running_stats(trainer.init_state())
    before = jax.tree.map(np.array, state.batch_stats)
    x = _pool()
    mc = trainer.mc_logits(state, x, jax.random.key(0), passes=3)
    eval_logits = np.asarray(trainer.logits(state, x))
    for t in range(3):
        np.testing.assert_allclose(mc[t], eval_logits, rtol=1e-5, atol=1e-5)
    # Batch statistics would give other logits: the running averages were really used.
    train_view = trainer.merge(state, train=True)
    assert not np.allclose(train_view(jnp.asarray(x[:16])), eval_logits[:16], atol=1e-2)
    after = jax.tree.map(np.array, state.batch_stats)
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))


def test_mc_logits_with_dropout_through_the_whole_network():
    trainer = _trainer(BatchNormDropoutNet(dropout=0.5, rngs=nnx.Rngs(0)))
    assert trainer._mc_path == "network"
    host = _trainer(BatchNormDropoutNet(dropout=0.5, rngs=nnx.Rngs(0)), loop="host")
    state = _with_running_stats(trainer.init_state())
    before = jax.tree.map(np.array, state.batch_stats)
    x = _pool()
    mc = np.asarray(trainer.mc_logits(state, x, jax.random.key(1), passes=3))
    assert not np.allclose(mc[0], mc[1])
    np.testing.assert_array_equal(mc, trainer.mc_logits(state, x, jax.random.key(1), passes=3))
    np.testing.assert_allclose(host.mc_logits(state, x, jax.random.key(1), passes=3), mc, rtol=1e-5, atol=1e-5)
    assert jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.array, state.batch_stats)))


def test_mc_logits_with_dropout_vary_reproducibly_and_average_to_the_eval_logits():
    trainer = _trainer(_mlp(0.5, embed_dim=1024))
    assert trainer._mc_path == "embedding"
    state, x = trainer.init_state(), _pool()
    passes = 64
    mc = np.asarray(trainer.mc_logits(state, x, jax.random.key(0), passes=passes))
    assert mc.shape == (passes, POOL, CLASSES)
    assert not np.allclose(mc[0], mc[1])  # a fresh mask per pass
    np.testing.assert_array_equal(mc, trainer.mc_logits(state, x, jax.random.key(0), passes=passes))
    assert not np.allclose(mc, trainer.mc_logits(state, x, jax.random.key(1), passes=passes))
    # Inverted dropout on the embedding, then a linear head: E[pass] = eval logits. The mean of
    # 64 passes is within a fraction ~1/8 of one pass's spread.
    eval_logits = np.asarray(trainer.logits(state, x))
    spread = mc.std(axis=0).mean()
    assert spread > 0
    assert np.abs(mc.mean(axis=0) - eval_logits).mean() < 0.25 * spread


def test_mc_logits_embedding_shortcut_equals_the_whole_network():
    """Our models' shortcut (body once, dropout + head per pass) draws the same masks as running
    the whole network per pass, on either loop."""
    x = _pool(3)
    fast = _trainer(_mlp(0.3, embed_dim=24))
    state = fast.init_state()
    expected = np.asarray(fast.mc_logits(state, x, jax.random.key(5), passes=4))
    for loop in ("device", "host"):
        slow = _trainer(_mlp(0.3, embed_dim=24), loop=loop)
        slow._mc_path = "network"
        np.testing.assert_allclose(slow.mc_logits(state, x, jax.random.key(5), passes=4), expected,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_mc_logits_rejects_bad_passes(bad):
    trainer = _trainer(_mlp(0.5))
    with pytest.raises(ValueError, match="passes"):
        trainer.mc_logits(trainer.init_state(), _pool(), jax.random.key(0), passes=bad)
