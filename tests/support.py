"""Shared test helpers: synthetic pools, the reference fixtures, a compile
counter (the one `check_strategy` uses), the killable CLI run. Not a test module."""
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

from alfamix_jax import LinearHead
from alfamix_jax.strategies.checks import count_compiles  # noqa: F401 (re-exported for the tests)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# The ResNet-18 trainer that test_training.py and test_runner.py both build, so one compilation of its step and
# eval programs serves both. CIFAR-sized images: 16x16 ones measured slower per step on XLA:CPU, not faster.
RESNET = dict(shape=(32, 32, 3), classes=3, pool=90, batch_size=16, learning_rate=1e-3, max_labelled=24)


def load_fixture(name: str) -> dict:
    """One of the original's captured runs (see tests/fixtures/README.md)."""
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def fixture_labels(fx: dict) -> np.ndarray:
    """Pool labels in the package's convention: true label if labelled, else -1."""
    return np.where(fx["idxs_lb"], fx["pool_labels"], -1).astype(np.int32)


def fixture_head(fx: dict) -> LinearHead:
    return LinearHead(jnp.asarray(fx["W"]), jnp.asarray(fx["b"]))


def make_pool(seed, *, n=300, dim=16, num_classes=5, labelled=60, sep=1.0, w_noise=0.1, bias_noise=0.1):
    """A pool built like the fixtures, at a small size: class means
    sep * N(0, 1), points = mean + N(0, 1), head W = means + noise,
    b = -|mean|^2 / 2 + noise (well-conditioned logits, no saturated softmax).
    -> embeddings [N, D] float32, labels [N] int32 (-1 unlabelled), true [N],
    LinearHead of float32 arrays."""
    rng = np.random.default_rng(seed)
    means = sep * rng.normal(size=(num_classes, dim))
    true = rng.integers(0, num_classes, n)
    x = means[true] + rng.normal(size=(n, dim))
    w = means + w_noise * rng.normal(size=means.shape)
    b = -0.5 * np.sum(means**2, axis=1) + bias_noise * rng.normal(size=num_classes)
    labels = np.full(n, -1, np.int32)
    chosen = rng.choice(n, labelled, replace=False)
    labels[chosen] = true[chosen]
    head = LinearHead(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
    return x.astype(np.float32), labels, true, head


# The CLI run the kill, stop and concurrency tests interrupt or race (2 strategies x 2 seeds x 5 rounds,
# 20 rows); conftest.py's session fixture `killable_whole` runs it once, uninterrupted, as their reference.
CLI_CONFIG = """
from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig
from alfamix_jax.experiment.training import TrainConfig

def get_config():
    return ExperimentConfig(
        name="killable",
        data=DataConfig(name="digits", max_train=400, max_test=100),
        model=ModelConfig(name="mlp", embed_dim=32),
        train=TrainConfig(learning_rate=3e-3, batch_size=32, max_epochs=40),
        loop=LoopConfig(initial_size=20, budget=10, rounds=4),
        strategies=("alfamix", "random"),
        seeds=(1, 2),
    )
"""


def cli_run(*args, **kwargs) -> subprocess.Popen:
    """`alfamix-jax run ARGS --no-report --no-compile-cache` in a fresh process on the CPU (text pipes).
    The session's compilation cache (conftest.py) still reaches it through the environment."""
    cmd = [sys.executable, "-m", "alfamix_jax.cli", "run", *map(str, args), "--no-report", "--no-compile-cache"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), **kwargs)
