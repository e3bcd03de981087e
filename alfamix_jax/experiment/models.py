"""Classifiers for the experiment runner (Flax NNX): an embedding network plus a linear head.

Every model splits into `embed(x) -> [N, D]` and `head(z) -> [N, C]`, with the head a single
`nnx.Linear` named `classifier`, so ALFA-Mix can mix in embedding space and use the closed form's
linear shortcut (`linear_head_params`). Layers start from PyTorch's default initialisation (weights
and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))), as the original's networks do. Images are NHWC.

Dropout (rate `dropout`, off by default) acts on the embedding in train mode, the place the
original's MLPNet puts it; Net1/Net3's dropout before the classifier computes the same thing in
training. Train/eval mode is NNX's static `deterministic` / `use_running_average` attributes (the
trainer builds one view of each); the dropout key comes only from the `rngs` argument, so a model
holds no hidden RNG state.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alfamix_jax.selection import threefry
from alfamix_jax.selection.heads import LinearHead

MODEL_NAMES = ("mlp", "cnn", "resnet18")

_DRAW_CHUNK = 1 << 16  # elements per call of the one compiled draw


@jax.jit
def _uniform_chunk(key_data: jax.Array, offset: jax.Array, minval: jax.Array, maxval: jax.Array) -> jax.Array:
    """[_DRAW_CHUNK] elements from `offset` on of `jax.random.uniform(key, (n,), minval=, maxval=)`,
    any n: the same operations in one fusion, so XLA rounds the scaling as JAX's draw does
    (NumPy's separate multiply and add differed from it in the last bit)."""
    floats = threefry.unit_floats(key_data[0], key_data[1], jnp.arange(_DRAW_CHUNK, dtype=jnp.uint32) + offset)
    return jnp.maximum(minval, floats * (maxval - minval) + minval)


def _host_uniform(key: jax.Array, shape: tuple[int, ...], dtype, minval: float, maxval: float) -> np.ndarray:
    """`jax.random.uniform(key, shape, dtype, minval, maxval)` bit for bit, as a NumPy array
    (traced under a transformation, where the model is built inside jit or eval_shape): the
    draw is one program compiled once per process (`_uniform_chunk`, called per 65,536
    elements). JAX would compile a draw per parameter shape, 0.2 s (1-D) to 0.5-0.8 s (2-D,
    4-D) each on a 2-core CPU; ResNet-18 has 13."""
    n = math.prod(shape)
    if isinstance(key, jax.core.Tracer):  # built under jit or eval_shape: traced, so JAX's draw
        return jax.random.uniform(key, (n,), dtype, minval, maxval).reshape(shape)
    data = threefry.threefry_data(key[None])
    if data is None or jnp.dtype(dtype) != jnp.float32:
        return np.asarray(jax.random.uniform(key, (n,), dtype, minval, maxval)).reshape(shape)
    lo, hi = np.float32(minval), np.float32(maxval)
    chunks = [np.asarray(_uniform_chunk(data[0], np.uint32(start), lo, hi)) for start in range(0, n, _DRAW_CHUNK)]
    return (np.concatenate(chunks)[:n] if chunks else np.zeros((0,), np.float32)).reshape(shape)


def _torch_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = prod(shape[:-1])
    for a kernel [..., in, out]: bit for bit Flax's `variance_scaling(1/3, "fan_in", "uniform")`
    (the same float32 operations: a uniform on [-1, 1) times sqrt(3 * variance))."""
    variance = np.asarray((1.0 / 3.0) / math.prod(shape[:-1]), dtype)
    return jnp.asarray(_host_uniform(key, shape, dtype, -1, 1.0) * np.sqrt(3 * variance))


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(_host_uniform(key, shape, dtype, -bound, bound))

    return init


def _linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(din), rngs=rngs)


def _conv(cin, cout, kernel, *, stride=1, padding="SAME", use_bias=True, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin, cout, (kernel, kernel), strides=stride, padding=padding, use_bias=use_bias,
        kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(cin * kernel * kernel), rngs=rngs,
    )


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class _Classifier(nnx.Module):
    """Shared tail: optional dropout on the embedding, a linear head, `__call__ = head(embed)`."""

    def _init_head(self, embed_dim: int, num_classes: int, dropout: float, rngs: nnx.Rngs):
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.classifier = _linear(embed_dim, num_classes, rngs)

    def _finish_embedding(self, z, rngs):
        return z if self.dropout is None else self.dropout(z, rngs=rngs)

    def head(self, z):
        """z: [N, D] -> logits [N, C]."""
        return self.classifier(z)

    def __call__(self, x, *, rngs: jax.Array | None = None):
        """x: [N, *input_shape] -> logits [N, C]."""
        return self.head(self.embed(x, rngs=rngs))


class MLP(_Classifier):
    """The original's MLPNet: flatten, Linear(prod(input_shape), D) + ReLU is the embedding."""

    def __init__(self, input_shape, num_classes, *, embed_dim=256, dropout=0.0, rngs: nnx.Rngs):
        self.input_dim = math.prod(input_shape)
        self.hidden = _linear(self.input_dim, embed_dim, rngs)
        self._init_head(embed_dim, num_classes, dropout, rngs)

    def embed(self, x, *, rngs: jax.Array | None = None):
        """x: [N, *input_shape] -> [N, D]."""
        z = jax.nn.relu(self.hidden(x.reshape(x.shape[0], self.input_dim)))
        return self._finish_embedding(z, rngs)


class CNN(_Classifier):
    """A small CNN like the original's Net1/Net3: two (5x5 conv, 2x2 max-pool, ReLU) blocks with
    32 and 64 channels ('SAME' padding, so 8x8 digits work too), flatten, Linear + ReLU = embedding."""

    def __init__(self, input_shape, num_classes, *, embed_dim=128, dropout=0.0, rngs: nnx.Rngs):
        height, width, channels = input_shape
        self.conv1 = _conv(channels, 32, 5, rngs=rngs)
        self.conv2 = _conv(32, 64, 5, rngs=rngs)
        self.flat_dim = (height // 4) * (width // 4) * 64
        self.fc = _linear(self.flat_dim, embed_dim, rngs)
        self._init_head(embed_dim, num_classes, dropout, rngs)

    def embed(self, x, *, rngs: jax.Array | None = None):
        """x: [N, H, W, C] -> [N, D]."""
        x = jax.nn.relu(nnx.max_pool(self.conv1(x), (2, 2), strides=(2, 2)))
        x = jax.nn.relu(nnx.max_pool(self.conv2(x), (2, 2), strides=(2, 2)))
        z = jax.nn.relu(self.fc(x.reshape(x.shape[0], self.flat_dim)))
        return self._finish_embedding(z, rngs)


class _BasicBlock(nnx.Module):
    """ResNet BasicBlock: two 3x3 conv + BatchNorm, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        pad = ((1, 1), (1, 1))  # PyTorch padding=1 (not 'SAME', which pads asymmetrically at stride 2)
        self.conv1 = _conv(cin, cout, 3, stride=stride, padding=pad, use_bias=False, rngs=rngs)
        self.bn1 = _batch_norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, padding=pad, use_bias=False, rngs=rngs)
        self.bn2 = _batch_norm(cout, rngs)
        if stride != 1 or cin != cout:
            self.shortcut_conv = _conv(cin, cout, 1, stride=stride, padding="VALID", use_bias=False, rngs=rngs)
            self.shortcut_bn = _batch_norm(cout, rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return jax.nn.relu(out + shortcut)


class ResNet18(_Classifier):
    """CIFAR ResNet-18: 3x3 stem conv (stride 1, no max-pool), BasicBlocks [2, 2, 2, 2] with
    64/128/256/512 channels, global average pool = the 512-d embedding."""

    def __init__(self, input_shape, num_classes, *, dropout=0.0, rngs: nnx.Rngs):
        channels = input_shape[-1]
        self.stem_conv = _conv(channels, 64, 3, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.stem_bn = _batch_norm(64, rngs)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(cin, cout, stride, rngs), _BasicBlock(cout, cout, 1, rngs)]
            cin = cout
        self.blocks = nnx.List(blocks)
        self._init_head(512, num_classes, dropout, rngs)

    def embed(self, x, *, rngs: jax.Array | None = None):
        """x: [N, H, W, C] -> [N, 512]."""
        x = jax.nn.relu(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        return self._finish_embedding(jnp.mean(x, axis=(1, 2)), rngs)


def make_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    rngs: nnx.Rngs,
    embed_dim: int | None = None,
    dropout: float = 0.0,
) -> nnx.Module:
    """Builds a classifier by name ("mlp", "cnn", "resnet18") with `embed`, `head`, `__call__`,
    `embed_dim` and `num_classes`. `embed_dim` defaults to 256 (mlp), 128 (cnn), 512 (resnet18,
    fixed by the architecture). `rngs` seeds the initial weights only."""
    if name not in MODEL_NAMES:
        raise ValueError(f"name: unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape: got {input_shape}; expected positive dimensions, e.g. (28, 28, 1)")
    if num_classes < 2:
        raise ValueError(f"num_classes: got {num_classes}; expected at least 2")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: got {dropout}; expected a rate in [0, 1)")
    if embed_dim is not None and embed_dim < 1:
        raise ValueError(f"embed_dim: got {embed_dim}; expected a positive size or None for the default")
    if name == "mlp":
        return MLP(input_shape, num_classes, embed_dim=embed_dim or 256, dropout=dropout, rngs=rngs)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape: model {name!r} takes images (H, W, C); got {input_shape}")
    if name == "cnn":
        if min(input_shape[:2]) < 4:
            raise ValueError(f"input_shape: the cnn pools twice by 2, so needs H, W >= 4; got {input_shape}")
        return CNN(input_shape, num_classes, embed_dim=embed_dim or 128, dropout=dropout, rngs=rngs)
    if embed_dim not in (None, 512):
        raise ValueError(f"embed_dim: resnet18's embedding is its 512-d pooled features; got {embed_dim}, use None")
    return ResNet18(input_shape, num_classes, dropout=dropout, rngs=rngs)


def linear_head_params(model: nnx.Module) -> LinearHead:
    """The model's classifier in the selection engine's convention (weight [C, D] = kernel.T, bias [C])."""
    return LinearHead(model.classifier.kernel[...].T, model.classifier.bias[...])
