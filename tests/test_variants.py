"""Parts a researcher replaces with a function (anchors, diversity, alpha): a function that
computes what a built-in computes gives the built-in's batch bit for bit, on one device and
on a mesh; the README's examples run on both and agree; bad functions are named."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import variants
from sharded_cases import CASE, case_pool

from alfamix_jax import SelectorSettings, make_alfamix_selector, pool_mesh
from alfamix_jax.selection.settings import SettingError

SMALL = dict(budget=CASE["budget"], num_classes=CASE["num_classes"], block_size=CASE["block_size"],
             max_candidates=CASE["max_candidates"])


def select(mesh_devices=None, **settings):
    x, labels, _, head = case_pool()
    mesh = None if mesh_devices is None else pool_mesh(jax.devices()[:mesh_devices])
    selector = make_alfamix_selector(mesh=mesh, **SMALL, **settings)
    return selector(jax.random.key(7), jnp.asarray(x), jnp.asarray(labels), head)


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a.selected), np.asarray(b.selected))
    np.testing.assert_array_equal(np.asarray(a.candidates)[:CASE["n"]], np.asarray(b.candidates)[:CASE["n"]])
    assert int(a.diagnostics.num_filled) == int(b.diagnostics.num_filled)


@functools.cache
def builtin_batch(builtin):
    """The built-in's batch on one device (builtin: sorted (setting, name) pairs), once per module."""
    return select(None, **dict(builtin))


@pytest.mark.parametrize("devices", [None, 4], ids=["one-device", "mesh-4"])
@pytest.mark.parametrize("builtin, replacement", [
    (dict(anchors="class-means"), dict(anchors=variants.class_means)),
    (dict(diversity="random"), dict(diversity=variants.uniform_pick)),
    (dict(alpha="random"), dict(alpha=variants.gaussian_alpha)),
], ids=["anchors", "diversity", "alpha"])
def test_a_function_computing_the_builtin_gives_its_batch(devices, builtin, replacement):
    """The reference is the built-in's one-device batch for both layouts: the built-in gives that
    batch on a mesh (test_sharded.py: these paths on meshes), so on the mesh the function must
    give it too. The batch is drawn among the candidates by diversity="random" (or its function)
    in every case: k-means would add a long compile per layout and nothing to what anchors and
    alpha decide, the candidates, which are compared row by row."""
    builtin_result = builtin_batch(tuple(sorted((dict(diversity="random") | builtin).items())))
    assert int(builtin_result.diagnostics.num_candidates) > CASE["budget"]  # the choice among candidates runs
    assert_same(select(devices, **(dict(diversity="random") | replacement)), builtin_result)


# The README's three examples in one selector: each replaces its own part, so one program per
# layout runs all three (not one per example and layout).
README_PARTS = dict(anchors=variants.class_medoids, diversity=variants.farthest_first, alpha=variants.beta_alpha)


@functools.cache
def readme_batch():
    """The README examples' batch on one device, once per module."""
    return select(None, **README_PARTS)


def test_the_readme_examples_run_and_agree_across_devices():
    one = readme_batch()
    selected = np.asarray(one.selected)
    _, labels, _, _ = case_pool()
    assert len(set(selected.tolist())) == CASE["budget"] and np.all(labels[selected] == -1)
    assert_same(select(4, **README_PARTS), one)
    # The picks are farthest_first's, not the fill's.
    assert int(one.diagnostics.num_filled) == 0
    assert np.all(np.asarray(one.candidates)[selected])


def test_a_part_by_import_path_is_the_function():
    by_path = SelectorSettings(**{part: f"variants:{f.__name__}" for part, f in README_PARTS.items()})
    for part, function in README_PARTS.items():
        assert by_path.part(part) is function
    x, labels, _, head = case_pool()
    result = make_alfamix_selector(**SMALL, settings=by_path)(jax.random.key(7), x, labels, head)
    assert_same(result, readme_batch())
    with pytest.raises(SettingError, match="anchors: cannot import 'variants:no_such_thing'"):
        SelectorSettings(anchors="variants:no_such_thing")
    with pytest.raises(SettingError, match="diversity: got 'greedy'; expected one of kmeans, random, top-alpha"):
        SelectorSettings(diversity="greedy")


def test_a_diversity_function_is_kept_to_unlabelled_rows_once():
    """Labelled rows, repeats and rows past the pool count as 'none'; the fill completes the batch."""
    x, labels, _, head = case_pool()
    labelled = np.flatnonzero(labels >= 0)
    unlabelled = np.flatnonzero(labels == -1)

    def sloppy(key, embeddings, candidates, budget):
        rows = jnp.asarray(np.r_[labelled[:5], unlabelled[:5], unlabelled[:5], [len(labels) + 3, -7]])
        return jnp.pad(rows, (0, budget - rows.shape[0]), constant_values=-1).astype(jnp.int32)

    for devices in (None, 4):
        result = select(devices, diversity=sloppy)
        selected = np.asarray(result.selected)
        assert len(set(selected.tolist())) == CASE["budget"] and np.all(labels[selected] == -1)
        np.testing.assert_array_equal(selected[:5], unlabelled[:5])  # its valid picks first, in order
        assert int(result.diagnostics.num_filled) == CASE["budget"] - 5


@pytest.mark.parametrize("part, needle", [
    (dict(anchors=lambda x, labels, c: x[:3, :2]), r"anchors: the function '<lambda>' returned float32 \(3, 2\)"),
    (dict(diversity=lambda key, x, cands, budget: jnp.zeros(budget)), r"diversity: the function '<lambda>' returned "
                                                                      r"float32 \(40,\)"),
    (dict(alpha=lambda keys, u, g, a, cap: u[:, :1]), r"alpha: the alpha function '<lambda>' returned shape"),
], ids=["anchors", "diversity", "alpha"])
def test_a_function_of_the_wrong_shape_is_named(part, needle):
    with pytest.raises(ValueError, match=needle):
        select(None, **part)


def test_a_diversity_function_needs_the_pool_in_memory_on_a_mesh():
    x, labels, _, head = case_pool()
    selector = make_alfamix_selector(mesh=pool_mesh(jax.devices()[:2]), **SMALL, diversity=variants.farthest_first)
    with pytest.raises(ValueError, match="a built-in diversity rule"):
        selector(jax.random.key(0), x, labels, head)  # NumPy on a mesh: streamed
