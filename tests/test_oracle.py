"""The package's candidate search against the float64 NumPy oracle
(tests/oracle.py), on random well-conditioned pools and on a 1-D case whose
answer is worked out by hand."""
import functools

import jax
import numpy as np
import oracle
import pytest
from support import make_pool

from alfamix_jax import LinearHead, make_alfamix_selector

NUM_CLASSES = 5
SEEDS = (0, 1, 2, 3)
SEP = 0.6  # class separation: logit gaps stay moderate, so float32 gradients are accurate


def pool(seed):
    return make_pool(seed, sep=SEP)  # N=300 (60 labelled), D=16, C=5


@functools.cache
def selector(compat, fast, budget, step, num_classes=NUM_CLASSES):
    # One selector per setting for the whole module: a selector compiles once per shape.
    return make_alfamix_selector(
        budget=budget, num_classes=num_classes, compat=compat, alpha_cap_step=step, linear_fast_path=fast
    )


def oracle_search(x, labels, head, compat, budget, step, num_classes=NUM_CLASSES):
    reference = compat == "reference"
    caps = oracle.reference_caps(step) if reference else oracle.default_caps(step)
    return oracle.closed_form_search(
        x, labels, oracle.linear_head(head.weight, head.bias), num_classes, budget, caps,
        literal=reference, require_direction=not reference,
    )


PATHS = [
    pytest.param("reference", False, id="reference-literal"),
    pytest.param("default", True, id="default-fast-path"),
    pytest.param("default", False, id="default-general-path"),
]


@pytest.mark.parametrize("compat,fast", PATHS)
def test_candidates_equal_oracle(compat, fast):
    budget, step = 45, 0.2
    ignored, stops = 0, set()
    for seed in SEEDS:
        x, labels, _, head = pool(seed)
        expected = oracle_search(x, labels, head, compat, budget, step)
        result = selector(compat, fast, budget, step)(jax.random.key(seed), x, labels, head)
        d = result.diagnostics
        ignored += oracle.compare(result.candidates, d.caps_tried, expected, budget)
        tried = int(d.caps_tried)
        stops.add(tried)
        # Per-anchor flip counts: the anchors are the right class means, in class order.
        flips = expected.flips[:tried].sum(axis=2)  # [S, K]
        slack = expected.ambiguous[:tried].sum(axis=1, keepdims=True)
        assert np.all(np.abs(np.asarray(d.flips_per_anchor)[:tried] - flips) <= slack)
        assert np.all(np.asarray(d.flips_per_anchor)[tried:] == 0)
        union_slack = expected.ambiguous[:tried].any(axis=0).sum()
        assert np.all(np.abs(np.asarray(d.union_per_cap)[:tried] - expected.union_per_cap[:tried]) <= union_slack)
        assert int(d.num_candidates) == int(np.sum(result.candidates)) > budget
    # Non-vacuous: the seeds stop early at different caps, and ambiguous rows
    # are rare, not what makes the test pass.
    assert len(stops) > 1 and max(stops) < 5
    assert ignored <= len(SEEDS)


@pytest.mark.parametrize(
    "compat,fast,step,expected_caps",
    [
        # The original's float64 running sum: 11 caps, the last about 1.1 (Q4).
        pytest.param("reference", False, 0.1, oracle.reference_caps(0.1), id="reference-step0.1"),
        pytest.param("default", True, 0.3, np.array([0.3, 0.6, 0.9, 1.0]), id="default-fast-step0.3"),
        pytest.param("default", False, 0.3, np.array([0.3, 0.6, 0.9, 1.0]), id="default-general-step0.3"),
    ],
)
def test_cap_schedule_used_by_search(compat, fast, step, expected_caps):
    budget = 240  # all unlabelled rows, never exceeded: every cap is tried
    x, labels, _, head = pool(7)
    expected = oracle_search(x, labels, head, compat, budget, step)
    result = selector(compat, fast, budget, step)(jax.random.key(0), x, labels, head)
    d = result.diagnostics
    np.testing.assert_allclose(np.asarray(d.caps), expected_caps, rtol=1e-6)
    np.testing.assert_allclose(expected.caps, expected_caps, rtol=1e-12)
    assert int(d.caps_tried) == len(expected_caps)
    oracle.compare(result.candidates, d.caps_tried, expected, budget)
    # The union grows cap by cap as the oracle's does.
    slack = expected.ambiguous.any(axis=0).sum()
    assert np.all(np.abs(np.asarray(d.union_per_cap) - expected.union_per_cap) <= slack)


def one_dimensional_case():
    """Two classes on a line, logits (-x, x): a row at x < 0 has pseudo-label 0
    and its loss gradient points to +x. Labelled rows: class 0 at -2, class 1
    at +1 (the anchors). With D = 1, eps = cap, the step for anchor a is
    cap * |a - x|, so the row flips once cap > -x / max(|-2 - x|, |1 - x|)."""
    xs = np.array([-0.05, -0.3, -0.45, -1.8, -5.0])
    thresholds = -xs / np.maximum(np.abs(-2 - xs), np.abs(1 - xs))  # 0.026, 0.176, 0.290, 0.643, 0.833
    caps = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    first_cap = np.searchsorted(caps, thresholds)  # first cap index exceeding the threshold
    x = np.concatenate([xs, [-2.0, 1.0]])[:, None].astype(np.float32)
    labels = np.array([-1] * 5 + [0, 1], np.int32)
    head = LinearHead(np.array([[-1.0], [1.0]], np.float32), np.zeros(2, np.float32))
    return x, labels, head, first_cap


@pytest.mark.parametrize("compat,fast", PATHS)
def test_known_answer_on_a_line(compat, fast):
    x, labels, head, first_cap = one_dimensional_case()
    np.testing.assert_array_equal(first_cap, [0, 0, 1, 3, 4])
    budget = 5  # all five unlabelled rows: never exceeded, all caps tried
    select = selector(compat, fast, budget, 0.2, num_classes=2)
    d = select(jax.random.key(0), x, labels, head).diagnostics
    expected_union = [np.sum(first_cap <= s) for s in range(5)]  # 2, 3, 3, 4, 5
    np.testing.assert_array_equal(np.asarray(d.union_per_cap), expected_union)
    expected = oracle_search(x, labels, head, compat, budget, 0.2, num_classes=2)
    np.testing.assert_array_equal(expected.union_per_cap, expected_union)


@pytest.mark.parametrize("compat,fast", PATHS)
def test_known_answer_early_stop(compat, fast):
    # Budget 2: the first cap already flips rows 0 and 1 (2 rows, not more
    # than 2), the second adds row 2 (3 > 2): stop after two caps, 3 candidates.
    x, labels, head, _ = one_dimensional_case()
    result = selector(compat, fast, 2, 0.2, num_classes=2)(jax.random.key(0), x, labels, head)
    assert int(result.diagnostics.caps_tried) == 2
    np.testing.assert_array_equal(np.asarray(result.candidates), [True, True, True, False, False, False, False])
    selected = np.asarray(result.selected)
    assert len(selected) == 2 and set(selected) <= {0, 1, 2}


def test_oracle_literal_and_step_forms_agree():
    # Self-check of the oracle: the literal alpha and the gradient step give
    # the same flips away from thresholds (README: they differ by the 1e-8 term).
    x, labels, _, head = pool(3)
    literal = oracle_search(x, labels, head, "reference", 200, 0.2)
    step = oracle.closed_form_search(
        x, labels, oracle.linear_head(head.weight, head.bias), NUM_CLASSES, 200, oracle.reference_caps(0.2),
        literal=False, require_direction=False,
    )
    sure = ~(literal.ambiguous | step.ambiguous)[:, None, :]
    np.testing.assert_array_equal(literal.flips & sure, step.flips & sure)
    assert literal.flips.sum() > 100
