"""Active-learning rounds: the pool keeps its shape and `labels` grows, so a
selector compiled in round 1 is reused as is; and what was labelled is never
selected again.

Shapes and settings are test_properties.py's (N=64, D=8, C=4, B=6, blocks of 16 rows: several
blocks, the last one shifted back), so in a whole-suite run the default selector's programs
come from the session's compilation cache."""
import functools

import jax
import numpy as np
import pytest
from support import count_compiles, make_pool

from alfamix_jax import linear_head_apply, make_alfamix_selector

N, DIM, NUM_CLASSES, BUDGET = 64, 8, 4, 6


class CountingHead:
    """The linear head, counting how often it is traced (called in Python)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, params, z):
        self.calls += 1
        return linear_head_apply(params, z)


@functools.cache
def default_selector():
    return make_alfamix_selector(budget=BUDGET, num_classes=NUM_CLASSES, block_size=16)


def run_rounds(select, x, labels, true, head, rounds=3):
    """Label each round's batch with the true labels; return per-round
    (selection, labels it was made with, compiles during the round)."""
    history = []
    for r in range(rounds):
        with count_compiles() as compiles:
            result = jax.device_get(select(jax.random.fold_in(jax.random.key(0), r), x, labels, head))
        history.append((result, labels.copy(), compiles[0]))
        labels = labels.copy()
        labels[result.selected] = true[result.selected]
    return history


@pytest.mark.parametrize(
    "settings",
    [
        dict(),  # linear fast path
        dict(linear_fast_path=False),
        dict(alpha="random", compat="reference"),
        dict(alpha="learned"),
    ],
    ids=["fast-path", "general-path", "random-reference", "learned"],
)
def test_no_recompile_after_round_one(settings):
    x, labels, true, head = make_pool(0, n=N, dim=DIM, num_classes=NUM_CLASSES, labelled=12, sep=0.3)
    counting = CountingHead()
    head_apply = None if settings.get("linear_fast_path", True) and settings.get("alpha") is None else counting
    select = make_alfamix_selector(
        budget=BUDGET, num_classes=NUM_CLASSES, head_apply=head_apply, block_size=16, **settings
    )
    history = run_rounds(select, x, labels, true, head)
    traced_in_round_one = counting.calls
    (first, _, compiles_one), *later = history
    assert compiles_one > 0  # round one compiles (the counter works)
    for result, _, compiles in later:
        # Every round clusters (more candidates than the budget), so round one
        # compiled the same programs these rounds run.
        assert int(result.diagnostics.num_candidates) > BUDGET
        assert compiles == 0, f"{compiles} compilations in a later round"
    assert int(first.diagnostics.num_candidates) > BUDGET
    if head_apply is not None:
        assert traced_in_round_one > 0 and counting.calls == traced_in_round_one


def test_labelled_rows_are_never_selected_again():
    x, labels, true, head = make_pool(1, n=N, dim=DIM, num_classes=NUM_CLASSES, labelled=12, sep=0.3)
    history = run_rounds(default_selector(), x, labels, true, head, rounds=4)
    seen = set()
    for result, labels_used, _ in history:
        batch = set(np.asarray(result.selected).tolist())
        assert len(batch) == BUDGET
        assert not batch & seen, "a row labelled in an earlier round was selected again"
        assert np.all(labels_used[list(batch)] == -1)
        assert not np.any(result.candidates & (labels_used >= 0))
        seen |= batch
    # The labelled set grew by a batch per round.
    assert np.sum(history[-1][1] >= 0) == np.sum(labels >= 0) + 3 * BUDGET


def test_more_labels_change_the_anchors_and_the_selection():
    # Sensible change, not just different rows: labelling the batch moves
    # the class anchors, so the candidate set changes; it is not recomputed
    # from a cached state. Whether a given batch moves the anchors far enough to change a
    # candidate depends on the rows k-means picked, so a few keys are tried: with a cached
    # state none of them would change anything.
    x, labels, true, head = make_pool(2, n=N, dim=DIM, num_classes=NUM_CLASSES, labelled=12, sep=0.3)
    select = default_selector()
    changed = []
    for seed in range(4):
        before = jax.device_get(select(jax.random.key(seed), x, labels, head))
        more = labels.copy()
        more[before.selected] = true[before.selected]
        after = jax.device_get(select(jax.random.key(seed), x, more, head))
        changed.append(not np.array_equal(before.candidates & (more < 0), after.candidates))
    assert any(changed), changed
    key = jax.random.key(3)
    # Same key, same labels: the same result (no hidden state between calls).
    again = jax.device_get(select(key, x, labels, head))
    np.testing.assert_array_equal(again.selected, before.selected)
    np.testing.assert_array_equal(again.candidates, before.candidates)
