"""Parity with the original PyTorch code on its captured runs
(tests/fixtures/*.npz: the inputs of each query, the original's internal
state per cap, and its result; tests/fixtures/README.md says what each
one shows).

Fixture arrays "per unlabelled row" are indexed by unlabelled position;
`ulb_idxs` maps them to pool rows. Q1 rows (defect Q1: torch's float32 norm
of the mean-reduced gradient row underflows to 0, so the original's alpha is
NaN and its flips are artefacts) are excluded from row-by-row parity.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import fixture_head, fixture_labels, load_fixture

from alfamix_jax import compute_anchors, linear_head_apply, make_alfamix_selector, pseudo_labels
from alfamix_jax.selection.gradients import loss_gradient, normalise_rows
from alfamix_jax.selection.mixing import Block, closed_form_flips

CLOSED_FORM = [
    "closed_form",
    "closed_form_relu",
    "closed_form_emptyclass3",
    "closed_form_fill",
    "closed_form_small",
    "closed_form_zero_cand",
    "closed_form_sep1.2",
]
NUM_CLASSES = 10


@functools.cache
def fixture(name):
    return load_fixture(name)


@functools.cache
def selector(budget, compat, alpha="closed-form", step=0.2):
    return make_alfamix_selector(
        budget=budget, num_classes=NUM_CLASSES, compat=compat, alpha=alpha, alpha_cap_step=step
    )


@functools.cache
def run(name, compat, seed=0):
    fx = fixture(name)
    select = selector(int(fx["budget"]), compat, step=float(fx["alpha_cap_arg"]))
    return jax.device_get(select(jax.random.key(seed), fx["pool_embeddings"], fixture_labels(fx), fixture_head(fx)))


def q1_rows(fx):
    """Unlabelled positions where torch's float32 norm of the gradient row is 0."""
    return (fx["grads"].astype(np.float32) ** 2).sum(axis=1) == 0


def meta(fx):
    return json.loads(str(fx["meta_json"]))


@jax.jit
def flips_by_cap_and_anchor(u, head, anchors, eps, torch_nan):
    """The literal closed form on every row u [N, D], for every eps [S] and
    anchor [K, D], built from the package's pieces; `torch_nan` [N] marks the
    rows to treat as the original's NaN rows (Q1), or None. -> [S, K, N] bool."""
    pseudo = pseudo_labels(linear_head_apply, head, u)
    direction, _ = normalise_rows(loss_gradient(linear_head_apply, head, u, pseudo))
    block = Block(u, direction, pseudo, jnp.arange(u.shape[0]), torch_nan)

    def flips(anchor, e):
        return closed_form_flips(linear_head_apply, head, block, anchor, e, literal=True)[0]

    return jax.vmap(lambda e: jax.vmap(lambda a: flips(a, e))(anchors))(eps)


@pytest.mark.parametrize("name", CLOSED_FORM + ["random", "learned"])
def test_pseudo_labels_equal_pred_1(name):
    fx = fixture(name)
    pseudo = pseudo_labels(linear_head_apply, fixture_head(fx), jnp.asarray(fx["ulb_embeddings"]))
    np.testing.assert_array_equal(np.asarray(pseudo), fx["pred_1"])
    np.testing.assert_array_equal(fx["ulb_embeddings"], fx["pool_embeddings"][fx["ulb_idxs"]])


@pytest.mark.shipping_codegen
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_flips_by_cap_and_anchor_equal_class_pc(name):
    fx = fixture(name)
    x, labels, head = fx["pool_embeddings"], fixture_labels(fx), fixture_head(fx)
    caps = fx["step_alpha_caps"]  # [S]
    dim = x.shape[1]
    np.testing.assert_allclose(fx["class_alpha_cap_used"], np.repeat(caps[:, None] / np.sqrt(dim), NUM_CLASSES, 1))
    anchors = compute_anchors(jnp.asarray(x), jnp.asarray(labels), NUM_CLASSES)
    eps = jnp.asarray(caps / np.sqrt(dim), jnp.float32)
    u = jnp.asarray(fx["ulb_embeddings"])
    q1 = q1_rows(fx)
    flips = np.asarray(flips_by_cap_and_anchor(u, head, anchors, eps, None))
    assert flips.shape == fx["class_pc"].shape
    # The real arithmetic agrees with the original on every row it computes without a NaN.
    np.testing.assert_array_equal(flips[:, :, ~q1], fx["class_pc"][:, :, ~q1])
    # With the Q1 rows flagged, the emulation reproduces the artefacts too.
    emulated = np.asarray(flips_by_cap_and_anchor(u, head, anchors, eps, jnp.asarray(q1)))
    np.testing.assert_array_equal(emulated, fx["class_pc"])
    if name == "closed_form_sep1.2":
        assert q1.sum() == 1945 and not flips[:, :, ~q1].any()
    else:
        assert not q1.any()
    if name != "closed_form_zero_cand":
        assert fx["class_pc"].sum() > 0  # flips happen: the comparison is not all-False


@pytest.mark.shipping_codegen
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_reference_mode_matches_the_original_run(name):
    fx = fixture(name)
    result = run(name, "reference")
    d = result.diagnostics
    ulb = fx["ulb_idxs"]
    num_caps = len(fx["step_alpha_caps"])
    np.testing.assert_allclose(d.caps[:num_caps], fx["step_alpha_caps"], rtol=1e-7)
    assert int(d.caps_tried) == num_caps
    # Cap by cap: the union so far and the flips of each anchor.
    np.testing.assert_array_equal(d.union_per_cap[:num_caps], fx["step_cum_candidate"].sum(axis=1))
    np.testing.assert_array_equal(d.flips_per_anchor[:num_caps], fx["class_pc"].sum(axis=2))
    np.testing.assert_array_equal(d.flips_per_cap[:num_caps], fx["step_pred_change"].sum(axis=1))
    expected = fx["final_candidate"] if "final_candidate" in fx else np.zeros(len(ulb), bool)
    np.testing.assert_array_equal(result.candidates[ulb], expected)
    assert not result.candidates[fx["lb_idxs"]].any()
    check_batch(fx, result, unique=False)


def check_batch(fx, result, *, unique):
    """The selection: `budget` unlabelled rows, holding min(budget, #candidates)
    candidates from the diversity step (distinct), the rest a fill."""
    budget = int(fx["budget"])
    d = result.diagnostics
    selected = np.asarray(result.selected)
    num_candidates = int(result.candidates.sum())
    assert selected.shape == (budget,) and selected.dtype == np.int32
    assert not fx["idxs_lb"][selected].any(), "a labelled row was selected"
    assert int(d.num_candidates) == num_candidates
    picked = min(budget, num_candidates)
    picks = selected[:picked]
    assert len(set(picks.tolist())) == picked, "duplicate among the diversity picks"
    assert result.candidates[picks].all()
    assert int(d.num_filled) == budget - picked
    assert int(d.num_from_candidates) >= picked
    if num_candidates <= budget:  # every candidate is taken, the rest is a fill
        assert set(picks.tolist()) == set(np.flatnonzero(result.candidates).tolist())
        assert not result.candidates[selected[picked:]].any()
    if unique:
        assert len(set(selected.tolist())) == budget


def test_sep12_default_mode_fixes_q1():
    """closed_form_sep1.2: the original stopped after the first cap only
    because its 1753 candidates were all Q1 artefacts (rows whose float32
    gradient norm underflows, so alpha is NaN and NaN logits argmax to class
    0: every such row with a pseudo-label other than 0 "flips"). Reference
    mode reproduces that (test above). Default mode computes a real direction
    for those rows, finds no flip at any cap, so it tries all five caps, has
    no candidate and fills the batch; on the rows the original computed
    without a NaN it agrees with the original."""
    fx = fixture("closed_form_sep1.2")
    q1 = q1_rows(fx)
    assert len(fx["step_alpha_caps"]) == 1
    np.testing.assert_array_equal(fx["final_candidate"], q1 & (fx["pred_1"] != 0))
    result = run("closed_form_sep1.2", "default")
    d = result.diagnostics
    assert int(d.caps_tried) == 5
    candidates = result.candidates[fx["ulb_idxs"]]
    np.testing.assert_array_equal(candidates[~q1], fx["final_candidate"][~q1])
    assert not candidates.any()
    check_batch(fx, result, unique=True)
    # Rows with an exactly zero float32 gradient are counted, and are not candidates.
    assert int(d.zero_gradient_rows) > 0


@pytest.mark.parametrize("compat", ["reference", "default"])
def test_zero_candidates_still_give_a_batch(compat):
    """The original crashed with no candidate (Q2); ours fills the batch."""
    fx = fixture("closed_form_zero_cand")
    assert "np.int" in meta(fx)["error"]
    result = run("closed_form_zero_cand", compat)
    budget = int(fx["budget"])
    assert int(result.diagnostics.num_candidates) == 0
    assert int(result.diagnostics.num_filled) == budget
    selected = np.asarray(result.selected)
    assert selected.shape == (budget,)
    assert set(selected.tolist()) <= set(fx["ulb_idxs"].tolist())
    if compat == "default":
        assert len(set(selected.tolist())) == budget


@pytest.mark.parametrize("name", ["closed_form_fill", "closed_form_small"])
def test_fill_count_is_budget_minus_candidates(name):
    fx = fixture(name)
    m = meta(fx)
    for compat in ("reference", "default"):
        d = run(name, compat).diagnostics
        assert int(d.num_candidates) == m["n_candidates_final"]
        assert int(d.num_filled) == m["n_random_fill"] == int(fx["budget"]) - m["n_candidates_final"]


@pytest.mark.parametrize("name", [n for n in CLOSED_FORM if n != "closed_form_sep1.2"])
def test_default_mode_on_fixtures(name):
    """Default mode: a batch of `budget` distinct unlabelled rows, and the same
    candidates as the original (no fixture row sits near a threshold, and
    exact_caps(0.2) equals the original's caps up to float drift)."""
    fx = fixture(name)
    result = run(name, "default")
    check_batch(fx, result, unique=True)
    expected = run(name, "reference").candidates
    np.testing.assert_array_equal(result.candidates, expected)
    assert int(result.diagnostics.zero_gradient_rows) == 0


def test_kmeans_quality_close_to_the_original():
    # Same candidates, same normalisation: k-means++ / Lloyd inertia comparable
    # to scikit-learn's on the original's run (a different RNG, so not equal).
    for name in ("closed_form", "closed_form_relu"):
        fx = fixture(name)
        ours = [float(run(name, "reference", seed).diagnostics.kmeans_inertia) for seed in range(2)]
        theirs = meta(fx)["kmeans_inertia"]
        assert np.mean(ours) <= 1.15 * theirs, (name, ours, theirs)


@pytest.mark.parametrize("name,alpha", [("random", "random"), ("learned", "learned")])
def test_random_and_learned_alpha_statistics(name, alpha):
    """Random draws differ from torch's, so compare counts: over three keys,
    reference mode tries as many caps as the original and its union grows
    cap by cap like the original's. Over 8 keys the final counts were
    115-130 (original 126) for random alpha and 157-162 (original 161) for
    learned alpha; the learned path is nearly deterministic because Adam
    pushes alpha to the cap."""
    fx = fixture(name)
    x, labels, head = fx["pool_embeddings"], fixture_labels(fx), fixture_head(fx)
    step = float(fx["alpha_cap_arg"])
    select = selector(int(fx["budget"]), "reference", alpha=alpha, step=step)
    original = fx["step_cum_candidate"].sum(axis=1)  # [S]
    num_caps = len(original)
    unions = []
    for seed in range(3):
        result = jax.device_get(select(jax.random.key(seed), x, labels, head))
        d = result.diagnostics
        assert int(d.caps_tried) == num_caps
        assert not result.candidates[fx["lb_idxs"]].any()
        unions.append(d.union_per_cap[:num_caps])
        check_batch(fx, result, unique=False)
    mean = np.mean(unions, axis=0)
    if alpha == "random":
        tolerance, final = 3 * np.sqrt(original) + 3, 0.1  # counts of rare events: a Poisson-like spread
    else:
        # Tight enough to tell the original's Adam (reset every step, Q5; 157-162
        # here) from one that keeps its state (150-157, the default mode's).
        tolerance, final = 0.03 * original + 2, 0.03
    assert np.all(np.abs(mean - original) <= tolerance), (mean, original)
    assert abs(mean[-1] - original[-1]) <= final * original[-1], (mean[-1], original[-1])
