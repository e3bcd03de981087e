"""Data-parallel training on the pool mesh: the same fit as on one device (up to float summation
order) on meshes of 1 and 4 devices and on both loops, with the pool replicated or split by
rows; the compiled step really is partitioned (batch split, gradients all-reduced); a bad
batch_size is refused; a rerun on the same mesh is bit-identical; evaluation matches too."""
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alfamix_jax.experiment.models import make_model
from alfamix_jax.experiment.training import TrainConfig, make_trainer
from alfamix_jax.selection.mesh import pool_mesh, put_rows

N, DIM, CLASSES, EMBED = 120, 6, 3, 16
# stop_accuracy > 1: never stop early, so every fit runs all its epochs and rounding differences
# cannot change the epoch count; dropout makes the masks (partitionable threefry) part of the test.
CFG = TrainConfig(batch_size=8, max_epochs=6, stop_accuracy=1.01, eval_batch_size=32)


def _toy_pool(seed=0):
    """Three Gaussian blobs: x [N, DIM] float32, y [N] int32, and a labelled mask [N] of 37 rows
    (4 full batches of 8 + a padded one of 5)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, N).astype(np.int32)
    x = (3.0 * np.eye(CLASSES, DIM)[y] + rng.normal(size=(N, DIM))).astype(np.float32)
    mask = np.zeros(N, bool)
    mask[rng.choice(N, 37, replace=False)] = True
    return x, y, mask


def _mlp():
    return make_model("mlp", input_shape=(DIM,), num_classes=CLASSES, rngs=nnx.Rngs(0), embed_dim=EMBED,
                      dropout=0.2)


@functools.cache
def _trainer(loop, k=None, **changes):
    """One trainer per setting for the whole module, so tests share its compiled programs."""
    cfg = dataclasses.replace(CFG, loop=loop, **changes)
    mesh = None if k is None else pool_mesh(jax.devices()[:k])
    return make_trainer(_mlp(), cfg, pool_size=N, max_labelled=64, mesh=mesh)


def _fit(trainer, x, y, mask, seed=3):
    return trainer.train(trainer.init_state(), x, y, mask, jax.random.key(seed))


def _assert_close(a, b, atol=1e-5):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=atol)


@pytest.fixture(scope="module")
def single():
    """The reference fits without a mesh: loop -> (trainer, state, stats)."""
    x, y, mask = _toy_pool()
    out = {}
    for loop in ("device", "host"):
        trainer = _trainer(loop)
        out[loop] = (trainer, *_fit(trainer, x, y, mask))
    return out


@pytest.mark.parametrize("loop", ["device", "host"])
@pytest.mark.parametrize("k", [1, pytest.param(4, marks=pytest.mark.shipping_codegen)])
def test_fit_on_a_mesh_matches_the_single_device_fit(single, loop, k):
    """A mesh of one (no split) and of 4 (8-row batches split 2 rows a device). A mesh of 2
    would run the same partitioned program at another width; the pool split by rows is fitted
    on the mesh of 4 only, as on one device the split is the whole pool on that device."""
    x, y, mask = _toy_pool()
    ref_trainer, ref_state, ref_stats = single[loop]
    trainer = _trainer(loop, k)
    state, stats = _fit(trainer, x, y, mask)
    assert stats.epochs == ref_stats.epochs == CFG.max_epochs
    assert stats.train_accuracy == pytest.approx(ref_stats.train_accuracy)
    _assert_close(state.params, ref_state.params)
    _assert_close(state.opt_state, ref_state.opt_state)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.params))
    assert {d for leaf in jax.tree.leaves(state.params) for d in leaf.sharding.device_set} == set(jax.devices()[:k])
    if k > 1:  # The pool split by rows (put_rows, padded to the mesh) trains the same as a replicated one.
        rows_state, rows_stats = _fit(trainer, put_rows(trainer.mesh, x), put_rows(trainer.mesh, y), mask)
        assert rows_stats.epochs == stats.epochs
        _assert_close(rows_state.params, state.params)
    # Evaluation on the mesh: same predictions, same accuracy.
    np.testing.assert_allclose(trainer.logits(state, x), ref_trainer.logits(ref_state, x), rtol=1e-5, atol=1e-5)
    assert trainer.evaluate(state, x, y) == ref_trainer.evaluate(ref_state, x, y)


def _step_hlo(trainer, x, y):
    """Compiled HLO text of the host loop's training step, for the trainer's own inputs."""
    state = trainer.init_state()
    packed, count = trainer._pack(trainer._put(jnp.ones(N, bool)))
    order, dropout_key = trainer._epoch_order(trainer._put(jax.random.key(0)), jnp.int32(0), packed, count)
    inner = (*state, jnp.int32(0))
    return trainer._step.lower(inner, x, trainer._put(jnp.asarray(y)), order, count, jnp.int32(0),
                               dropout_key).compile().as_text()


@pytest.mark.parametrize("pool", ["replicated", "rows"])
def test_the_compiled_step_splits_the_batch_and_all_reduces_gradients(pool):
    x, y, _ = _toy_pool()
    trainer = _trainer("host", 4)
    x_in = put_rows(trainer.mesh, x) if pool == "rows" else trainer._put(jnp.asarray(x))
    hlo = _step_hlo(trainer, x_in, y)
    # Each device runs the MLP on 8 / 4 = 2 rows: [2, EMBED] activations, never [8, EMBED].
    assert re.search(rf"f32\[2,{EMBED}\]", hlo)
    assert not re.search(rf"f32\[8,{EMBED}\]", hlo)
    # The weight gradients ([EMBED, DIM], [CLASSES, EMBED] ...) are summed across devices.
    all_reduces = [line for line in hlo.splitlines() if re.search(r"= \(?[^=]*all-reduce(-start)?\(", line)]
    assert any(f"f32[{EMBED},{DIM}]" in line for line in all_reduces)
    # The whole pool is never gathered onto one device.
    assert not re.search(rf"f32\[{N},{DIM}\][^=]*all-gather", hlo)
    # Without a mesh there is nothing to reduce.
    assert "all-reduce" not in _step_hlo(_trainer("host"), jnp.asarray(x), y)


def test_the_device_loop_fit_is_partitioned():
    x, y, mask = _toy_pool()
    trainer = _trainer("device", 4)
    args = trainer._put((trainer.init_state(), jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask),
                         jax.random.key(0), jnp.int32(1)))
    hlo = trainer._fit.lower(*args).compile().as_text()
    assert "all-reduce" in hlo
    assert re.search(rf"f32\[2,{EMBED}\]", hlo) and not re.search(rf"f32\[8,{EMBED}\]", hlo)


@pytest.mark.parametrize("batch_size", [6, 9])
def test_batch_size_not_a_multiple_of_the_mesh_is_refused(batch_size):
    with pytest.raises(ValueError, match=r"batch_size: got \d+; expected a multiple of the mesh size 4"):
        _trainer("device", 4, batch_size=batch_size)
    _trainer("device", 4, batch_size=12)  # a multiple is fine


@pytest.mark.parametrize("loop", ["device", "host"])
def test_same_key_same_mesh_is_bit_identical(loop):
    x, y, mask = _toy_pool()
    trainer = _trainer(loop, 4)
    a, stats_a = _fit(trainer, x, y, mask)
    b, stats_b = _fit(trainer, x, y, mask)
    c, _ = _fit(trainer, x, y, mask, seed=4)
    assert stats_a == stats_b
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(u, v)
    assert not all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params),
                                                         strict=True))


@pytest.mark.parametrize("loop", ["device", "host"])
def test_eval_and_mc_on_a_mesh_match(single, loop):
    """Eval blocks split over 4 devices: eval_batch_size 30 is rounded up to 32, and a pool of
    5 rows is padded to one block of 8; same embeddings, logits and MC passes as one device
    (the MC masks depend on the block size, so the reference uses 32-row blocks too)."""
    x, _, _ = _toy_pool()
    ref_trainer, state, _ = single[loop]
    trainer = _trainer(loop, 4, eval_batch_size=30)
    for rows in (x, x[:5], x[:33]):
        z, logits = trainer.embed_and_logits(state, rows)
        ref_z, ref_logits = ref_trainer.embed_and_logits(state, rows)
        assert z.shape == (len(rows), EMBED) and logits.shape == (len(rows), CLASSES)
        np.testing.assert_allclose(z, ref_z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    key = jax.random.key(7)
    mc = trainer.mc_logits(state, x, key, passes=3)
    assert mc.shape == (3, N, CLASSES)
    np.testing.assert_allclose(mc, ref_trainer.mc_logits(state, x, key, passes=3), rtol=1e-5, atol=1e-5)


def test_data_parallel_is_off_by_default():
    assert TrainConfig().data_parallel is False
    assert _trainer("device").mesh is None


def _runner_config(name, strategies, data_parallel=True, batch_size=32):
    """The runner tests' experiment: one round on 200 digits. Both tests train the same way, so the
    second reuses the first's compiled trainer (the session's compilation cache)."""
    from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig

    return ExperimentConfig(
        name=name, data=DataConfig(name="digits", max_train=200, max_test=100),
        model=ModelConfig(name="mlp", embed_dim=16),
        train=TrainConfig(learning_rate=3e-3, batch_size=batch_size, max_epochs=10, data_parallel=data_parallel),
        loop=LoopConfig(initial_size=20, budget=10, rounds=1), strategies=strategies, seeds=(1,),
    )


def test_runner_data_parallel(tmp_path):
    """train.data_parallel: the runner trains on a mesh of all 8 devices; the random strategy's
    run (its queries do not depend on the model) reaches the same accuracies as on one device."""
    from alfamix_jax.experiment.runner import check_config, run_experiment

    def config(data_parallel, batch_size=32):
        return _runner_config("dp", ("random",), data_parallel, batch_size)

    with pytest.raises(ValueError, match="train.batch_size 36 must be a multiple of the 8 devices"):
        check_config(config(True, batch_size=36))
    logged = []
    parallel = run_experiment(config(True), str(tmp_path / "dp"), progress=False, log=logged.append)
    single = run_experiment(config(False), str(tmp_path / "one"), progress=False, log=lambda *_: None)
    assert any("data-parallel over 8 devices" in line for line in logged)
    assert [r["labelled"] for r in parallel] == [r["labelled"] for r in single] == [20, 30]
    for p, s in zip(parallel, single, strict=True):
        assert p["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=0.02)


def test_runner_selects_on_the_pool_mesh(tmp_path, monkeypatch):
    """train.data_parallel: the ALFA-Mix presets get the runner's pool mesh of 8 devices and their
    selector splits the pool over it; a preset whose settings need one device (labelled anchors)
    gets mesh=None and the log says so, once per strategy. Both query valid batches (the runner
    checks every batch with check_query)."""
    from alfamix_jax.experiment.checkpoint import RunCheckpointer
    from alfamix_jax.experiment.runner import Workbench, run_dir, run_experiment
    from alfamix_jax.strategies import alfamix as presets

    built = []

    def spy(**kwargs):
        selector = make_selector(**kwargs)
        built.append((kwargs["settings"].anchors, kwargs["mesh"], selector))
        return selector

    make_selector = presets.make_alfamix_selector
    monkeypatch.setattr(presets, "make_alfamix_selector", spy)
    config = _runner_config("dp-select", ("alfamix", "alfamix_labelled_anchors"))
    logged = []
    records = run_experiment(config, str(tmp_path), progress=False, log=logged.append)
    assert [r["labelled"] for r in records] == [20, 30] * 2
    (anchors, mesh, selector), (other_anchors, other_mesh, other_selector) = built
    assert anchors == "class-means" and mesh is not None and mesh.devices.size == 8
    assert selector.layout.mesh is mesh and selector.layout.devices == 8
    assert other_anchors == "labelled" and other_mesh is None and other_selector.layout.mesh is None
    note = ('alfamix_labelled_anchors: anchors="labelled" runs on one device: ALFA-Mix selects on one device, not '
            'on the mesh of 8 devices')
    assert [line for line in logged if "runs on one device" in line] == [note]
    for strategy in config.strategies:
        checkpointer = RunCheckpointer(run_dir(str(tmp_path), strategy, 1))
        assert checkpointer.latest().arrays["labelled"].sum() == 30
        checkpointer.close()
    # Another budget builds another selector (nothing compiles until a query) and logs nothing new.
    logged.clear()
    bench = Workbench(config=config, x_train=None, y_train=None, y_train_device=None, x_test=None, y_test=None,
                      num_classes=10, trainer=None, initial_states={}, strategies={}, mesh=mesh, log=logged.append)
    for budget in (10, 15):
        bench.strategy("alfamix_labelled_anchors", budget)
        bench.strategy("alfamix", budget)
    assert logged == [note]
    assert [m is mesh for _, m, _ in built[2:]] == [False, True, False, True]
