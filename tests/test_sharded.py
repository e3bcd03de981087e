"""Selection on a device mesh (`make_alfamix_selector(mesh=...)`): the same batch on 1, 2, 4
and 8 devices, in two processes, streamed from a file, and as the
one-device selector. conftest.py gives this process 8 CPU devices."""
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharded_cases import CASE, case_pool, run_case
from support import count_compiles

from alfamix_jax import compute_anchors, make_alfamix_selector, shard_pool
from alfamix_jax.selection.layout import Rows
from alfamix_jax.selection.mesh import pool_mesh

DEVICE_COUNTS = (1, 2, 4, 8)
EXACT_DIAGNOSTICS = ("caps_tried", "flips_per_cap", "union_per_cap", "flips_per_anchor", "num_candidates",
                     "num_clustered", "num_from_candidates", "num_filled", "kmeans_iterations",
                     "zero_gradient_rows", "candidates_subsampled", "rho_min", "rho_max")


def mesh_of(k):
    return pool_mesh(jax.devices()[:k])


def assert_same(a, b, n=CASE["n"]):
    np.testing.assert_array_equal(np.asarray(a.selected), np.asarray(b.selected))
    np.testing.assert_array_equal(np.asarray(a.candidates)[:n], np.asarray(b.candidates)[:n])
    for name in EXACT_DIAGNOSTICS:
        got, want = getattr(a.diagnostics, name), getattr(b.diagnostics, name)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)


def one_device(case=CASE, **settings):
    x, labels, _, head = case_pool(case)
    select = make_alfamix_selector(budget=case["budget"], num_classes=case["num_classes"],
                                   block_size=case["block_size"], max_candidates=case["max_candidates"], **settings)
    return select(jax.random.key(7), jnp.asarray(x), jnp.asarray(labels), head)


def test_anchors_of_the_whole_pool_equal_those_of_its_gathered_labelled_rows():
    """compute_anchors over the pool (one device) and over its labelled rows gathered in row
    order into a padded buffer (a mesh, `Selector._labelled_rows`): the same bits. 300
    labelled rows (5 tiles of 64), class 4 with none, an unlabelled row that is NaN."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3001, 24)).astype(np.float32) * 3
    labels = np.full(3001, -1, np.int32)
    rows = np.sort(rng.choice(3000, 300, replace=False))
    labels[rows] = rng.integers(0, 4, 300)
    x[3000] = np.nan  # unlabelled: weighs nothing
    whole = compute_anchors(jnp.asarray(x), jnp.asarray(labels), 5)
    gathered = np.zeros(512, np.int32)
    gathered[:300] = rows
    buffer_labels = np.where(np.arange(512) < 300, labels[gathered], -1)
    compact = compute_anchors(jnp.asarray(x[gathered]), jnp.asarray(buffer_labels), 5)
    np.testing.assert_array_equal(np.asarray(whole).view(np.uint32), np.asarray(compact).view(np.uint32))
    np.testing.assert_allclose(whole[0], x[rows[labels[rows] == 0]].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole[4], x[rows].mean(0), rtol=1e-5, atol=1e-6)  # no labelled row: the overall mean


def test_the_devices_are_there():
    assert len(jax.devices()) >= 8, "conftest.py should give 8 CPU devices"


@pytest.fixture(scope="module")
def by_devices():
    return {k: run_case(mesh_of(k)) for k in DEVICE_COUNTS}


@pytest.mark.shipping_codegen
def test_same_selection_on_1_2_4_8_devices(by_devices):
    first = by_devices[1]
    d = first.diagnostics
    # The case exercises every stage: more candidates than the k-means buffer, k-means, a valid batch.
    assert int(d.num_candidates) > CASE["max_candidates"] and bool(d.candidates_subsampled)
    assert int(d.kmeans_iterations) > 0
    selected = np.asarray(first.selected)
    assert len(set(selected.tolist())) == CASE["budget"]
    _, labels, _, _ = case_pool()
    assert np.all(labels[selected] == -1)
    for k in DEVICE_COUNTS[1:]:
        assert_same(by_devices[k], first)


@pytest.fixture(scope="module")
def on_one_device():
    """The CASE selection without a mesh (the reference of the mesh runs; shared by two tests)."""
    return one_device()


@pytest.mark.shipping_codegen
def test_same_as_the_one_device_selector(by_devices, on_one_device):
    """The mesh changes where rows are computed, not what is selected."""
    assert_same(by_devices[4], on_one_device)


def test_rerun_is_identical(by_devices):
    assert_same(run_case(mesh_of(4)), by_devices[4])


def test_the_candidate_count_is_global(on_one_device):
    """The caps' early stop sees every device's candidates: a budget just below
    the first cap's global count stops after one cap on a mesh of 8, though no
    single device holds that many. (A mesh of one is not run: there the local
    count is the global one, so it could not tell a local stop from a global one.) The stop is the
    search's; diversity="random" after it spares a k-means program for this budget."""
    x, labels, _, head = case_pool()
    first_cap = int(on_one_device.diagnostics.flips_per_cap[0])
    budget = first_cap - 1
    mesh = mesh_of(8)
    select = make_alfamix_selector(mesh=mesh, budget=budget, num_classes=5, block_size=128, max_candidates=512,
                                   diversity="random")
    result = select(jax.random.key(7), shard_pool(mesh, x), labels, head)
    assert int(result.diagnostics.caps_tried) == 1
    assert int(result.diagnostics.num_candidates) == first_cap
    per_device = np.asarray(result.candidates).reshape(8, -1).sum(axis=1)
    assert per_device.max() <= budget  # the stop could not have been decided locally


def _mlp_head(params, z):
    hidden = jnp.tanh(z @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


@pytest.mark.parametrize("settings", [
    dict(alpha="random"),
    dict(linear_fast_path=False),
    dict(diversity="top-alpha"),
    dict(diversity="random"),
    dict(mlp=True),
], ids=["random-alpha", "general-closed-form", "top-alpha", "random-diversity", "mlp-head"])
def test_other_paths_match_across_meshes_and_one_device(settings):
    """Each path gives the one-device batch on a mesh of 8. One mesh size suffices here: the
    mesh code is the same for every device count, and 8 is its hardest case (2003 rows padded
    to 8 x 251, every reduction across devices); test_same_selection_on_1_2_4_8_devices runs
    the same layout code on 1, 2, 4 and 8 devices."""
    settings = dict(settings)
    if settings.pop("mlp", False):
        rng = np.random.default_rng(3)
        params = dict(w1=jnp.asarray(rng.normal(size=(16, 32)), jnp.float32) * 0.5, b1=jnp.zeros(32),
                      w2=jnp.asarray(rng.normal(size=(32, 5)), jnp.float32) * 0.5, b2=jnp.zeros(5))
        settings["head_apply"] = _mlp_head
        x, labels, _, _ = case_pool()
        mesh = mesh_of(8)
        select = make_alfamix_selector(mesh=mesh, budget=40, num_classes=5, block_size=128, max_candidates=256,
                                       **settings)
        on_mesh = select(jax.random.key(7), shard_pool(mesh, x), labels, params)
        reference = make_alfamix_selector(budget=40, num_classes=5, block_size=128, max_candidates=256,
                                          **settings)(jax.random.key(7), jnp.asarray(x), jnp.asarray(labels), params)
        assert int(reference.diagnostics.num_candidates) > 0
    else:
        on_mesh = run_case(mesh_of(8), **settings)
        reference = one_device(**settings)
    assert_same(on_mesh, reference)


def test_few_candidates_are_all_taken_then_filled():
    case = dict(CASE, sep=2.0, budget=300, max_candidates=512)  # well separated: fewer candidates than the budget
    reference = one_device(case)
    assert 0 < int(reference.diagnostics.num_candidates) < 300
    assert int(reference.diagnostics.num_filled) > 0
    assert_same(run_case(mesh_of(8), case), reference)


@pytest.mark.shipping_codegen
def test_streamed_from_a_memory_mapped_file_is_the_same(tmp_path, by_devices):
    """Streamed over a mesh of 4: the in-memory batch on that mesh (by_devices[4] is exactly that
    run) and on one device. One mesh size suffices: the streaming code is the same for every
    device count, and 4 has what 1 lacks (each block split over devices, padded rows)."""
    x, labels, _, head = case_pool()
    path = tmp_path / "pool.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    # A small block so the pool takes many streamed steps, with a padded last one.
    select = make_alfamix_selector(mesh=mesh_of(4), budget=CASE["budget"], num_classes=5,
                                   block_size=CASE["block_size"], max_candidates=CASE["max_candidates"], prefetch=3)
    streamed = select(jax.random.key(7), mapped, labels, head)
    assert_same(streamed, by_devices[4])
    assert_same(streamed, by_devices[1])


def test_top_k_over_a_mesh_matches_lax_top_k_with_ties():
    values = jnp.asarray(np.random.default_rng(0).integers(0, 5, 64).astype(np.float32))  # many ties
    want_v, want_i = jax.lax.top_k(values, 10)
    for k in (1, 2, 4, 8):
        mesh = mesh_of(k)
        got_v, got_i = jax.shard_map(lambda v: Rows("pool").top_k(v, 10), mesh=mesh,
                                     in_specs=jax.sharding.PartitionSpec("pool"),
                                     out_specs=jax.sharding.PartitionSpec(), check_vma=False)(values)
        np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
        np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))


def test_next_round_does_not_recompile():
    x, labels, _, head = case_pool()
    mesh = mesh_of(4)
    select = make_alfamix_selector(mesh=mesh, budget=40, num_classes=5, block_size=128, max_candidates=256)
    xs = shard_pool(mesh, x)
    first = select(jax.random.key(1), xs, labels, head)
    labels = labels.copy()
    labels[np.asarray(first.selected)] = 0  # label the batch: same labelled-buffer size bucket (80 -> 120 rows)
    with count_compiles() as compiles:
        select(jax.random.key(2), xs, labels, head)
    assert compiles[0] == 0


def test_a_labels_array_one_row_short_is_refused_on_a_mesh():
    """A padded pool cannot hide a short labels array: the ShardedPool carries its size."""
    x, labels, _, head = case_pool()
    mesh = mesh_of(8)
    select = make_alfamix_selector(mesh=mesh, budget=40, num_classes=5, block_size=128, max_candidates=256)
    for embeddings in (shard_pool(mesh, x), jnp.asarray(x), x):
        with pytest.raises(ValueError, match=r"labels: got shape \(2002,\); expected \(2003,\)"):
            select(jax.random.key(0), embeddings, labels[:-1], head)


def test_a_pool_that_does_not_split_evenly_is_placed_by_the_selector(by_devices):
    """A plain [N, D] array with N not a multiple of the device count is padded and placed."""
    x, labels, _, head = case_pool()
    select = make_alfamix_selector(mesh=mesh_of(8), budget=CASE["budget"], num_classes=5,
                                   block_size=CASE["block_size"], max_candidates=CASE["max_candidates"])
    assert_same(select(jax.random.key(7), jnp.asarray(x), jnp.asarray(labels), head), by_devices[1])


def test_one_device_features_are_refused_on_a_larger_mesh_and_run_on_a_mesh_of_one():
    """Each feature is refused on a mesh of 4. On a mesh of one device, the selector drops the
    mesh and places the pool on that device (make_alfamix_selector: mesh=None plus the device,
    the same for every feature), so one selector with all three features shows that they run
    there and select what they select without a mesh (one program to compile, not three). The
    mesh's device is not device 0, so the batch must come from that device, not the default.
    diversity="random": k-means would double the compile time and adds nothing to the placement."""
    x, labels, _, head = case_pool()
    features = dict(compat="reference", anchors="labelled", fused=True)
    for name, value in features.items():
        with pytest.raises(ValueError, match=f"{name}.* runs on one device, not on a mesh of 4"):
            make_alfamix_selector(mesh=mesh_of(4), budget=40, num_classes=5, **{name: value})
    device = jax.devices()[3]
    small = dict(budget=40, num_classes=5, block_size=128, max_candidates=256, diversity="random")
    on_one = make_alfamix_selector(mesh=pool_mesh([device]), **small, **features)
    without = make_alfamix_selector(**small, **features)
    got = on_one(jax.random.key(3), x, labels, head).selected
    assert got.devices() == {device}
    np.testing.assert_array_equal(np.asarray(got), np.asarray(without(jax.random.key(3), x, labels, head).selected))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_select_the_same_batch(tmp_path, by_devices):
    """jax.distributed over loopback: 2 processes x 2 CPU devices, gloo collectives."""
    out = tmp_path / "selection.npz"
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    with np.load(out) as got:
        assert int(got["devices"]) == 4
        np.testing.assert_array_equal(got["selected"], np.asarray(by_devices[1].selected))
        assert int(got["num_candidates"]) == int(by_devices[1].diagnostics.num_candidates)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_nan_rows_are_refused_with_their_row(streamed):
    x, labels, _, head = case_pool()
    unlabelled = int(np.flatnonzero(labels == -1)[5])
    x = x.copy()
    x[unlabelled, 3] = np.nan
    mesh = mesh_of(2)
    select = make_alfamix_selector(mesh=mesh, budget=40, num_classes=5, block_size=128, max_candidates=256)
    with pytest.raises(ValueError, match=f"embeddings: row {unlabelled} "):
        select(jax.random.key(0), x if streamed else shard_pool(mesh, x), labels, head)
    labelled = int(np.flatnonzero(labels >= 0)[3])
    x[unlabelled, 3] = 0.0
    x[labelled, 0] = np.inf  # its class anchor is not finite either: the row is still the one named
    with pytest.raises(ValueError, match=f"embeddings: row {labelled} "):
        select(jax.random.key(0), x if streamed else shard_pool(mesh, x), labels, head)
