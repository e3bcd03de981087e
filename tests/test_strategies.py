"""Every registered strategy through the one interface: exactly the budget,
unique, unlabelled only, reproducible from the key, and no recompilation when
only the labelled set changes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import count_compiles, make_pool

from alfamix_jax.strategies import STRATEGIES, PoolView, make_strategy

BUDGET, CLASSES = 12, 4


def _view(labels, seed=0, passes=0):
    x, _, _, head = make_pool(seed, n=300, dim=16, num_classes=CLASSES, labelled=0, sep=0.8)
    logits = jnp.asarray(x) @ head.weight.T + head.bias
    mc = None
    if passes:
        noise = np.random.default_rng(1).normal(size=(passes, *logits.shape)).astype(np.float32)
        mc = logits[None] + jnp.asarray(noise)
    return PoolView(jnp.asarray(x), logits, jnp.asarray(labels), head, mc_logits=mc)


def _labels(count, seed=0):
    _, _, true, _ = make_pool(0, n=300, dim=16, num_classes=CLASSES, labelled=0, sep=0.8)
    labels = np.full(300, -1, np.int32)
    rows = np.random.default_rng(seed).choice(300, count, replace=False)
    labels[rows] = true[rows]
    return labels


@pytest.fixture(scope="module")
def strategies():
    return {name: make_strategy(name, budget=BUDGET, num_classes=CLASSES) for name in sorted(STRATEGIES)}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_invariants(strategies, name):
    strategy = strategies[name]
    passes = strategy.mc_passes if "mc_logits" in strategy.needs else 0
    labels = _labels(40)
    view = _view(labels, passes=passes)
    result = strategy.query(jax.random.key(7), view)
    selected = np.asarray(result.selected)
    assert selected.shape == (BUDGET,) and selected.dtype == np.int32
    assert len(np.unique(selected)) == BUDGET
    assert (labels[selected] == -1).all()
    again = strategy.query(jax.random.key(7), view)
    assert np.array_equal(selected, np.asarray(again.selected))
    # The next round (more labels, same shapes) must not compile anything new.
    grown = labels.copy()
    grown[selected] = 0
    with count_compiles() as compiles:
        strategy.query(jax.random.key(8), _view(grown, passes=passes))
    if name.startswith("alfamix"):
        assert compiles[0] <= 1  # its k-means / all-candidates stage compiles the first time it is needed
    else:
        assert compiles[0] == 0


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown"):
        make_strategy("oracle", budget=1, num_classes=2)


def test_baseline_settings_reach_the_factories():
    from alfamix_jax.strategies import BaselineSettings

    settings = BaselineSettings(bald_passes=7)
    assert make_strategy("bald", budget=3, num_classes=CLASSES, baselines=settings).mc_passes == 7
    assert settings.for_strategy("dropquery")["passes"] == 3
    assert settings.for_strategy("gcnal")["subset_size"] == settings.gcnal_subset_size
    assert settings.for_strategy("random") == {"block_size": 4096}
