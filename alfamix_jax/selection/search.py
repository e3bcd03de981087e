"""The candidate search: for each cap, which pool rows some anchor's mix flips.

Caps are tried in order; candidates are the union over the caps tried, and
the search stops right after the first cap at which the union holds more than
`budget` rows (the original's early stop).

Two implementations with the same result:
- `search_general`: any row-wise head and any alpha path. Row blocks of a
  fixed size in a `fori_loop` (the last block is shifted back to end at N,
  so nothing is padded or copied); every anchor is handled inside a block (vmapped, or
  as (anchor, row) pairs on the linear paths, which skip the pairs `flip_bound` rules
  out), so the peak is O(N*D + N*K + block*K*D), never O(N*K*D). The loss gradient is taken
  per block with `jax.grad`, so no [N, D] gradient is ever held.
- `linear_search` + `resolve_first_caps`: the exact shortcut for a linear head with the
  closed-form alpha. Along the step `u + t * g` (g the unit gradient) the
  logits are affine in t, so row i flips for anchor k iff
  `eps * ||a_k - u_i|| > t*_i`, where t*_i is where the first class
  overtakes the pseudo-label. One pass over the pool gives every
  (row, anchor, cap) decision: O(N*D*(C+K)) flops, O(N*(C+K)) memory.
"""
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alfamix_jax.selection import threefry
from alfamix_jax.selection.blocks import block_start, occupied_blocks
from alfamix_jax.selection.gradients import loss_gradient, normalise_rows
from alfamix_jax.selection.heads import HeadApply, LinearHead
from alfamix_jax.selection.layout import NO_ROW, PAD_LABEL, Rows
from alfamix_jax.selection.mixing import Block


class SearchResult(NamedTuple):
    candidates: jax.Array  # [N] bool: union of flips over the caps tried
    caps_tried: jax.Array  # [] int32
    flips_per_cap: jax.Array  # [S] int32: rows flipped at that cap (0 past caps_tried)
    union_per_cap: jax.Array  # [S] int32: size of the union after that cap
    flips_per_anchor: jax.Array  # [S, K] int32
    min_rho: jax.Array  # [N] smallest mix fraction that flipped the row (inf: never)
    has_direction: jax.Array  # [N] bool: the loss gradient is nonzero


# flips_fn(block, anchors [K, D], eps, cap, anchor_keys [K], may_flip [K, b]) -> (flipped [K, b], rho [K, b]):
# every anchor of a block at once; pairs where may_flip is False may be skipped (their results are masked).
FlipsFn = Callable[[Block, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# least_caps_fn(u [b, D], pseudo [b], anchors [K, D]) -> [K, b]: a cap below which the pair cannot flip
LeastCapsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def search_general(
    rows: Rows,
    key: jax.Array,
    embeddings: jax.Array,  # [n, D]
    eligible: jax.Array,  # [n] bool: unlabelled (and valid) rows
    pseudo: jax.Array,  # [n] int32
    anchors: jax.Array,  # [K, D]
    head_apply: HeadApply,
    head_params: Any,
    eps: jax.Array,  # [S] the per-cap value handed to flips_fn (cap / sqrt(D) for the closed form)
    caps: jax.Array,  # [S]
    budget: int,
    flips_fn: FlipsFn,
    *,
    block_size: int,
    require_direction: bool,
    emulate_torch_nan: bool = False,
    least_caps_fn: LeastCapsFn | None = None,
) -> SearchResult:
    """The blocked search over these rows (`rows`: the whole pool, or one device's shard,
    whose first global row keys the per-row random draws; the caps' early stop is decided
    on counts over the pool).
    emulate_torch_nan: flag the rows on which the original's float32 torch
    code divides 0 by 0 (defect Q1) so the reference form reproduces them.
    least_caps_fn: where given, its caps for every (anchor, row) are computed once, and at
    each cap flips_fn is told which pairs may flip ([K, N] floats held)."""
    n, _ = embeddings.shape
    total = rows.total
    num_eligible = total(jnp.sum(eligible, dtype=jnp.int32)).astype(embeddings.dtype)
    num_caps, num_anchors = eps.shape[0], anchors.shape[0]
    size, num_blocks = occupied_blocks(n, block_size, n)

    def block_at(start: jax.Array) -> tuple[Block, jax.Array]:
        u = jax.lax.dynamic_slice_in_dim(embeddings, start, size)
        p = jax.lax.dynamic_slice_in_dim(pseudo, start, size)
        raw = loss_gradient(head_apply, head_params, u, p)
        g, has_dir = normalise_rows(raw)
        global_rows = rows.offset(n) + start + jnp.arange(size, dtype=jnp.int32)
        torch_nan: jax.Array | None = None
        if emulate_torch_nan:
            # The original's gradient is ours / N (mean reduction); its float32
            # norm is 0 once every squared entry is below half the smallest
            # subnormal, i.e. every |entry| < 2^-75.
            torch_nan = jnp.max(jnp.abs(raw), axis=-1) < num_eligible * 2.0**-75
        return Block(u, g, p, global_rows, torch_nan), has_dir

    least_caps = None if least_caps_fn is None else _least_caps(least_caps_fn, embeddings, pseudo, anchors)

    def flips_at_cap(s: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        cap_key = jax.random.fold_in(key, s)  # one key: a batch of one through threefry.py buys nothing
        anchor_keys = threefry.fold_in_each(cap_key, jnp.arange(num_anchors))

        def body(j: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
            flips, rho, has_direction = carry
            start = block_start(n, size, j)
            block, has_dir = block_at(start)
            ok = jax.lax.dynamic_slice_in_dim(eligible, start, size)
            if require_direction:
                ok = ok & has_dir
            may_flip = _may_flip(ok, least_caps, caps[s], start, num_anchors)
            f, r = flips_fn(block, anchors, eps[s], caps[s], anchor_keys, may_flip)  # [K, b] each
            f = f & ok[None, :]
            r = jnp.min(jnp.where(f, r, jnp.inf), axis=0)
            flips = jax.lax.dynamic_update_slice_in_dim(flips, f, start, axis=1)
            rho = jax.lax.dynamic_update_slice_in_dim(rho, r, start, axis=0)
            has_direction = jax.lax.dynamic_update_slice_in_dim(has_direction, has_dir, start, axis=0)
            return flips, rho, has_direction

        init = (
            jnp.zeros((num_anchors, n), bool),
            jnp.full((n,), jnp.inf, embeddings.dtype),
            jnp.zeros((n,), bool),
        )
        return jax.lax.fori_loop(0, num_blocks, body, init)

    def cond(state: tuple[jax.Array, ...]) -> jax.Array:
        s, candidates = state[0], state[1]
        return (s < num_caps) & (total(jnp.sum(candidates, dtype=jnp.int32)) <= budget)

    def body(state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        s, candidates, flips_per_cap, union_per_cap, flips_per_anchor, min_rho, _ = state
        flips, rho, has_direction = flips_at_cap(s)  # [K, N], [N], [N]
        flipped = jnp.any(flips, axis=0)
        candidates = candidates | flipped
        flips_per_cap = flips_per_cap.at[s].set(total(jnp.sum(flipped, dtype=jnp.int32)))
        union_per_cap = union_per_cap.at[s].set(total(jnp.sum(candidates, dtype=jnp.int32)))
        flips_per_anchor = flips_per_anchor.at[s].set(total(jnp.sum(flips, axis=1, dtype=jnp.int32)))
        min_rho = jnp.minimum(min_rho, rho)
        return s + 1, candidates, flips_per_cap, union_per_cap, flips_per_anchor, min_rho, has_direction

    no_rows, per_cap = jnp.zeros((n,), bool), jnp.zeros((num_caps,), jnp.int32)
    state: tuple[jax.Array, ...] = (jnp.int32(0), no_rows, per_cap, per_cap,
                                    jnp.zeros((num_caps, num_anchors), jnp.int32),
                                    jnp.full((n,), jnp.inf, embeddings.dtype), no_rows)
    s, candidates, flips_per_cap, union_per_cap, flips_per_anchor, min_rho, has_direction = (
        jax.lax.while_loop(cond, body, state)
    )
    return SearchResult(candidates, s, flips_per_cap, union_per_cap, flips_per_anchor, min_rho, has_direction)


def _may_flip(ok: jax.Array, least_caps: jax.Array | None, cap: jax.Array, start: jax.Array,
              num_anchors: int) -> jax.Array:
    """Which (anchor, row) pairs of the block at `start` may flip at `cap`: its eligible rows
    ok [b], less the pairs whose least cap ([K, n], or None: no bound) is above it. -> [K, b]."""
    may_flip = jnp.broadcast_to(ok, (num_anchors, ok.shape[0]))
    if least_caps is None:
        return may_flip
    return may_flip & (cap >= jax.lax.dynamic_slice_in_dim(least_caps, start, ok.shape[0], axis=1))


def _least_caps(least_caps_fn: LeastCapsFn, embeddings: jax.Array, pseudo: jax.Array, anchors: jax.Array) -> jax.Array:
    """least_caps_fn over blocks of about 2^16 / D rows (the last shifted back), so that its
    [rows, K, D] |a - u| stays in cache (at 60k x 256, 0.27 s against 0.33 s with blocks of
    4000 rows). embeddings [n, D], pseudo [n], anchors [K, D] -> [K, n]."""
    n, dim = embeddings.shape
    size, num_blocks = occupied_blocks(n, max(64, 2**16 // dim), n)

    def body(j: jax.Array, out: jax.Array) -> jax.Array:
        start = block_start(n, size, j)
        u, p = (jax.lax.dynamic_slice_in_dim(x, start, size) for x in (embeddings, pseudo))
        return jax.lax.dynamic_update_slice_in_dim(out, least_caps_fn(u, p, anchors), start, axis=1)

    return jax.lax.fori_loop(0, num_blocks, body, jnp.zeros((anchors.shape[0], n), embeddings.dtype))


def flip_thresholds(embeddings: jax.Array, head: LinearHead,
                    anchors: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per row: the pseudo-label, whether the loss gradient has a direction,
    `e [N, K]`: row i flips for anchor k at every eps > e[i, k], and whether
    the row's logits and squared norm are finite (NaN/inf input shows here).

    With g the unit gradient of CE(f(u), p) and a linear head, the logits of
    `u + t g` are `l + t s` with s = g W^T. Class c overtakes p at
    t_c = (l_p - l_c) / (s_c - s_p) when s_c > s_p; t* = min_c t_c, and the
    step length for anchor k at eps is eps * ||a_k - u||, so e = t* / ||a_k - u||.
    s is computed as `delta G / ||delta W||` with delta = dCE/dlogits
    = softmax - onehot and G = W W^T, so no [N, D] gradient is formed.
    """
    w, b = head.weight, head.bias
    num_classes = w.shape[0]
    # precision="highest": float32 products on GPUs too. XLA's GPU default is TF32, whose logits
    # err by about 1e-2 here and would move flip decisions against the original's float32 code.
    proj = jnp.dot(embeddings, jnp.concatenate([w, anchors]).T, precision="highest")  # [N, C + K], one read
    sq_u = jnp.sum(embeddings * embeddings, axis=-1)  # [N]: a second read of the pool (XLA cannot fuse it
    # into the matmul; a fused Pallas kernel was tried, see README "Scale-out", and gained 2%)
    logits, u_dot_a = proj[:, :num_classes] + b, proj[:, num_classes:]
    pseudo = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    # d CE(logits, p) / d logits, written out: jax.grad here builds a scatter
    # that XLA constant-folds at compile time, which grows with N (11 s at 1M).
    delta = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(pseudo, num_classes, dtype=logits.dtype)  # [N, C]
    scale = jnp.max(jnp.abs(delta), axis=-1, keepdims=True)
    delta = delta / jnp.where(scale > 0, scale, 1.0)  # exact in direction, no underflow below
    delta_gram = jnp.dot(delta, jnp.dot(w, w.T, precision="highest"), precision="highest")  # [N, C]
    grad_norm = jnp.sqrt(jnp.maximum(jnp.sum(delta_gram * delta, axis=-1, keepdims=True), 0.0))
    has_direction = grad_norm[:, 0] > 0
    s = delta_gram / jnp.where(grad_norm > 0, grad_norm, 1.0)  # [N, C] = g . W_c

    l_p = jnp.take_along_axis(logits, pseudo[:, None], axis=-1)
    s_p = jnp.take_along_axis(s, pseudo[:, None], axis=-1)
    rate = s - s_p
    # Exclude c == p by index: under jit, s and s_p may come from different
    # fusions, so s_p - s_p need not round to exactly 0.
    rises = (rate > 0) & (jnp.arange(num_classes) != pseudo[:, None])
    overtake = jnp.where(rises, (l_p - logits) / jnp.where(rises, rate, 1.0), jnp.inf)
    t_star = jnp.min(overtake, axis=-1)  # [N]

    sq_a = jnp.sum(anchors * anchors, axis=-1)
    dist = jnp.sqrt(jnp.maximum(sq_u[:, None] - 2.0 * u_dot_a + sq_a, 0.0))  # [N, K]
    e = t_star[:, None] / dist  # inf where t* is inf or the row sits on the anchor
    # The row's own values: a NaN anchor (from a NaN labelled row) is reported at that row, not at every row.
    finite = jnp.all(jnp.isfinite(logits), axis=-1) & jnp.isfinite(sq_u)
    return pseudo, has_direction, e, finite


class FirstCaps(NamedTuple):
    """What one pass of the linear shortcut learns about a block of rows."""

    first_cap: jax.Array  # [b] int32: index of the first cap that flips the row (S: none)
    has_direction: jax.Array  # [b] bool
    anchor_hist: jax.Array  # [S + 1, K] int32: counted rows by the first cap each anchor flips them at
    finite: jax.Array  # [b] bool: the row's logits and norm are finite (False: NaN/inf in the input)


def linear_first_caps(
    embeddings: jax.Array,  # [b, D]
    ok: jax.Array,  # [b] bool: eligible rows
    counted: jax.Array,  # [b] bool: rows that enter anchor_hist (a shifted block counts its new rows only)
    head: LinearHead,
    anchors: jax.Array,  # [K, D]
    eps: jax.Array,  # [S] increasing
) -> FirstCaps:
    """Row i flips for anchor k at cap s iff e[i, k] < eps[s] (`flip_thresholds`),
    and eps increases, so each (row, anchor) is summed up by the first cap
    that flips it: `S - #{s : e < eps[s]}` (a NaN threshold never flips).
    Per-row state is one integer, so the caps' early stop can be decided
    after the pass, from histograms summed over blocks, devices and hosts."""
    num_caps = eps.shape[0]
    _, has_direction, e, finite = flip_thresholds(embeddings, head, anchors)
    # The caps 8 at a time, not one [b, K, S] comparison: XLA fused e's computation into that
    # and redid it, |a|^2 (a reduction over the anchors) included, for every (row, anchor, cap):
    # 4 of the 12 ms of this function at 20k x 512, K = 10, S = 5.
    flipping = jax.lax.fori_loop(0, num_caps, lambda s, n: n + (e < eps[s]), jnp.zeros(e.shape, jnp.int32),
                                 unroll=8)  # [b, K]: how many caps flip the row for the anchor
    per_anchor = num_caps - flipping  # [b, K] in [0, S]
    per_anchor = jnp.where((ok & has_direction)[:, None], per_anchor, num_caps)
    levels = jnp.arange(num_caps + 1, dtype=jnp.int32)
    hits = (per_anchor[..., None] == levels) & counted[:, None, None]  # [b, K, S + 1]
    anchor_hist = jnp.sum(hits, axis=0, dtype=jnp.int32).T  # [S + 1, K]
    return FirstCaps(jnp.min(per_anchor, axis=-1), has_direction, anchor_hist, finite)


def first_cap_hist(first_cap: jax.Array, counted: jax.Array, num_caps: int) -> jax.Array:
    """[b] first caps -> [S + 1] int32 counts (of the `counted` rows)."""
    levels = jnp.arange(num_caps + 1, dtype=jnp.int32)
    return jnp.sum((first_cap[:, None] == levels) & counted[:, None], axis=0, dtype=jnp.int32)


def resolve_first_caps(first_cap: jax.Array, has_direction: jax.Array, row_hist: jax.Array, anchor_hist: jax.Array,
                       eps: jax.Array, budget: int) -> SearchResult:
    """The cap schedule from the first-cap summary: candidates after the first
    cap whose union holds more than `budget` rows (or after the last cap).
    first_cap, has_direction: [N] (any sharding); row_hist [S + 1] and
    anchor_hist [S + 1, K]: totals over the whole pool."""
    num_caps = eps.shape[0]
    union_per_cap = jnp.cumsum(row_hist[:num_caps], dtype=jnp.int32)  # monotone in the cap
    over = union_per_cap > budget
    caps_tried = jnp.where(jnp.any(over), jnp.argmax(over) + 1, num_caps).astype(jnp.int32)
    tried = jnp.arange(num_caps) < caps_tried
    candidates = first_cap < caps_tried
    min_rho = jnp.where(candidates, eps[jnp.minimum(first_cap, num_caps - 1)], jnp.inf).astype(eps.dtype)
    flips_per_anchor = jnp.cumsum(anchor_hist[:num_caps], axis=0, dtype=jnp.int32)
    return SearchResult(
        candidates=candidates,
        caps_tried=caps_tried,
        flips_per_cap=jnp.where(tried, union_per_cap, 0),
        union_per_cap=jnp.where(tried, union_per_cap, 0),
        flips_per_anchor=jnp.where(tried[:, None], flips_per_anchor, 0),
        min_rho=min_rho,
        has_direction=has_direction,
    )


class LinearSearch(NamedTuple):
    """The linear shortcut's pass over some rows, with its pool totals."""

    first_cap: jax.Array  # [n] int32: index of the first cap that flips the row (S: none)
    has_direction: jax.Array  # [n] bool
    row_hist: jax.Array  # [S + 1] int32: rows of the pool by first cap
    anchor_hist: jax.Array  # [S + 1, K] int32: (row, anchor) pairs of the pool by first cap
    first_bad: jax.Array  # [] int32: lowest pool row whose logits are not finite (NO_ROW: none)


def linear_search(
    rows: Rows,
    embeddings: jax.Array,  # [n, D]
    labels: jax.Array,  # [n] int32: -1 unlabelled, PAD_LABEL padding
    head: LinearHead,
    anchors: jax.Array,  # [K, D]
    eps: jax.Array,  # [S] increasing
    block_size: int,
) -> LinearSearch:
    """`linear_first_caps` over these rows in blocks of `block_size` (the last block shifted
    back to end at n; its rows already counted are not counted again), totals over the pool."""
    n = embeddings.shape[0]
    num_caps = eps.shape[0]
    size, num_blocks = occupied_blocks(n, block_size, n)

    def body(j: jax.Array | int, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        first, direction, row_hist, anchor_hist, first_bad = carry
        start = block_start(n, size, j)
        u = jax.lax.dynamic_slice_in_dim(embeddings, start, size)
        block_labels = jax.lax.dynamic_slice_in_dim(labels, start, size)
        fresh = start + jnp.arange(size) >= j * size
        found = linear_first_caps(u, block_labels == -1, fresh, head, anchors, eps)
        global_rows = rows.offset(n) + start + jnp.arange(size, dtype=jnp.int32)
        bad = (block_labels != PAD_LABEL) & ~found.finite
        first_bad = jnp.minimum(first_bad, jnp.min(jnp.where(bad, global_rows, NO_ROW)))
        first = jax.lax.dynamic_update_slice_in_dim(first, found.first_cap, start, axis=0)
        direction = jax.lax.dynamic_update_slice_in_dim(direction, found.has_direction, start, axis=0)
        row_hist = row_hist + first_cap_hist(found.first_cap, fresh, num_caps)
        return first, direction, row_hist, anchor_hist + found.anchor_hist, first_bad

    init = (
        jnp.full((n,), num_caps, jnp.int32),
        jnp.zeros((n,), bool),
        jnp.zeros((num_caps + 1,), jnp.int32),
        jnp.zeros((num_caps + 1, anchors.shape[0]), jnp.int32),
        jnp.int32(NO_ROW),
    )
    if num_blocks == 1:  # one block: no loop, so XLA fuses across the whole pass
        first, direction, row_hist, anchor_hist, first_bad = body(0, init)
    else:
        first, direction, row_hist, anchor_hist, first_bad = jax.lax.fori_loop(0, num_blocks, body, init)
    return LinearSearch(first, direction, rows.total(row_hist), rows.total(anchor_hist), rows.smallest(first_bad))
