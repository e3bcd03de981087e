"""The ALFA-Mix selection, every decision written once: the plan a selector follows, the
key splits, the anchors, the candidate search, the choice among candidates, the fill
and the diagnostics. Each stage takes a `Layout` (or, per shard, `Rows`), so one device
and a mesh run the same code; `selector.py` only orders the stages and moves data.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.selection import diversity as choose
from alfamix_jax.selection import flip_bound, mixing, search, threefry
from alfamix_jax.selection.anchors import compute_anchors, labelled_anchors
from alfamix_jax.selection.caps import make_caps
from alfamix_jax.selection.fill import fill_reference, fill_rows
from alfamix_jax.selection.heads import HeadApply, linear_head_apply
from alfamix_jax.selection.kmeans import Sizing, sizing
from alfamix_jax.selection.layout import NO_ROW, PAD_LABEL, ROW, WHOLE, Layout, Rows
from alfamix_jax.selection.settings import LearnedAlphaSettings, Part, SelectorSettings

# anchors(embeddings [M, D], labels [M] int32 (-1: not labelled), num_classes) -> [K, D], K static
AnchorsFn = Callable[[jax.Array, jax.Array, int], jax.Array]


class Keys(NamedTuple):
    """The one split of a selection's key; every random choice draws from its own key."""

    search: jax.Array  # random / learned alpha: folded per cap, anchor and row
    diversity: jax.Array  # the choice among candidates (k-means: split into subsample and seeding)
    fill: jax.Array  # the fill's random order
    anchors: jax.Array  # the "labelled" anchors' subset


def split_keys(key: jax.Array) -> Keys:
    search_key, diversity_key, fill_key = threefry.split(key, 3)
    return Keys(search_key, diversity_key, fill_key, jax.random.fold_in(key, 0xA7))


class Diagnostics(NamedTuple):
    """What a selection reports besides the batch (scalars are [] arrays)."""

    caps: jax.Array  # [S] the caps of the schedule
    caps_tried: jax.Array  # [] int32
    flips_per_cap: jax.Array  # [S] rows flipped at that cap (0 past caps_tried)
    union_per_cap: jax.Array  # [S] candidates after that cap
    flips_per_anchor: jax.Array  # [S, K]
    num_candidates: jax.Array
    num_clustered: jax.Array  # candidates the choice saw (k-means: its buffer)
    num_from_candidates: jax.Array  # rows of the batch that are candidates
    num_filled: jax.Array  # rows the fill added
    kmeans_iterations: jax.Array
    kmeans_inertia: jax.Array
    zero_gradient_rows: jax.Array  # unlabelled rows whose loss gradient is 0 (never candidates by default)
    candidates_subsampled: jax.Array  # [] bool: more candidates than k-means clusters
    rho_mean: jax.Array  # over candidates, the smallest fraction of the way to an anchor,
    rho_std: jax.Array  # ||mix - u|| / ||a - u||, that flipped the row (mean and std are
    rho_min: jax.Array  # float sums over rows, so their last bits may depend on the mesh)
    rho_max: jax.Array


class Selection(NamedTuple):
    selected: jax.Array  # [B] int32 pool rows: unique, unlabelled
    candidates: jax.Array  # [N] bool (on a mesh [N'], padding rows False)
    diagnostics: Diagnostics


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a selector does, fixed when it is built."""

    budget: int
    num_classes: int
    head_apply: HeadApply | None  # None: the linear head
    caps: tuple[float, ...]
    alpha: Part
    reference: bool
    learned: LearnedAlphaSettings
    anchors: Part
    max_anchors: int
    diversity: Part
    capacity: int  # most rows k-means clusters (at least the budget)
    block_size: int
    kmeans_kwargs: dict[str, Any]
    fast_path: bool  # the linear closed-form shortcut
    linear_alpha: bool = False  # random / learned alpha on the linear head: mixing's chunked linear paths

    def kmeans_rows(self, pool_size: int) -> int:
        """Rows of k-means' buffer for a pool of N rows: its capacity, at most N."""
        return min(self.capacity, pool_size)

    def eps(self, dim: int) -> jax.Array:
        """[S] per-cap value the search uses: the closed form scales the cap by 1/sqrt(D)."""
        caps = jnp.asarray(self.caps, jnp.float32)
        return caps / np.sqrt(dim) if self.alpha == "closed-form" else caps

    def flips_fn(self, head_params: Any) -> search.FlipsFn:
        """flips_fn(block, anchors, eps, cap, anchor_keys, may_flip) -> (flipped [K, b], rho [K, b])
        for the alpha rule: the linear paths take every anchor at once and skip the pairs that
        cannot flip; the others handle one anchor, vmapped."""
        head_apply = self.head_apply or linear_head_apply
        alpha = self.alpha

        def one_anchor(block: mixing.Block, anchor: jax.Array, eps: jax.Array, cap: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, jax.Array]:
            if alpha == "closed-form":
                return mixing.closed_form_flips(head_apply, head_params, block, anchor, eps, literal=self.reference)
            if alpha == "learned":
                return mixing.learned_flips(head_apply, head_params, block, anchor, cap, key, self.learned,
                                            reset_state=self.reference)
            # Not a built-in name here, so a function (SelectorSettings resolves the part).
            rule = mixing.random_alpha if alpha == "random" else cast(mixing.AlphaRule, alpha)
            return mixing.rule_flips(rule, head_apply, head_params, block, anchor, cap, key)

        def flips(block: mixing.Block, anchors: jax.Array, eps: jax.Array, cap: jax.Array, keys: jax.Array,
                  may_flip: jax.Array) -> tuple[jax.Array, jax.Array]:
            if self.linear_alpha and alpha == "learned":
                return mixing.learned_linear_flips(head_params, block, anchors, cap, keys, self.learned,
                                                   reset_state=self.reference, may_flip=may_flip)
            if self.linear_alpha:
                return mixing.random_linear_flips(head_params, block, anchors, cap, keys, may_flip=may_flip)
            return jax.vmap(one_anchor, in_axes=(None, 0, None, None, 0))(block, anchors, eps, cap, keys)

        return flips

    def least_caps_fn(self, head_params: Any) -> search.LeastCapsFn | None:
        """The linear paths' bound on where a pair can flip (`flip_bound`); None for the others."""
        if not self.linear_alpha:
            return None
        return functools.partial(flip_bound.least_flip_caps, head_params)


def make_plan(settings: SelectorSettings, *, budget: int, num_classes: int, head_apply: HeadApply | None) -> Plan:
    reference = settings.compat == "reference"
    alpha = settings.part("alpha")
    return Plan(
        budget=budget, num_classes=num_classes, head_apply=head_apply,
        caps=tuple(make_caps(settings.alpha_cap_step, settings.compat).tolist()),
        alpha=alpha, reference=reference, learned=settings.learned,
        anchors=settings.part("anchors"), max_anchors=settings.max_anchors, diversity=settings.part("diversity"),
        capacity=max(settings.max_candidates, budget), block_size=settings.block_size,
        kmeans_kwargs=dict(max_iters=settings.kmeans_max_iters, tol=settings.kmeans_tol,
                           block_size=settings.kmeans_block_size or settings.block_size),
        fast_path=settings.linear_fast_path and head_apply is None and alpha == "closed-form" and not reference,
        # Unlike the closed-form shortcut, these keep the reference semantics (the same draws, Adam reset, Q5).
        linear_alpha=settings.linear_fast_path and head_apply is None and isinstance(alpha, str)
        and alpha in ("random", "learned"),
    )


def compute_anchor_rows(plan: Plan, keys: Keys, x: jax.Array, labels: jax.Array) -> jax.Array:
    """[K, D] anchors from rows x [M, D] and labels [M] (-1: not labelled): the whole pool on
    one device; on a mesh the labelled rows, gathered in row order (padding slots -1)."""
    rule = plan.anchors
    if rule == "class-means":
        return compute_anchors(x, labels, plan.num_classes)
    if rule == "labelled":
        return labelled_anchors(keys.anchors, x, labels, plan.max_anchors)[0]
    anchors = cast(AnchorsFn, rule)(x, labels, plan.num_classes)  # not a built-in name: a function
    shape, dtype = getattr(anchors, "shape", None), getattr(anchors, "dtype", None)
    is_float = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
    if not is_float or shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] != x.shape[1]:
        raise ValueError(f"anchors: the function {getattr(rule, '__name__', rule)!r} returned {dtype} {shape}; "
                         f"expected float anchors [K, D={x.shape[1]}] with K >= 1")
    return anchors


def search_rows(rows: Rows, plan: Plan, key: jax.Array, embeddings: jax.Array, labels: jax.Array, head_params: Any,
                anchors: jax.Array) -> tuple[search.SearchResult, jax.Array]:
    """The candidate search over these rows -> (SearchResult, lowest pool row whose logits
    are not finite, NO_ROW if none). labels: [n] int32, -1 unlabelled, PAD_LABEL padding."""
    eps = plan.eps(embeddings.shape[-1])
    if plan.fast_path:
        # One device: one pass over the pool, which XLA fuses whole (blocks of 4096 rows cost
        # 10% at 20k x 512 on a 2-core CPU); on a mesh, blocks of block_size rows per device.
        block = embeddings.shape[0] if rows.axis is None else plan.block_size
        s = search.linear_search(rows, embeddings, labels, head_params, anchors, eps, block)
        found = search.resolve_first_caps(s.first_cap, s.has_direction, s.row_hist, s.anchor_hist, eps, plan.budget)
        return found, s.first_bad
    head_apply = plan.head_apply or linear_head_apply
    n = embeddings.shape[0]
    logits = head_apply(head_params, embeddings)  # [n, C]
    pseudo = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    bad = (labels != PAD_LABEL) & ~jnp.all(jnp.isfinite(logits), axis=-1)
    first_bad = rows.smallest(jnp.min(jnp.where(bad, rows.offset(n) + jnp.arange(n, dtype=jnp.int32), NO_ROW)))
    found = search.search_general(
        rows, key, embeddings, labels == -1, pseudo, anchors, head_apply, head_params, eps,
        jnp.asarray(plan.caps, jnp.float32), plan.budget, plan.flips_fn(head_params), block_size=plan.block_size,
        # Q1: a row with no gradient direction is never a candidate in default mode; the
        # literal reference form gives it no step anyway.
        require_direction=not plan.reference,
        emulate_torch_nan=plan.reference and plan.alpha == "closed-form",
        least_caps_fn=plan.least_caps_fn(head_params),
    )
    return found, first_bad


# A SearchResult of spec strings, not arrays (the search's spec tree): built with _make, which takes any values.
def label_stats(labels: jax.Array) -> jax.Array:
    """[3] int32: the lowest and highest label and the labelled rows, for
    `validation.check_label_values` on one device (a mesh checks its host labels; its
    padding rows would read as -2 here)."""
    return jnp.stack([jnp.min(labels), jnp.max(labels), jnp.sum(labels >= 0, dtype=jnp.int32)]).astype(jnp.int32)


SEARCH_SPECS = search.SearchResult._make((ROW, WHOLE, WHOLE, WHOLE, WHOLE, ROW, ROW))


def run_search(layout: Layout, plan: Plan, key: jax.Array, embeddings: jax.Array, labels: jax.Array, head_params: Any,
               anchor_x: jax.Array | None = None,
               anchor_labels: jax.Array | None = None) -> tuple[search.SearchResult, jax.Array]:
    """Anchors (from anchor_x / anchor_labels: by default the pool itself), then the search
    over the layout. -> (SearchResult, summary [5] int32: the candidate count, the lowest row
    whose logits are not finite (NO_ROW: none), then `label_stats`)."""
    if anchor_x is None or anchor_labels is None:
        if (anchor_x is None) != (anchor_labels is None):
            raise ValueError("run_search: give anchor_x and anchor_labels together, or neither (the pool)")
        anchor_x, anchor_labels = embeddings, labels
    keys = split_keys(key)
    anchors = compute_anchor_rows(plan, keys, anchor_x, anchor_labels)
    found, first_bad = layout.run(
        lambda rows, *args: search_rows(rows, plan, *args), (WHOLE, ROW, ROW, WHOLE, WHOLE), (SEARCH_SPECS, WHOLE),
    )(keys.search, embeddings, labels, head_params, anchors)
    return found, jnp.concatenate([jnp.stack([jnp.sum(found.candidates, dtype=jnp.int32), first_bad]),
                                   label_stats(labels)])


def choose_rows(layout: Layout, plan: Plan, stage: str, key: jax.Array, embeddings: jax.Array | None, labels: jax.Array,
                found: search.SearchResult, *, pool_size: int, buffer: choose.KMeansBuffer | None = None,
                kmeans_sizing: Sizing | None = None) -> tuple[jax.Array, choose.Clustering]:
    """At most `budget` rows among the candidates -> (picks [B], -1 none; Clustering).
    stage: "all" (every candidate: there are at most budget), "diversify" (more: the
    diversity rule), "auto" (decided inside the program, one device). kmeans_sizing: see
    `kmeans_sizing`."""
    candidates = found.candidates
    count = jnp.sum(candidates, dtype=jnp.int32)
    if stage == "all":
        return choose.take_all(layout, candidates, plan.budget), choose.no_clustering(count)
    if stage == "auto":
        def branch(stage: str) -> Callable[[], tuple[jax.Array, choose.Clustering]]:
            return lambda: choose_rows(layout, plan, stage, key, embeddings, labels, found, pool_size=pool_size)

        return jax.lax.cond(count <= plan.budget, branch("all"), branch("diversify"))
    rule = plan.diversity
    if rule == "kmeans":
        return choose.kmeans_picks(layout, key, embeddings, candidates, plan.budget, buffer=buffer,
                                   capacity=plan.kmeans_rows(pool_size), kmeans_kwargs=plan.kmeans_kwargs,
                                   sizing=kmeans_sizing)
    if callable(rule):
        assert embeddings is not None  # None only for a streamed pool, which refuses a diversity function
        picks = choose.custom_picks(rule, key, embeddings, candidates, labels == -1, plan.budget)
    else:  # "random", or "top-alpha": the smallest mix that flips the row first
        score = layout.uniform(key, candidates.shape[0]) if rule == "random" else -found.min_rho
        picks = choose.top_scores(layout, candidates, score, plan.budget)
    return picks, choose.no_clustering(count)


def kmeans_sizing(plan: Plan, count: int, *, pool_size: int) -> Sizing | None:
    """k-means' sizes for `count` candidates (`kmeans.sizing`: its seeding's rows, whether its
    Lloyd passes keep distance bounds): the host reads the count between the stages, so the
    finish program compiles one path, sized to the rows there. None where no k-means runs."""
    if plan.diversity != "kmeans" or count <= plan.budget:
        return None
    capacity = plan.kmeans_rows(pool_size)
    return sizing(min(count, capacity), plan.budget, capacity)


def kmeans_buffer(layout: Layout, plan: Plan, key: jax.Array, candidates: jax.Array, *,
                  pool_size: int) -> tuple[jax.Array, jax.Array]:
    """The rows `finish` gives k-means for this key (a streamed pool reads them from the host first)."""
    subsample_key, _ = choose.kmeans_keys(split_keys(key).diversity)
    return choose.kmeans_buffer(layout, subsample_key, candidates, plan.kmeans_rows(pool_size))


def fill_batch(layout: Layout, plan: Plan, key: jax.Array, picks: jax.Array, candidates: jax.Array,
               labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The picks, completed to `budget` distinct unlabelled rows. -> (selected [B], filled [])."""
    eligible = labels == -1
    if plan.reference:
        return fill_reference(key, picks, eligible)
    u = layout.uniform(key, candidates.shape[0])
    fill = layout.run(lambda rows, *args: fill_rows(rows, *args, budget=plan.budget), (WHOLE, ROW, ROW, ROW), WHOLE)
    return fill(picks, candidates, eligible, u)


def diagnose(plan: Plan, found: search.SearchResult, labels: jax.Array, selected: jax.Array, filled: jax.Array,
             clustering: choose.Clustering) -> Diagnostics:
    """Counts are exact on any layout; rho_mean / rho_std are float sums over rows."""
    candidates = found.candidates
    num_candidates = jnp.sum(candidates, dtype=jnp.int32)
    rho = jnp.where(candidates, found.min_rho, jnp.nan)
    return Diagnostics(
        caps=jnp.asarray(plan.caps, jnp.float32), caps_tried=found.caps_tried, flips_per_cap=found.flips_per_cap,
        union_per_cap=found.union_per_cap, flips_per_anchor=found.flips_per_anchor, num_candidates=num_candidates,
        num_clustered=clustering.clustered, num_from_candidates=jnp.sum(candidates[selected], dtype=jnp.int32),
        num_filled=filled, kmeans_iterations=clustering.iterations, kmeans_inertia=clustering.inertia,
        zero_gradient_rows=jnp.sum((labels == -1) & ~found.has_direction, dtype=jnp.int32),
        candidates_subsampled=num_candidates > clustering.clustered,
        rho_mean=jnp.nanmean(rho), rho_std=jnp.nanstd(rho), rho_min=jnp.nanmin(rho), rho_max=jnp.nanmax(rho),
    )


def finish(layout: Layout, plan: Plan, stage: str, key: jax.Array, embeddings: jax.Array | None, labels: jax.Array,
           found: search.SearchResult, *, pool_size: int | None = None,
           buffer: choose.KMeansBuffer | None = None, kmeans_sizing: Sizing | None = None) -> Selection:
    """Choose among the candidates, fill, report. pool_size: N (default: all of labels' rows).
    kmeans_sizing: k-means' sizes, when the host knows the candidate count (`kmeans_sizing`)."""
    pool_size = labels.shape[0] if pool_size is None else pool_size
    keys = split_keys(key)
    picks, clustering = choose_rows(layout, plan, stage, keys.diversity, embeddings, labels, found,
                                    pool_size=pool_size, buffer=buffer, kmeans_sizing=kmeans_sizing)
    selected, filled = fill_batch(layout, plan, keys.fill, picks, found.candidates, labels)
    return Selection(selected, found.candidates, diagnose(plan, found, labels, selected, filled, clustering))
