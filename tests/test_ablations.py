"""The paper's ALFA-Mix ablations: diversification (k-means / random among
candidates / top by alpha) and anchors (class means / every labelled row)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import make_pool

from alfamix_jax import make_alfamix_selector
from alfamix_jax.selection.anchors import labelled_anchors


def _pool(budget_rows=8):
    x, labels, _, head = make_pool(3, n=400, dim=12, num_classes=4, labelled=40, sep=0.6)
    return jnp.asarray(x), jnp.asarray(labels), head


@functools.cache
def _selector(diversity):
    """One selector per diversity rule for the module: the tests share its compiled stages."""
    return make_alfamix_selector(budget=8, num_classes=4, diversity=diversity)


@pytest.mark.parametrize("diversity", ["kmeans", "random", "top-alpha"])
def test_diversity_modes_pick_among_candidates(diversity):
    x, labels, head = _pool()
    select = _selector(diversity)
    result = select(jax.random.key(0), x, labels, head)
    selected, cands = np.asarray(result.selected), np.asarray(result.candidates)
    assert cands.sum() > 8  # the case where a diversity rule matters
    assert len(np.unique(selected)) == 8 and (np.asarray(labels)[selected] == -1).all()
    assert cands[selected].all()
    again = select(jax.random.key(0), x, labels, head)
    assert np.array_equal(selected, np.asarray(again.selected))


def test_top_alpha_takes_the_smallest_mixes():
    """top-alpha = the candidates with the smallest rho (fraction of the way to an anchor that flips them)."""
    x, labels, head = _pool()
    select = _selector("top-alpha")
    found, _ = select.stages["search"](jax.random.key(0), x, labels, head)
    rho = np.where(np.asarray(found.candidates), np.asarray(found.min_rho), np.inf)
    expected = set(np.argsort(rho, kind="stable")[:8])
    result = select(jax.random.key(0), x, labels, head)
    assert set(np.asarray(result.selected)) == expected


def test_random_diversity_depends_on_the_key():
    x, labels, head = _pool()
    select = _selector("random")
    picks = {tuple(sorted(np.asarray(select(jax.random.key(k), x, labels, head).selected))) for k in range(4)}
    assert len(picks) > 1


def test_labelled_anchors_equal_class_means_with_one_row_per_class():
    """One labelled row per class: each class mean *is* that row, so both anchor modes
    find the same candidates (padding slots repeat a labelled row and add nothing). The
    candidates are the search stage's (what a call returns as `candidates`): the choice
    among them, a k-means program per selector, compiles long and has no part in this."""
    x, _, true, head = make_pool(4, n=300, dim=10, num_classes=4, labelled=0, sep=0.8)
    labels = np.full(300, -1, np.int32)
    for c in range(4):
        row = np.flatnonzero(true == c)[0]
        labels[row] = c
    x, labels = jnp.asarray(x), jnp.asarray(labels)
    by_class = make_alfamix_selector(budget=5, num_classes=4, anchors="class-means")
    by_row = make_alfamix_selector(budget=5, num_classes=4, anchors="labelled", max_anchors=16)
    a, _ = by_class.stages["search"](jax.random.key(1), x, labels, head)
    b, _ = by_row.stages["search"](jax.random.key(1), x, labels, head)
    assert np.asarray(a.candidates).sum() > 5  # candidates to compare, more than a batch
    assert np.array_equal(np.asarray(a.candidates), np.asarray(b.candidates))


def test_labelled_anchors_buffer():
    x = jnp.arange(20.0).reshape(10, 2)
    labels = jnp.asarray([-1, 0, -1, 1, -1, -1, 2, -1, -1, -1])
    anchors, used = labelled_anchors(jax.random.key(0), x, labels, 5)
    assert int(used) == 3 and anchors.shape == (5, 2)
    rows = {tuple(map(float, a)) for a in np.asarray(anchors)}
    assert rows == {(2.0, 3.0), (6.0, 7.0), (12.0, 13.0)}  # only labelled rows, padding repeats one
    anchors, used = labelled_anchors(jax.random.key(0), x, labels, 2)  # more labelled than slots
    assert int(used) == 2 and len({tuple(map(float, a)) for a in np.asarray(anchors)}) == 2


def test_bad_ablation_settings():
    with pytest.raises(ValueError, match="diversity"):
        make_alfamix_selector(budget=2, num_classes=3, diversity="greedy")
    with pytest.raises(ValueError, match="anchors"):
        make_alfamix_selector(budget=2, num_classes=3, anchors="prototypes")
