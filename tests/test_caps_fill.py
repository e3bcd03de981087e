"""The cap schedules, the two batch fills, and input validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import load_fixture

from alfamix_jax import LinearHead, exact_caps, make_alfamix_selector, make_caps, pool_mesh, reference_caps
from alfamix_jax.selection.fill import fill_default, fill_reference

FEW = settings(max_examples=15, deadline=None)


# --- caps -------------------------------------------------------------------


def test_reference_caps_reproduce_the_original_drift():
    caps = reference_caps(0.1)
    assert len(caps) == 11  # 0.1 added ten times is 0.9999999999999999 < 1.0: one more step (Q4)
    assert caps[9] < 1.0
    assert caps[-1] == pytest.approx(1.1, abs=1e-12) and caps[-1] > 1.0


@pytest.mark.parametrize("fixture,step", [("closed_form", 0.2), ("random", 0.03125), ("learned", 0.03125)])
def test_reference_caps_equal_the_original_schedule(fixture, step):
    # The original's caps as it logged them (a prefix when it stopped early).
    logged = load_fixture(fixture)["step_alpha_caps"]
    caps = reference_caps(step)
    np.testing.assert_array_equal(caps[: len(logged)], logged)  # bit for bit, float64
    if fixture == "closed_form":
        np.testing.assert_array_equal(caps, [0.2, 0.4, 0.6000000000000001, 0.8, 1.0])


@FEW
@given(step=st.floats(0.005, 1.5))
def test_exact_caps_have_no_drift_and_end_at_one(step):
    caps = exact_caps(step)
    k = np.arange(1, len(caps) + 1)
    assert caps[-1] == 1.0 and np.all(caps <= 1.0)
    assert np.all(np.diff(caps) > 0)
    np.testing.assert_array_equal(caps[:-1], k[:-1] * step)  # products, not a running sum
    assert len(caps) == max(1, int(np.ceil(1.0 / step - 1e-9)))
    assert caps[-1] - (caps[-2] if len(caps) > 1 else 0.0) <= step + 1e-12


def test_exact_caps_examples():
    caps = exact_caps(0.1)
    assert len(caps) == 10 and caps[-1] == 1.0
    np.testing.assert_array_equal(caps[:9], np.arange(1, 10) * 0.1)  # 3 * 0.1, not 0.1 + 0.1 + 0.1
    np.testing.assert_array_equal(exact_caps(0.3), [0.3, 0.6, 0.8999999999999999, 1.0])
    np.testing.assert_array_equal(exact_caps(2.0), [1.0])
    np.testing.assert_array_equal(make_caps(0.1, "reference"), reference_caps(0.1))
    np.testing.assert_array_equal(make_caps(0.1, "default"), exact_caps(0.1))


@pytest.mark.parametrize("step", [0.0, -0.2, float("nan"), float("inf"), "0.2", None])
def test_make_caps_rejects_bad_steps(step):
    with pytest.raises(ValueError, match="alpha_cap_step"):
        make_caps(step, "default")


# --- fill -------------------------------------------------------------------

N, BUDGET = 40, 8
fill_default_jit = jax.jit(fill_default)
fill_reference_jit = jax.jit(fill_reference)


@st.composite
def fill_problems(draw):
    """picks [B] (-1 = none; distinct eligible candidates otherwise),
    candidates and eligible [N] bool, with at least B eligible rows."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    eligible = rng.random(N) < draw(st.floats(0.3, 1.0))
    eligible[rng.choice(N, BUDGET, replace=False)] = True
    candidates = eligible & (rng.random(N) < draw(st.floats(0.0, 1.0)))
    num_picks = draw(st.integers(0, min(BUDGET, int(candidates.sum()))))
    picks = np.full(BUDGET, -1, np.int32)
    slots = rng.choice(BUDGET, num_picks, replace=False)
    picks[slots] = rng.choice(np.flatnonzero(candidates), num_picks, replace=False) if num_picks else []
    return picks, candidates, eligible, seed


@FEW
@given(problem=fill_problems())
def test_fill_default(problem):
    picks, candidates, eligible, seed = problem
    selected, filled = fill_default_jit(jax.random.key(seed), picks, candidates, eligible)
    selected = np.asarray(selected)
    valid_picks = picks[picks >= 0]
    assert selected.shape == (BUDGET,)
    assert len(set(selected.tolist())) == BUDGET, "duplicate in the batch"
    assert eligible[selected].all(), "an ineligible (labelled) row in the batch"
    # The picks first, in their order; then the fill.
    np.testing.assert_array_equal(selected[: len(valid_picks)], valid_picks)
    assert int(filled) == BUDGET - len(valid_picks)
    # Candidates before the rest of the pool: a non-candidate only once no
    # unpicked candidate is left.
    extra = selected[len(valid_picks) :]
    spare_candidates = set(np.flatnonzero(candidates).tolist()) - set(valid_picks.tolist())
    from_candidates = candidates[extra]
    assert np.all(np.diff(from_candidates.astype(int)) <= 0)  # candidates, then the rest
    assert from_candidates.sum() == min(len(extra), len(spare_candidates))


def test_fill_default_is_random_among_candidates():
    # Which spare candidates fill the batch depends on the key.
    picks = np.full(BUDGET, -1, np.int32)
    candidates = np.zeros(N, bool)
    candidates[:20] = True
    eligible = np.ones(N, bool)
    batches = {tuple(sorted(np.asarray(fill_default_jit(jax.random.key(s), picks, candidates, eligible)[0])))
               for s in range(5)}
    assert len(batches) > 1
    assert all(set(b) <= set(range(20)) for b in batches)


def test_fill_reference_samples_with_replacement():
    # The original's np.random.choice(unlabelled, remaining): with replacement (Q3).
    # Three eligible rows, five slots: a repeat is certain.
    picks = np.full(5, -1, np.int32)
    eligible = np.zeros(N, bool)
    eligible[[3, 17, 30]] = True
    selected, filled = jax.jit(fill_reference)(jax.random.key(0), picks, eligible)
    selected = np.asarray(selected)
    assert int(filled) == 5
    assert set(selected.tolist()) <= {3, 17, 30} and len(set(selected.tolist())) < 5

    # Ten eligible rows, eight slots, two picks: 6 draws from the 8 unpicked
    # rows repeat with probability 1 - 8!/(2! 8^6) ~ 0.92; uniform over them.
    picks = np.array([2, 5, -1, -1, -1, -1, -1, -1], np.int32)
    eligible = np.zeros(N, bool)
    eligible[:10] = True
    repeats, counts = 0, np.zeros(N)
    for seed in range(200):
        selected, filled = fill_reference_jit(jax.random.key(seed), picks, eligible)
        selected = np.asarray(selected)
        np.testing.assert_array_equal(selected[:2], [2, 5])
        extra = selected[2:]
        assert eligible[extra].all() and not np.isin(extra, [2, 5]).any(), "fill drew a labelled or picked row"
        repeats += len(set(extra.tolist())) < len(extra)
        np.add.at(counts, extra, 1)
    assert 0.85 * 200 <= repeats <= 0.98 * 200
    unpicked = [0, 1, 3, 4, 6, 7, 8, 9]
    expected = 200 * 6 / 8  # 150 per row
    assert np.all(np.abs(counts[unpicked] - expected) < 4 * np.sqrt(expected)), counts[unpicked]


# --- validation ---------------------------------------------------------------


def good_pool():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(20, 4)).astype(np.float32)
    labels = np.full(20, -1, np.int64)
    labels[:5] = [0, 1, 2, 0, 1]
    weight = rng.normal(size=(3, 4)).astype(np.float32)
    bias = np.zeros(3, np.float32)
    return dict(embeddings=embeddings, labels=labels, head_weight=weight, head_bias=bias, budget=4)


def with_(**changes):
    pool = good_pool()
    for name, change in changes.items():
        pool[name] = change(pool[name]) if callable(change) else change
    return pool


def nan_at_0(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


BAD_POOLS = {
    "embeddings rank 3": (with_(embeddings=lambda e: e[None]), "embeddings"),
    "embeddings rank 1": (with_(embeddings=lambda e: e[:, 0]), "embeddings"),
    "embeddings int dtype": (with_(embeddings=lambda e: e.astype(np.int32)), "embeddings"),
    "embeddings NaN": (with_(embeddings=nan_at_0), "embeddings"),
    "embeddings inf": (with_(embeddings=lambda e: np.where(e > 1, np.inf, e).astype(np.float32)), "embeddings"),
    "embeddings a list": (with_(embeddings=lambda e: e.tolist()), "embeddings"),
    "labels rank 2": (with_(labels=lambda lab: lab[:, None]), "labels"),
    "labels float dtype": (with_(labels=lambda lab: lab + 0.5), "labels"),
    "labels too large": (with_(labels=lambda lab: np.where(np.arange(20) == 7, 3, lab)), "labels"),
    "labels below -1": (with_(labels=lambda lab: np.where(np.arange(20) == 7, -2, lab)), "labels"),
    "labels none labelled": (with_(labels=lambda lab: np.full_like(lab, -1)), "labels"),
    "labels wrong length": (with_(labels=lambda lab: lab[:-1]), "labels"),
    "head_weight wrong D": (with_(head_weight=lambda w: w[:, :3]), "head_weight"),
    "head_weight rank 1": (with_(head_weight=lambda w: w[0]), "head_weight"),
    "head_weight NaN": (with_(head_weight=nan_at_0), "head_weight"),
    "head_bias wrong C": (with_(head_bias=lambda b: b[:2]), "head_bias"),
    "head_bias int dtype": (with_(head_bias=lambda b: b.astype(np.int64)), "head_bias"),
    "budget 0": (with_(budget=0), "budget"),
    "budget negative": (with_(budget=-3), "budget"),
    "budget above unlabelled": (with_(budget=16), "budget"),
    "budget float": (with_(budget=2.0), "budget"),
    "budget bool": (with_(budget=True), "budget"),
}


ENTRIES = ("one-device", "one-device-arrays", "mesh", "streamed")


def _on_device(a):
    """A NumPy array as a device array, where JAX keeps its kind (float or integer)."""
    return jnp.asarray(a) if isinstance(a, np.ndarray) and a.dtype.kind in "fi" else a


def _select(pool, entry):
    """The public entry under test: one device with host arrays or device arrays (whose
    label values are checked at the search's host read), a 2-device mesh (device arrays), or
    a mesh streaming a NumPy pool."""
    budget = pool.pop("budget")
    mesh = None if entry.startswith("one-device") else pool_mesh(jax.devices()[:2])
    select = make_alfamix_selector(budget=budget, num_classes=3, mesh=mesh)
    x, labels = pool["embeddings"], pool["labels"]
    if entry in ("mesh", "one-device-arrays"):
        x = _on_device(x)
    if entry == "one-device-arrays":
        labels = _on_device(labels)
    return select(jax.random.key(0), x, labels, LinearHead(pool["head_weight"], pool["head_bias"]))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", BAD_POOLS, ids=list(BAD_POOLS))
def test_every_entry_names_the_bad_argument(case, entry):
    pool, name = BAD_POOLS[case]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        _select(dict(pool), entry)


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_entry_accepts_a_good_pool(entry):
    for budget in (4, 15):  # 15: exactly the unlabelled rows
        result = _select(dict(good_pool(), budget=budget), entry)
        assert len(set(np.asarray(result.selected).tolist())) == budget


def test_device_labels_are_checked_at_the_search_host_read():
    pool = good_pool()
    labels = jnp.asarray(np.where(np.arange(20) == 7, 3, pool["labels"]), jnp.int32)
    select = make_alfamix_selector(budget=4, num_classes=3)
    head = LinearHead(pool["head_weight"], pool["head_bias"])
    with pytest.raises(ValueError, match=r"labels: got the value 3; expected -1 \(unlabelled\) or a class in"):
        select(jax.random.key(0), pool["embeddings"], labels, head)


def test_a_head_with_more_classes_than_num_classes_is_refused():
    pool = good_pool()
    select = make_alfamix_selector(budget=4, num_classes=2)
    with pytest.raises(ValueError, match=r"head_weight: got a float32 array of shape \(3, 4\); expected .*\(2, 4\)"):
        select(jax.random.key(0), pool["embeddings"], np.where(pool["labels"] >= 0, pool["labels"] % 2, -1),
               LinearHead(pool["head_weight"], pool["head_bias"]))


def test_any_head_is_checked_against_d_and_num_classes():
    pool = good_pool()
    w = jnp.asarray(pool["head_weight"])

    def head_apply(params, z):
        return z @ params.T

    select = make_alfamix_selector(budget=4, num_classes=3, head_apply=head_apply)
    with pytest.raises(ValueError, match=r"head_apply\(head_params, z \[n, D=4\]\) failed"):
        select(jax.random.key(0), pool["embeddings"], pool["labels"], w.T)  # transposed: [4, 3]
    assert select(jax.random.key(0), pool["embeddings"], pool["labels"], w).selected.shape == (4,)
    select = make_alfamix_selector(budget=4, num_classes=4, head_apply=head_apply)
    with pytest.raises(ValueError, match=r"returned float32 array of shape \(2, 3\) for n=2; expected"):
        select(jax.random.key(0), pool["embeddings"], pool["labels"], w)


def test_a_budget_above_the_unlabelled_rows_never_returns_labelled_rows():
    """The issue's case: 1,700 unlabelled rows and budget 1,900 used to return 200 labelled rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1900, 8)).astype(np.float32)
    labels = np.full(1900, -1, np.int32)
    labels[:200] = rng.integers(0, 3, 200)
    head = LinearHead(rng.normal(size=(3, 8)).astype(np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"budget \(1900\) is larger than the number of unlabelled rows \(1700\)"):
        make_alfamix_selector(budget=1900, num_classes=3)(jax.random.key(0), x, labels, head)


def test_the_key_is_checked():
    pool = good_pool()
    select = make_alfamix_selector(budget=4, num_classes=3)
    with pytest.raises(ValueError, match="key: got int"):
        select(0, pool["embeddings"], pool["labels"], LinearHead(pool["head_weight"], pool["head_bias"]))
