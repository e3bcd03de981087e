"""The jitted fit: stop rule, reproducibility, no recompiles across labelled counts, padding
and skipped batches like the original, blocked evaluation, optimisers, checkpoint round trip."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from support import RESNET, count_compiles

from alfamix_jax.experiment.models import linear_head_params, make_model
from alfamix_jax.experiment.training import TrainConfig, TrainState, make_optimizer, make_trainer, min_correct_to_stop
from alfamix_jax.selection.heads import linear_head_apply

N, DIM, CLASSES = 120, 6, 3


def _toy_pool(seed=0, n=N):
    """Three well-separated Gaussian blobs: x [n, DIM] float32, y [n] int32."""
    rng = np.random.default_rng(seed)
    means = 4.0 * np.eye(CLASSES, DIM)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    x = (means[y] + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)
    return x, y


def _mask(count, seed=1, n=N):
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).choice(n, count, replace=False)] = True
    return mask


def _mlp(seed=0, **kwargs):
    return make_model("mlp", input_shape=(DIM,), num_classes=CLASSES, rngs=nnx.Rngs(seed), **kwargs)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(u, v) for u, v in zip(la, lb, strict=True))


@pytest.fixture(scope="module")
def trainer():
    cfg = TrainConfig(batch_size=8, max_epochs=60, stop_accuracy=1.0, eval_batch_size=32)
    return make_trainer(_mlp(), cfg, pool_size=N, max_labelled=64)


def test_reaches_stop_accuracy_early_and_generalises(trainer):
    x, y = _toy_pool()
    state, stats = trainer.train(trainer.init_state(), x, y, _mask(40), jax.random.key(0))
    assert stats.train_accuracy == 1.0
    assert 1 <= stats.epochs < trainer.cfg.max_epochs
    assert trainer.evaluate(state, x, y) > 0.95
    assert trainer.evaluate(trainer.init_state(), x, y) < 0.9  # it was the training that did it


def test_same_key_bit_identical_other_key_differs(trainer):
    x, y = _toy_pool()
    mask = _mask(37)
    a, stats_a = trainer.train(trainer.init_state(), x, y, mask, jax.random.key(3))
    b, stats_b = trainer.train(trainer.init_state(), x, y, mask, jax.random.key(3))
    c, _ = trainer.train(trainer.init_state(), x, y, mask, jax.random.key(4))
    assert stats_a == stats_b
    assert _leaves_equal(a, b)
    assert not _leaves_equal(a.params, c.params)


def test_labelled_count_changes_do_not_recompile(trainer):
    x, y = _toy_pool()
    state = trainer.init_state()
    trainer.train(state, x, y, _mask(20), jax.random.key(0))
    trainer.embed_and_logits(state, x)
    with count_compiles() as compiles:
        for count in (9, 33, 64):
            new_state, stats = trainer.train(state, x, y, _mask(count, seed=count), jax.random.key(count))
            trainer.embed_and_logits(new_state, x)
            assert stats.epochs >= 1
    assert compiles[0] == 0


def test_init_state_from_another_seed_reuses_the_compiled_fit(trainer):
    x, y = _toy_pool()
    other = _mlp(seed=11)
    trainer.train(trainer.init_state(), x, y, _mask(20), jax.random.key(0))
    with count_compiles() as compiles:
        state = trainer.init_state(other)
        trained, _ = trainer.train(state, x, y, _mask(20), jax.random.key(0))
    assert compiles[0] == 0
    assert _leaves_equal(state.params, nnx.state(other, nnx.Param))
    fresh = make_trainer(other, trainer.cfg, pool_size=N, max_labelled=64)
    direct, _ = fresh.train(fresh.init_state(), x, y, _mask(20), jax.random.key(0))
    assert _leaves_equal(trained, direct)
    with pytest.raises(ValueError, match="architecture"):
        trainer.init_state(_mlp(embed_dim=8))


def test_unlabelled_rows_are_never_read(trainer):
    x, y = _toy_pool()
    mask = _mask(29)  # 29 = 3 batches of 8 + 5, so the last batch is padded
    garbage_x = np.where(mask[:, None], x, np.nan).astype(np.float32)
    garbage_y = np.where(mask, y, -1).astype(np.int32)
    a, stats_a = trainer.train(trainer.init_state(), x, y, mask, jax.random.key(5))
    b, stats_b = trainer.train(trainer.init_state(), garbage_x, garbage_y, mask, jax.random.key(5))
    assert stats_a == stats_b
    assert _leaves_equal(a, b)


def test_padding_rows_have_zero_weight():
    """One epoch, one batch of 8 holding 5 labelled rows (+3 wrapped fillers), plain SGD: the
    update is exactly one gradient step on the mean cross-entropy over the 5 real rows."""
    x, y = _toy_pool()
    mask = _mask(5)
    lr = 0.5
    cfg = TrainConfig(optimizer="sgd", learning_rate=lr, momentum=0.0, batch_size=8, max_epochs=1)
    model = _mlp()
    trainer = make_trainer(model, cfg, pool_size=N)
    state = trainer.init_state()
    trained, stats = trainer.train(state, x, y, mask, jax.random.key(0))
    assert stats.epochs == 1

    graphdef, params = nnx.split(model, nnx.Param)

    def mean_ce(params):
        logits = nnx.merge(graphdef, params)(jnp.asarray(x[mask]))
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y[mask])).mean()

    expected = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(mean_ce)(params))
    for got, want in zip(jax.tree.leaves(trained.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batches_with_one_row_are_skipped(trainer):
    x, y = _toy_pool()
    # A single labelled row: its only batch is skipped, nothing changes, accuracy 0 / 1.
    state = trainer.init_state()
    same, stats = trainer.train(state, x, y, _mask(1), jax.random.key(0))
    assert stats == (trainer.cfg.max_epochs, 0.0)
    assert _leaves_equal(same, state)
    # 9 = one batch of 8 + a 1-row batch that never trains or counts: accuracy tops out at 8/9,
    # so the stop rule (1.0) never fires, yet the 8-row batches do reach 8/9.
    _, stats = trainer.train(state, x, y, _mask(9), jax.random.key(0))
    assert stats == (trainer.cfg.max_epochs, 8 / 9)


def test_stop_threshold_matches_float64_comparison():
    rng = np.random.default_rng(0)
    cases = [(0.99, 100), (0.99, 1000), (0.99, 1100), (1.0, 7), (0.5, 3), (0.0, 5), (1.5, 4)]
    cases += [(float(rng.uniform()), int(rng.integers(1, 2000))) for _ in range(200)]
    for stop, labelled in cases:
        brute = next((c for c in range(labelled + 1) if c / labelled >= stop), None)
        got = min_correct_to_stop(stop, labelled)
        assert got == brute if brute is not None else got > labelled, (stop, labelled)


def test_blocked_evaluation_matches_the_model(trainer):
    x, y = _toy_pool()
    state = trainer.init_state()
    for m in (5, 32, 45, 120):  # below, at, and between multiples of the 32-row block
        z, logits = trainer.embed_and_logits(state, x[:m])
        np.testing.assert_allclose(z, trainer.model.embed(x[:m]), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(trainer.embed(state, x[:m]), z)
        np.testing.assert_array_equal(trainer.logits(state, x[:m]), logits)
        np.testing.assert_allclose(trainer.head_apply(trainer.head_params(state), z), logits, rtol=1e-5, atol=1e-5)
    head = trainer.head_params(state)
    np.testing.assert_array_equal(head.weight, linear_head_params(trainer.model).weight)
    assert trainer.head_apply is linear_head_apply
    manual = float(np.mean(np.argmax(np.asarray(trainer.logits(state, x)), axis=1) == y))
    assert trainer.evaluate(state, x, y) == manual


@pytest.mark.parametrize("cfg", [
    TrainConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=8, max_epochs=60),
    TrainConfig(optimizer="adam", learning_rate=1e-2, weight_decay=1e-4, batch_size=8, max_epochs=60),
])
def test_optimisers_train(cfg):
    x, y = _toy_pool()
    trainer = make_trainer(_mlp(dropout=0.2), cfg, pool_size=N, max_labelled=48)
    state, stats = trainer.train(trainer.init_state(), x, y, _mask(48), jax.random.key(1))
    assert stats.train_accuracy >= 0.99 and stats.epochs < cfg.max_epochs
    assert trainer.evaluate(state, x, y) > 0.9


def test_sgd_without_decay_is_plain_momentum():
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.1, momentum=0.5)
    opt = make_optimizer(cfg)
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 1.0])}
    state = opt.init(params)
    u1, state = opt.update(grads, state, params)
    u2, _ = opt.update(grads, state, params)
    np.testing.assert_allclose(u1["w"], -0.1 * grads["w"])
    np.testing.assert_allclose(u2["w"], -0.1 * 1.5 * grads["w"])  # torch: buf = 0.5 * buf + g


def test_resnet18_forward_and_short_train():
    """One step of batch 16 on 5 labelled rows (11 wrapped fillers). The trainer is the one
    test_runner.py's resnet18 run builds (RESNET: pool, classes, batch, optimiser, max_labelled), so
    the session's compilation cache compiles its step and eval programs once for both files."""
    rng = np.random.default_rng(0)
    n, shape, classes = RESNET["pool"], RESNET["shape"], RESNET["classes"]
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int32)
    model = make_model("resnet18", input_shape=shape, num_classes=classes, rngs=nnx.Rngs(0))
    cfg = TrainConfig(learning_rate=RESNET["learning_rate"], batch_size=RESNET["batch_size"], max_epochs=1)
    trainer = make_trainer(model, cfg, pool_size=n, max_labelled=RESNET["max_labelled"])
    state = trainer.init_state()
    mask = _mask(5, n=n)
    trained, stats = trainer.train(state, x, y, mask, jax.random.key(0))
    assert stats.epochs == 1
    assert not _leaves_equal(trained.params, state.params)
    assert not _leaves_equal(trained.batch_stats, state.batch_stats)  # BatchNorm ran in train mode
    z, logits = trainer.embed_and_logits(trained, x)
    assert z.shape == (n, 512) and logits.shape == (n, classes)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_train_state_orbax_round_trip(trainer, tmp_path):
    x, y = _toy_pool()
    state, _ = trainer.train(trainer.init_state(), x, y, _mask(30), jax.random.key(2))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, trainer.init_state())
    restored = checkpointer.restore(tmp_path / "state", target)
    assert isinstance(restored, TrainState)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert _leaves_equal(restored, state)
    # Resuming from the restored state is the same computation as from the original.
    a, _ = trainer.train(state, x, y, _mask(40), jax.random.key(9))
    b, _ = trainer.train(restored, x, y, _mask(40), jax.random.key(9))
    assert _leaves_equal(a, b)


class _WithRngStream(nnx.Module):
    """A model keeping a hidden RNG stream (key + counter state) the trainer must refuse."""

    def __init__(self):
        self.num_classes = 2
        self.classifier = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        self.dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(1))


def test_bad_inputs_raise():
    x, y = _toy_pool()
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(TrainConfig(optimizer="rmsprop"))
    with pytest.raises(ValueError, match="batch_size"):
        make_trainer(_mlp(), TrainConfig(batch_size=1), pool_size=N)
    with pytest.raises(ValueError, match="max_labelled"):
        make_trainer(_mlp(), TrainConfig(), pool_size=N, max_labelled=N + 1)
    with pytest.raises(ValueError, match="model: holds state"):
        make_trainer(_WithRngStream(), TrainConfig(), pool_size=N)
    trainer = make_trainer(_mlp(), TrainConfig(), pool_size=N, max_labelled=10)
    state = trainer.init_state()
    with pytest.raises(ValueError, match="labelled: 0 rows"):
        trainer.train(state, x, y, np.zeros(N, bool), jax.random.key(0))
    with pytest.raises(ValueError, match="max_labelled=10"):
        trainer.train(state, x, y, _mask(11), jax.random.key(0))
    with pytest.raises(ValueError, match="pool_size=120"):
        trainer.train(state, x[:50], y[:50], _mask(5, n=50), jax.random.key(0))
    with pytest.raises(ValueError, match="y: labelled rows"):
        trainer.train(state, x, np.full(N, CLASSES, np.int32), _mask(5), jax.random.key(0))
    with pytest.raises(ValueError, match="bool"):
        trainer.train(state, x, y, _mask(5).astype(np.int32), jax.random.key(0))


@pytest.mark.parametrize("model_name,shape", [pytest.param("mlp", (DIM,), marks=pytest.mark.shipping_codegen),
                                              ("cnn", (8, 8, 1))])
def test_host_and_device_loops_fit_the_same_way(model_name, shape):
    """The two drivers of a fit (TrainConfig.loop) run the same epochs, batches and stop rule:
    equal epoch counts and train accuracy, parameters equal to float tolerance (XLA may fuse the
    two programs differently, so not bit for bit)."""
    x, y = _toy_pool()
    x = np.resize(x, (N, *shape)).astype(np.float32)
    mask = _mask(45)
    results = {}
    for loop in ("device", "host"):
        model = make_model(model_name, input_shape=shape, num_classes=CLASSES, rngs=nnx.Rngs(0))
        cfg = TrainConfig(batch_size=8, max_epochs=6, stop_accuracy=1.0, eval_batch_size=32, loop=loop)
        trainer = make_trainer(model, cfg, pool_size=N, max_labelled=64)
        assert trainer.loop == loop
        state, stats = trainer.train(trainer.init_state(), x, y, mask, jax.random.key(3))
        results[loop] = (state, stats, np.asarray(trainer.logits(state, x)), trainer.evaluate(state, x, y))
    (sd, td, ld, ad), (sh, th, lh, ah) = results["device"], results["host"]
    assert td == th
    for u, v in zip(jax.tree.leaves(sd.params), jax.tree.leaves(sh.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ld, lh, rtol=1e-4, atol=1e-4)
    assert abs(ad - ah) <= 1 / N


def test_auto_loop_picks_host_for_conv_models_on_cpu():
    from alfamix_jax.experiment.training import resolve_loop

    conv = make_model("cnn", input_shape=(8, 8, 1), num_classes=CLASSES, rngs=nnx.Rngs(0))
    assert resolve_loop("auto", _mlp()) == "device"
    assert resolve_loop("auto", conv) == ("host" if jax.default_backend() == "cpu" else "device")
    assert resolve_loop("device", conv) == "device"
