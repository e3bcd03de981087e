"""Model families: the embed/head split the selection engine relies on, the factory's checks,
PyTorch-style initialisation, dropout only in train mode and only from an explicit key."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alfamix_jax.experiment.models import MODEL_NAMES, linear_head_params, make_model
from alfamix_jax.selection.heads import linear_head_apply

FAMILIES = [("mlp", (6, 5, 1), 256), ("cnn", (8, 8, 1), 128), ("cnn", (12, 10, 3), 128), ("resnet18", (32, 32, 3), 512)]


def _eval_view(model):
    return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


@pytest.mark.parametrize("name,input_shape,embed_dim", FAMILIES)
def test_embed_head_split(name, input_shape, embed_dim):
    model = make_model(name, input_shape=input_shape, num_classes=7, rngs=nnx.Rngs(0))
    assert (model.embed_dim, model.num_classes) == (embed_dim, 7)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, *input_shape)), jnp.float32)  # no draw to compile
    view = _eval_view(model)
    z = view.embed(x)
    logits = view(x)
    assert z.shape == (3, embed_dim) and logits.shape == (3, 7)
    np.testing.assert_array_equal(logits, view.head(z))
    # The selection engine's linear fast path sees the same head.
    np.testing.assert_allclose(linear_head_apply(linear_head_params(model), z), logits, rtol=1e-5, atol=1e-5)
    assert linear_head_params(model).weight.shape == (7, embed_dim)


def test_embed_dim_override_and_rows_independent():
    model = make_model("mlp", input_shape=(4,), num_classes=3, rngs=nnx.Rngs(0), embed_dim=9)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4)), jnp.float32)
    assert model.embed(x).shape == (5, 9)
    # Row-wise: a row's embedding does not depend on its batch mates.
    np.testing.assert_allclose(model.embed(x[2:3]), model.embed(x)[2:3], rtol=1e-6)


def test_same_rngs_same_weights_and_torch_init_bounds():
    a = make_model("cnn", input_shape=(8, 8, 2), num_classes=4, rngs=nnx.Rngs(3))
    b = make_model("cnn", input_shape=(8, 8, 2), num_classes=4, rngs=nnx.Rngs(3))
    for u, v in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(u, v)
    # PyTorch default: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases are not zero.
    for layer, fan_in in ((a.conv1, 5 * 5 * 2), (a.fc, a.flat_dim), (a.classifier, 128)):
        bound = 1 / math.sqrt(fan_in)
        for w in (layer.kernel[...], layer.bias[...]):
            assert float(jnp.max(jnp.abs(w))) <= bound
            assert float(jnp.max(jnp.abs(w))) > 0.5 * bound
    different = make_model("cnn", input_shape=(8, 8, 2), num_classes=4, rngs=nnx.Rngs(4))
    assert not np.array_equal(a.fc.kernel[...], different.fc.kernel[...])


@pytest.mark.shipping_codegen
def test_flat_draws_are_flax_and_jax_shaped_draws_bit_for_bit(monkeypatch):
    """The init draws every parameter with one compiled program, in chunks of 65,536 elements;
    the weights are those of Flax's variance_scaling(1/3, fan_in, uniform) and of shaped
    jax.random.uniform draws, and so is a draw over two chunks and a part."""
    import alfamix_jax.experiment.models as models

    ours = make_model("cnn", input_shape=(8, 8, 2), num_classes=4, rngs=nnx.Rngs(3))
    monkeypatch.setattr(models, "_torch_kernel_init", nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"))
    monkeypatch.setattr(models, "_host_uniform", lambda key, *args: np.asarray(jax.random.uniform(key, *args)))
    shaped = make_model("cnn", input_shape=(8, 8, 2), num_classes=4, rngs=nnx.Rngs(3))
    leaves = jax.tree.leaves(nnx.state(ours, nnx.Param))
    assert {u.ndim for u in leaves} == {1, 2, 4}  # biases, dense and conv kernels
    for u, v in zip(leaves, jax.tree.leaves(nnx.state(shaped, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(u).view(np.uint32), np.asarray(v).view(np.uint32))
    monkeypatch.undo()
    key, shape = jax.random.key(8), (3, 172, 257)  # 132,612 elements
    ours = models._host_uniform(key, shape, jnp.float32, -0.3, 0.7)
    theirs = jax.random.uniform(key, shape, jnp.float32, -0.3, 0.7)
    np.testing.assert_array_equal(ours.view(np.uint32), np.asarray(theirs).view(np.uint32))


def test_a_model_builds_under_eval_shape_and_jit():
    """Flax's idioms for abstract and sharded init: the init's draws are traced there."""
    abstract = nnx.eval_shape(lambda: make_model("mlp", input_shape=(6,), num_classes=3, rngs=nnx.Rngs(0)))
    assert abstract.classifier.kernel.shape == (256, 3)
    built = nnx.jit(lambda: make_model("mlp", input_shape=(6,), num_classes=3, rngs=nnx.Rngs(0)))()
    eager = make_model("mlp", input_shape=(6,), num_classes=3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(built.classifier.kernel[...], eager.classifier.kernel[...], rtol=1e-6)


def test_dropout_only_in_train_mode_and_from_the_key():
    model = make_model("mlp", input_shape=(10,), num_classes=3, rngs=nnx.Rngs(0), dropout=0.5)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(64, 10)), jnp.float32)
    clean = jax.nn.relu(model.hidden(x))
    np.testing.assert_array_equal(_eval_view(model).embed(x), clean)
    key = jax.random.key(7)
    z1, z2 = model.embed(x, rngs=key), model.embed(x, rngs=key)
    np.testing.assert_array_equal(z1, z2)  # no hidden RNG state: same key, same mask
    kept = z1 != 0
    np.testing.assert_allclose(z1[kept], 2.0 * clean[kept], rtol=1e-6)  # inverted dropout, rate 0.5
    assert not np.array_equal(z1, model.embed(x, rngs=jax.random.key(8)))
    with pytest.raises(ValueError, match="rngs"):
        model.embed(x)


def test_factory_rejects_bad_arguments():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="name: unknown model 'vgg'.*mlp, cnn, resnet18"):
        make_model("vgg", input_shape=(8, 8, 1), num_classes=3, rngs=rngs)
    with pytest.raises(ValueError, match="input_shape"):
        make_model("cnn", input_shape=(64,), num_classes=3, rngs=rngs)
    with pytest.raises(ValueError, match="input_shape"):
        make_model("cnn", input_shape=(2, 2, 1), num_classes=3, rngs=rngs)
    with pytest.raises(ValueError, match="embed_dim"):
        make_model("resnet18", input_shape=(32, 32, 3), num_classes=3, rngs=rngs, embed_dim=128)
    with pytest.raises(ValueError, match="num_classes"):
        make_model("mlp", input_shape=(4,), num_classes=1, rngs=rngs)
    with pytest.raises(ValueError, match="dropout"):
        make_model("mlp", input_shape=(4,), num_classes=3, rngs=rngs, dropout=1.0)
    assert set(MODEL_NAMES) == {"mlp", "cnn", "resnet18"}
