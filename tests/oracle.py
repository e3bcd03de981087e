"""A float64 NumPy oracle of ALFA-Mix's closed-form candidate search.

Written from a description of the original code's query (the steps below), not
from the package, so that the tests compare two independent readings of the
same rule:

1. pseudo-label p = argmax f(u);
2. g = d CE(f(u), p) / du (only its direction matters);
3. anchors: mean labelled embedding per class, an empty class takes the mean
   of all labelled embeddings;
4. caps: the original's float64 running sum (`reference_caps`) or exact
   multiples ending at 1.0 (`default_caps`); eps = cap / sqrt(D);
5. literal alpha = eps ||z|| / ||g|| * g / (z + 1e-8) with z = a - u, mix =
   (1 - alpha) u + alpha a (reference), or the same step without the 1e-8
   guard, mix = u + eps ||a - u|| g / ||g|| (default); a row flips when
   argmax f(mix) != p;
6. candidates: the union over caps, stopping right after the first cap at
   which the union holds more than `budget` rows.

Floating point: the package works in float32, this oracle in float64, so a
(row, anchor, cap) whose decision changes when eps moves by a relative
tolerance is reported as ambiguous, and `compare` ignores such rows (and
allows the early stop to land on any cap those rows could justify). The
tolerance is `rel_tol`, widened on confident rows: float32 computes
dCE/dlogit_p = softmax_p - 1 with an absolute error up to ~6e-8 (half an ulp
of 1), so where the other classes hold a probability mass m, the float32
gradient direction is off by about 6e-8 / m (for m < 6e-8 it can be
unrelated to the true one; the original has the same error). Hence
tolerance = rel_tol + 1e-6 / m; pools meant for comparison keep m large.
A row whose gradient is exactly zero has no direction: it gets no step here
(the original's NaN artefact Q1 is not reproduced), and with
`require_direction` it is never a candidate.
"""
import dataclasses
import math
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Head:
    """A classifier head in float64: logits and the CE input gradient."""

    logits: Callable[[np.ndarray], np.ndarray]  # z [n, D] -> [n, C]
    gradient: Callable[[np.ndarray, np.ndarray], np.ndarray]  # z [n, D], p [n] -> dCE/dz [n, D]


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _dce_dlogits(logits, p):
    delta = softmax(logits)
    delta[np.arange(len(p)), p] -= 1.0
    return delta  # [n, C] = softmax - onehot


def linear_head(weight, bias) -> Head:
    """PyTorch convention: logits = z @ weight.T + bias; weight [C, D]."""
    w, b = np.asarray(weight, np.float64), np.asarray(bias, np.float64)

    def logits(z):
        return z @ w.T + b

    def gradient(z, p):
        return _dce_dlogits(logits(z), p) @ w

    return Head(logits, gradient)


def mlp_head(k1, b1, k2, b2) -> Head:
    """Flax Dense convention (kernels [in, out]): relu(z @ k1 + b1) @ k2 + b2."""
    k1, b1, k2, b2 = (np.asarray(a, np.float64) for a in (k1, b1, k2, b2))

    def logits(z):
        return np.maximum(z @ k1 + b1, 0.0) @ k2 + b2

    def gradient(z, p):
        pre = z @ k1 + b1
        delta = _dce_dlogits(np.maximum(pre, 0.0) @ k2 + b2, p)
        return ((delta @ k2.T) * (pre > 0)) @ k1.T

    return Head(logits, gradient)


def reference_caps(step):
    """`cap += step` in float64 while `cap < 1.0` (the original's loop)."""
    caps, cap = [], 0.0
    while cap < 1.0:
        cap += step
        caps.append(cap)
    return np.array(caps)


def default_caps(step):
    """k * step for k = 1, 2, ..., the last one exactly 1.0, none above 1."""
    count = max(1, math.ceil(round(1.0 / step, 9)))
    return np.array([min(k * step, 1.0) for k in range(1, count)] + [1.0])


def class_anchors(embeddings, labels, num_classes):
    """[C, D]: mean labelled embedding per class (by true label); a class
    with no labelled row takes the mean of all labelled rows."""
    x = np.asarray(embeddings, np.float64)
    labelled = labels >= 0
    overall = x[labelled].mean(axis=0)
    return np.stack([x[labels == c].mean(axis=0) if np.any(labels == c) else overall for c in range(num_classes)])


def closed_form_mix(u, direction, anchor, eps, *, literal):
    """The mixed embedding for one anchor. direction: unit gradient rows."""
    z = anchor - u
    length = eps * np.linalg.norm(z, axis=-1, keepdims=True)
    if literal:
        alpha = length * direction / (z + 1e-8)
        return (1.0 - alpha) * u + alpha * anchor
    return u + length * direction


@dataclasses.dataclass
class OracleSearch:
    eligible: np.ndarray  # [N] bool (unlabelled)
    pseudo: np.ndarray  # [N]
    has_direction: np.ndarray  # [N] nonzero loss gradient
    caps: np.ndarray  # [S]
    flips: np.ndarray  # [S, K, N] for every cap (not only those tried); False on labelled rows
    ambiguous: np.ndarray  # [S, N] some anchor's decision at that cap is within the tolerance
    union_per_cap: np.ndarray  # [S] union over caps 0..s (nominal decisions)
    caps_tried: int
    candidates: np.ndarray  # [N] union over the caps tried


def closed_form_search(
    embeddings, labels, head: Head, num_classes, budget, caps, *, literal, require_direction, rel_tol=1e-4
) -> OracleSearch:
    u = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    n, dim = u.shape
    eligible = labels < 0
    logits = head.logits(u)
    pseudo = np.argmax(logits, axis=-1)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) < rel_tol * (1.0 + np.abs(top2[:, 1]))
    probs = softmax(logits)
    other_mass = np.where(np.arange(probs.shape[1]) == pseudo[:, None], 0.0, probs).sum(axis=-1)
    tol = np.minimum(rel_tol + 1e-6 / np.maximum(other_mass, 1e-300), 0.99)[:, None]  # [N, 1]

    g = head.gradient(u, pseudo)
    norm = np.linalg.norm(g, axis=-1, keepdims=True)
    has_direction = norm[:, 0] > 0
    direction = g / np.where(norm > 0, norm, 1.0)
    ok = eligible & has_direction if require_direction else eligible

    anchors = class_anchors(u, labels, num_classes)
    num_caps, k = len(caps), len(anchors)
    flips = np.zeros((num_caps, k, n), bool)
    ambiguous = np.zeros((num_caps, n), bool)
    for s, cap in enumerate(caps):
        eps = cap / np.sqrt(dim)
        for j, anchor in enumerate(anchors):
            decisions = [
                np.argmax(head.logits(closed_form_mix(u, direction, anchor, e, literal=literal)), axis=-1) != pseudo
                for e in (eps * (1 - tol), eps, eps * (1 + tol))
            ]
            flips[s, j] = decisions[1] & ok
            ambiguous[s] |= ((decisions[0] != decisions[1]) | (decisions[2] != decisions[1])) & ok
        ambiguous[s] |= (near_tie | (tol[:, 0] > 0.5)) & eligible

    union = np.logical_or.accumulate(flips.any(axis=1), axis=0)  # [S, N]
    union_per_cap = union.sum(axis=1)
    caps_tried = _caps_tried(union_per_cap, budget)
    return OracleSearch(
        eligible=eligible,
        pseudo=pseudo,
        has_direction=has_direction,
        caps=np.asarray(caps, np.float64),
        flips=flips,
        ambiguous=ambiguous,
        union_per_cap=union_per_cap,
        caps_tried=caps_tried,
        candidates=union[caps_tried - 1],
    )


def _caps_tried(union_per_cap, budget):
    over = np.flatnonzero(np.asarray(union_per_cap) > budget)
    return int(over[0]) + 1 if len(over) else len(union_per_cap)


def caps_tried_range(result: OracleSearch, budget):
    """Earliest and latest early stop consistent with the ambiguous rows."""
    flipped = result.flips.any(axis=1)
    sure = np.logical_or.accumulate(flipped & ~result.ambiguous, axis=0).sum(axis=1)
    maybe = np.logical_or.accumulate(flipped | result.ambiguous, axis=0).sum(axis=1)
    return _caps_tried(maybe, budget), _caps_tried(sure, budget)


def compare(candidates, caps_tried, result: OracleSearch, budget, *, max_ambiguous_fraction=0.01):
    """Assert that a search result (candidates [N] bool, caps_tried) is what
    the oracle gives, up to ambiguous rows. Returns the number of rows
    ignored as ambiguous."""
    candidates = np.asarray(candidates)
    caps_tried = int(caps_tried)
    lo, hi = caps_tried_range(result, budget)
    assert lo <= caps_tried <= hi, f"caps_tried {caps_tried}, oracle allows [{lo}, {hi}]"
    expected = np.logical_or.reduce(result.flips[:caps_tried].any(axis=1), axis=0)
    ignored = result.ambiguous[:caps_tried].any(axis=0)
    n = len(candidates)
    assert ignored.sum() <= max_ambiguous_fraction * n, f"{ignored.sum()} ambiguous rows of {n}"
    wrong = np.flatnonzero((candidates != expected) & ~ignored)
    assert len(wrong) == 0, f"rows {wrong[:10]} differ from the oracle (ours {candidates[wrong[:10]]})"
    assert not np.any(candidates & ~result.eligible), "a labelled row is a candidate"
    return int(ignored.sum())
