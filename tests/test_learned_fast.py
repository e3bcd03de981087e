"""The linear head's fast random / learned alpha (mixing.learned_linear_flips,
random_linear_flips: chunks of (anchor, row) pairs, the gradient in closed form, the pairs
that cannot flip skipped) against the general path (mixing.learned_flips, rule_flips:
jax.grad through the head), flip for flip and selection for selection; skipping and the
chunk size against the bits.

Kept cheap: each comparison is one jitted program holding both paths (compiles dominate),
the random pools of one case are vmapped into one call, and the selection check uses the
random diversity rule (k-means adds compile time and nothing to compare)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import fixture_head, fixture_labels, load_fixture, make_pool

from alfamix_jax import compute_anchors, linear_head_apply, make_alfamix_selector, pseudo_labels
from alfamix_jax.selection import flip_bound, mixing, stages
from alfamix_jax.selection.settings import LearnedAlphaSettings

NUM_CLASSES = 5


def _flips(x, head, anchors, caps, key, *, alpha, fast, reset, chunk, skip=True):
    """Every (cap, anchor, row) decision of one path. x [N, D], anchors [K, D], caps [S] -> [S, K, N] x 2.
    skip: the fast path skips the pairs `flip_bound.least_flip_caps` rules out (as the search does)."""
    pseudo = pseudo_labels(linear_head_apply, head, x)
    block = mixing.Block(x, jnp.zeros_like(x), pseudo, jnp.arange(x.shape[0]))
    config = LearnedAlphaSettings()
    keys = jax.random.split(key, anchors.shape[0])
    least = flip_bound.least_flip_caps(head, x, pseudo, anchors)  # [K, N]

    def fast_at(cap):
        may_flip = cap >= least if skip else None
        if alpha == "learned":
            return mixing.learned_linear_flips(head, block, anchors, cap, keys, config, reset_state=reset,
                                               may_flip=may_flip, chunk=chunk)
        return mixing.random_linear_flips(head, block, anchors, cap, keys, may_flip=may_flip, chunk=chunk)

    def one(anchor, cap, k):
        if alpha == "learned":
            return mixing.learned_flips(linear_head_apply, head, block, anchor, cap, k, config, reset_state=reset)
        return mixing.rule_flips(mixing.random_alpha, linear_head_apply, head, block, anchor, cap, k)

    if fast:  # caps one after another, not vmapped: each cap's chunks have the search's own shapes
        return jax.lax.map(fast_at, caps)
    return jax.vmap(lambda cap: jax.vmap(lambda a, k: one(a, cap, k))(anchors, keys))(caps)


@functools.partial(jax.jit, static_argnames=("alpha", "reset", "chunk"))
def both_paths(x, head, anchors, caps, *, alpha, reset, chunk=None):
    """(fast, general) flips and rho, one program. Leading axes of x, head and anchors past
    [N, D], [C, D] and [K, D] are pools, vmapped."""
    run = functools.partial(_flips, caps=caps, key=jax.random.key(7), alpha=alpha, reset=reset)
    fast, general = functools.partial(run, fast=True, chunk=chunk), functools.partial(run, fast=False, chunk=None)
    for _ in range(x.ndim - 2):
        fast, general = jax.vmap(fast), jax.vmap(general)
    return fast(x, head, anchors), general(x, head, anchors)


def assert_same(x, head, anchors, caps, alpha, reset, chunk=None):
    """Flips identical; rho (the fraction of the way to the anchor of the first flipping mix)
    within 1e-4: where a gradient entry is near 0, Adam's m / (sqrt(v) + eps) turns the
    closed form's last-bit differences from jax.grad's into ~1e-5 differences of alpha.
    -> the number of flips."""
    (f_fast, r_fast), (f_gen, r_gen) = both_paths(x, head, anchors, caps, alpha=alpha, reset=reset, chunk=chunk)
    np.testing.assert_array_equal(f_fast, f_gen)
    np.testing.assert_allclose(np.where(f_fast, r_fast, 0), np.where(f_gen, r_gen, 0), rtol=1e-4)
    return int(np.sum(f_fast))


CASES = [("learned", True), ("learned", False), ("random", False)]


@pytest.mark.shipping_codegen
@pytest.mark.parametrize("alpha,reset", CASES)
def test_fast_flips_equal_the_general_ones_on_the_fixtures(alpha, reset):
    """The original's pools (2200 x 64, 10 classes; the learned fixture for learned alpha, the
    random one for random alpha), at their lowest and their last cap; chunks of
    `pair_chunk(64)` = 1024 pairs, the last one shifted back."""
    fx = load_fixture(alpha)
    x, labels, head = jnp.asarray(fx["pool_embeddings"]), fixture_labels(fx), fixture_head(fx)
    anchors = compute_anchors(x, jnp.asarray(labels), 10)
    caps = jnp.asarray(fx["step_alpha_caps"], jnp.float32)[jnp.asarray([0, -1])]
    assert assert_same(x, head, anchors, caps, alpha, reset) > 0


@pytest.mark.parametrize("alpha,reset", CASES)
def test_fast_flips_equal_the_general_ones_on_random_pools(alpha, reset):
    """Three pools, separations from overlapping to apart, in one call; chunks of 7 pairs, the
    last one shifted back."""
    caps = jnp.asarray([0.05, 0.3, 1.0], jnp.float32)
    pools = [make_pool(seed, n=203, dim=24, num_classes=NUM_CLASSES, sep=sep)
             for seed, sep in enumerate([0.3, 1.0, 2.0])]
    x = jnp.stack([jnp.asarray(p[0]) for p in pools])
    anchors = jnp.stack([compute_anchors(jnp.asarray(p[0]), jnp.asarray(p[1]), NUM_CLASSES) for p in pools])
    head = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[p[3] for p in pools])
    assert assert_same(x, head, anchors, caps, alpha, reset, chunk=7) > 0


@functools.partial(jax.jit, static_argnames=("alpha", "runs"))
def _fast_runs(x, head, anchors, caps, alpha, runs):
    """The fast path's flips and rho for each (chunk, skip) in runs, one program."""
    run = functools.partial(_flips, caps=caps, key=jax.random.key(5), alpha=alpha, fast=True, reset=False)
    return [run(x, head, anchors, chunk=chunk, skip=skip) for chunk, skip in runs]


@pytest.mark.parametrize("alpha", ["learned", "random"])
def test_skipped_pairs_and_the_chunk_size_change_no_bit(alpha):
    """`pair_chunk` picks 256 to 1024 pairs by D for speed alone, and skipping the pairs that
    cannot flip packs the others differently into chunks: neither may change a flip or a bit
    of rho (a pair's results must not depend on its chunk-mates or its place among them).
    Caps from where most pairs are skipped to where none are."""
    x, labels, _, head = make_pool(3, n=700, dim=96, num_classes=NUM_CLASSES, sep=0.8)
    anchors = compute_anchors(jnp.asarray(x), jnp.asarray(labels), NUM_CLASSES)
    assert [mixing.pair_chunk(d) for d in (64, 256, 512, 1024, 4096)] == [1024, 1024, 512, 256, 256]
    caps = jnp.asarray([0.1, 0.4, 1.5])
    least = np.asarray(flip_bound.least_flip_caps(head, jnp.asarray(x), pseudo_labels(linear_head_apply, head,
                                                                                       jnp.asarray(x)), anchors))
    skipped = [float(np.mean(cap < least)) for cap in np.asarray(caps)]
    assert skipped[0] > 0.5 and skipped[-1] < 0.5, skipped
    (f0, r0), *others = _fast_runs(jnp.asarray(x), head, anchors, caps, alpha,
                                   ((256, False), (1024, True), (97, True)))
    assert 0 < int(np.sum(f0)) < f0.size
    for flips, rho in others:
        np.testing.assert_array_equal(np.asarray(flips), np.asarray(f0))
        np.testing.assert_array_equal(np.asarray(rho).view(np.uint32), np.asarray(r0).view(np.uint32))


@pytest.mark.shipping_codegen
def test_reference_selections_equal_with_and_without_the_fast_path():
    """Learned alpha, the original's Adam reset (Q5), over several caps; random alpha's flips
    are compared above (its fast path changes only the order in which rows are visited)."""
    x, labels, _, head = make_pool(11, n=300, dim=16, num_classes=NUM_CLASSES, sep=1.5)

    def select(fast):
        selector = make_alfamix_selector(budget=30, num_classes=NUM_CLASSES, compat="reference", alpha="learned",
                                         alpha_cap_step=0.1, linear_fast_path=fast, diversity="random",
                                         block_size=64)  # blocks shifted back at the end
        return jax.device_get(selector(jax.random.key(1), x, labels, head))

    fast, general = select(True), select(False)
    assert int(fast.diagnostics.caps_tried) >= 2 and int(fast.diagnostics.num_candidates) > 0
    np.testing.assert_array_equal(fast.selected, general.selected)
    np.testing.assert_array_equal(fast.candidates, general.candidates)
    np.testing.assert_array_equal(fast.diagnostics.flips_per_anchor, general.diagnostics.flips_per_anchor)


@pytest.mark.shipping_codegen
def test_the_search_selects_the_same_bits_with_and_without_skipping(monkeypatch):
    """Through the selector's search stage, learned alpha (random alpha packs its pairs with
    the same code, tested above): blocks of 128 rows (the last shifted back), several caps;
    the search with `flip_bound`'s skipping against the search told that every pair may
    flip. (The finish stage takes the search's result alone.)"""
    x, labels, _, head = make_pool(5, n=1000, dim=32, num_classes=NUM_CLASSES, sep=0.6)
    anchors = compute_anchors(jnp.asarray(x), jnp.asarray(labels), NUM_CLASSES)
    least = jax.jit(flip_bound.least_flip_caps)(head, jnp.asarray(x), pseudo_labels(linear_head_apply, head, x),
                                                anchors)
    assert 0.3 < float(np.mean(np.asarray(least) > 0.05)) < 1  # pairs skipped at the first cap, not all

    def search():
        selector = make_alfamix_selector(budget=150, num_classes=NUM_CLASSES, alpha="learned", alpha_cap_step=0.05,
                                         block_size=128)
        x_, labels_ = jnp.asarray(x), jnp.asarray(labels)
        return jax.device_get(selector.stages["search"](jax.random.key(2), x_, labels_, head, x_, labels_))

    skipping = search()
    monkeypatch.setattr(stages.Plan, "least_caps_fn", lambda self, head_params: None)
    every_pair = search()
    found = skipping[0]
    assert int(found.caps_tried) >= 2 and 0 < int(np.sum(found.candidates)) < x.shape[0]
    for ours, theirs in zip(jax.tree.leaves(skipping), jax.tree.leaves(every_pair), strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
