"""Lloyd passes with distance bounds (alfamix_jax.selection.lloyd_bounds, `kmeans(bounded=True)`):
the same centres, assignment, picks, inertia and iterations as full passes, bit for bit, while
recomputing fewer rows; a row is skipped only when its own centre is nearest by more than a
float32 squared distance's error; the selector turns bounds on from the candidate count it
reads, with the same batch."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import make_pool

from alfamix_jax import kmeans, make_alfamix_selector
from alfamix_jax.selection import lloyd_bounds, stages
from alfamix_jax.selection.kmeans import Sizing, sizing
from alfamix_jax.selection.points import Points, normalised

FIELDS = ("centres", "assignment", "picks", "inertia", "iterations")


@functools.partial(jax.jit, static_argnames=("k", "bounded", "view"))
def run(key, x, n_valid, k, bounded, view=False):
    if view:  # as the selection reads candidates: pool rows through a gather, L2-normalised
        x = normalised(Points(x, jnp.arange(x.shape[0], dtype=jnp.int32)[::-1]), n_valid)
    return kmeans(key, x, n_valid, k, block_size=1024, bounded=bounded)


def clustered_rows(seed, n, dim, clusters, spread):
    rng = np.random.RandomState(seed)
    means = rng.randn(clusters, dim) * 3.0
    return (means[rng.randint(0, clusters, n)] + spread * rng.randn(n, dim)).astype(np.float32)


@pytest.mark.parametrize("n,m,dim,k,spread,view", [
    (3000, 3500, 16, 40, 1.5, False),  # 20 groups of 2 centres
    (2500, 2500, 8, 20, 2.0, False),  # Elkan's bounds: one per centre
    pytest.param(3000, 4096, 24, 70, 1.0, True,  # groups of 3 centres, the last one short; a gathered, normalised view
                 marks=pytest.mark.shipping_codegen),
    pytest.param(2000, 2048, 12, 300, 0.7, False,  # more centres than 32 groups of 1 (groups of 10)
                 marks=pytest.mark.shipping_codegen),
], ids=["groups-of-2", "one-per-centre", "view-uneven-groups", "k-300"])
def test_bounded_passes_equal_full_passes_bit_for_bit(n, m, dim, k, spread, view):
    x = np.zeros((m, dim), np.float32)
    x[:n] = clustered_rows(n + k, n, dim, clusters=k // 2, spread=spread)
    x[n:] = 40.0  # past n_valid: never computed, never counted
    for seed in range(2):
        full = run(jax.random.key(seed), jnp.asarray(x), n, k=k, bounded=False, view=view)
        bounded = run(jax.random.key(seed), jnp.asarray(x), n, k=k, bounded=True, view=view)
        for field in FIELDS:
            np.testing.assert_array_equal(np.asarray(getattr(bounded, field)), np.asarray(getattr(full, field)),
                                          err_msg=field)
        iterations = int(full.iterations)
        assert int(full.rows_computed) == iterations * n
        if iterations >= 4:  # the bounds skip rows once the centres settle
            assert int(bounded.rows_computed) < 0.8 * (iterations + 1) * n


# The buffer and k of the "one-per-centre" case above (k is static, the row count traced), so the
# edges and the ties reuse its two compiled programs; k = 1 is a program of its own.
EDGE_ROWS, EDGE_DIM, EDGE_K = 2500, 8, 20


@pytest.mark.shipping_codegen
@pytest.mark.parametrize("k,n_valid", [(1, 700), (EDGE_K, 0), (EDGE_K, EDGE_K - 1)],
                         ids=["one-centre", "no-rows", "fewer-rows-than-centres"])
def test_bounded_passes_equal_full_passes_at_the_edges(k, n_valid):
    x = jnp.asarray(np.random.RandomState(0).randn(EDGE_ROWS, EDGE_DIM).astype(np.float32))
    full = run(jax.random.key(1), x, n_valid, k=k, bounded=False)
    bounded = run(jax.random.key(1), x, n_valid, k=k, bounded=True)
    for field in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(bounded, field)), np.asarray(getattr(full, field)))


def test_ties_are_recomputed_and_go_to_the_lower_centre():
    """Duplicated base points and 64 midpoints of two of them put rows at equal distances, or
    within rounding of equal, from two centres (with seeds 1 and 2 the seeded centres are one
    ulp from equidistant); a full pass sends a tie to the lower index, and so must a pass that
    may skip rows."""
    rng = np.random.RandomState(0)
    base = rng.randn(EDGE_K, EDGE_DIM).astype(np.float32)
    rows = np.concatenate([base[rng.randint(0, EDGE_K, 2000)], np.tile(base[:2].mean(0), (64, 1))])
    x = np.zeros((EDGE_ROWS, EDGE_DIM), np.float32)
    x[:rows.shape[0]] = rows
    for seed in range(3):
        full = run(jax.random.key(seed), jnp.asarray(x), rows.shape[0], k=EDGE_K, bounded=False)
        bounded = run(jax.random.key(seed), jnp.asarray(x), rows.shape[0], k=EDGE_K, bounded=True)
        for field in FIELDS:
            np.testing.assert_array_equal(np.asarray(getattr(bounded, field)), np.asarray(getattr(full, field)))


def bounds_of(upper, lower, norm=1.0):
    return lloyd_bounds.Bounds(jnp.zeros((1,), jnp.int32), jnp.float32([upper]), jnp.float32([[lower]]),
                               jnp.float32([norm]))


def test_a_row_is_skipped_only_when_clearly_nearest_its_own_centre():
    centres = jnp.eye(2, 64, dtype=jnp.float32)  # |c| = 1
    error = float(lloyd_bounds._error(jnp.float32([1.0]), centres)[0])  # (|x| + max |c|)^2 * (gamma_D + 2u)
    assert 64 * 2.0**-24 * 4 < error < 1e-4
    unclear = lambda upper, lower, norm=1.0: bool(lloyd_bounds._unclear(bounds_of(upper, lower, norm), centres)[0])  # noqa: E731
    assert not unclear(0.5, 0.9)
    assert unclear(0.5, 0.5)  # a tie
    assert unclear(0.5, np.sqrt(0.25 + 1.5 * error))  # apart by less than the two distances' errors
    assert not unclear(0.5, np.sqrt(0.25 + 2.1 * error))
    assert unclear(0.5, np.sqrt(0.25 + 2.1 * error), norm=2.0)  # a longer row: larger errors
    assert unclear(np.inf, 1.0)  # never computed


def test_moving_centres_widen_the_bounds_by_their_shifts():
    centres = jnp.eye(2, 8, dtype=jnp.float32)
    bounds = lloyd_bounds.Bounds(jnp.int32([1, 0]), jnp.float32([0.2, 0.3]), jnp.float32([[1.0, 1.5], [2.0, 2.5]]),
                                 jnp.float32([1.0, 1.0]))
    moved = jnp.float32([0.1, 0.25])
    wide = lloyd_bounds._widened(bounds, moved, k=2)  # one group per centre
    np.testing.assert_allclose(np.asarray(wide.upper), [0.45, 0.4], rtol=1e-6)  # by its own centre's shift
    np.testing.assert_allclose(np.asarray(wide.lower), [[0.9, 1.25], [1.9, 2.25]], rtol=1e-6)
    assert np.all(np.asarray(wide.upper) >= np.float32([0.45, 0.4]))  # rounded outwards
    assert np.all(np.asarray(wide.lower) <= np.float32([[0.9, 1.25], [1.9, 2.25]]))
    lower = jnp.ones((2, 32), jnp.float32)  # k = 64: 32 groups of two centres
    grouped = lloyd_bounds._widened(bounds._replace(lower=lower), jnp.full((64,), 0.1).at[41].set(0.5), k=64)
    np.testing.assert_allclose(np.asarray(grouped.lower[0]), np.where(np.arange(32) == 20, 0.5, 0.9), rtol=1e-6)
    shifts = lloyd_bounds.shifts(centres, centres + 0.5)
    assert np.all(np.asarray(shifts) >= np.float32(np.sqrt(8 * 0.25)))


def test_the_host_turns_bounds_on_for_many_rows_per_centre():
    assert sizing(26306, 100, 60000) == Sizing(8192, True)  # the Fashion-MNIST protocol's learned candidates
    assert not sizing(570, 500, 20000).bounded  # the 20k pool's closed-form candidates: two passes
    assert not sizing(3000, 100, 60000).bounded  # under 4096 rows
    assert not sizing(65536, 1000, 65536).bounded  # under 128 rows per centre
    assert sizing(65536, 500, 65536).bounded


@pytest.mark.shipping_codegen
def test_the_selector_gives_the_same_batch_with_bounds(monkeypatch):
    x, labels, _, head = make_pool(4, n=2500, dim=16, num_classes=5, labelled=50, sep=0.6)
    args = (jax.random.key(2), jnp.asarray(x), jnp.asarray(labels), head)
    select = make_alfamix_selector(budget=40, num_classes=5, alpha_cap_step=0.5)  # closed form: the cheapest search
    plain = select(*args)
    count = int(plain.diagnostics.num_candidates)
    assert count > 4 * 40 and not stages.kmeans_sizing(select.plan, count, pool_size=2500).bounded
    monkeypatch.setattr(lloyd_bounds, "worth_it", lambda n_valid, k: True)
    assert stages.kmeans_sizing(select.plan, count, pool_size=2500).bounded
    bounded = select(*args)
    np.testing.assert_array_equal(np.asarray(bounded.selected), np.asarray(plain.selected))
    assert int(bounded.diagnostics.kmeans_iterations) == int(plain.diagnostics.kmeans_iterations) > 1
    assert float(bounded.diagnostics.kmeans_inertia) == float(plain.diagnostics.kmeans_inertia)
