"""`make_alfamix_selector`: the whole ALFA-Mix query as one jitted function.

    select = make_alfamix_selector(budget=1000, num_classes=10)
    result = select(key, embeddings, labels, LinearHead(W, b))
    result.selected  # [B] pool indices to label next

Settings that fix shapes or control flow (budget, classes, the cap grid, the
alpha path, k-means iterations, block sizes) go to the factory; the arrays go
to the returned function, whose shapes do not change from round to round:
the pool is the whole fixed-size array and `labels == -1` marks the
unlabelled rows, so a round with more labels reuses the compiled program.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.selection import mixing, search
from alfamix_jax.selection.anchors import compute_anchors, labelled_anchors
from alfamix_jax.selection.caps import make_caps
from alfamix_jax.selection.fill import fill_default, fill_reference
from alfamix_jax.selection.heads import HeadApply, linear_head_apply, pseudo_labels
from alfamix_jax.selection.kmeans import kmeans

ALPHA_PATHS = ("closed-form", "random", "learned")
DIVERSITY_MODES = ("kmeans", "random", "top-alpha")  # the paper's diversification ablation
ANCHOR_MODES = ("class-means", "labelled")  # the paper's anchor ablation
COMPAT_MODES = ("default", "reference")
DEFAULT_LEARNED = mixing.LearnedAlphaConfig()


class Selection(NamedTuple):
    selected: jax.Array  # [B] int32 pool indices
    candidates: jax.Array  # [N] bool
    diagnostics: dict  # name -> array, see `make_alfamix_selector`


def _normalise(x):
    # F.normalize(p=2, eps=1e-12), as the original does before k-means.
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def take_all_candidates(candidates, budget: int):
    """Every candidate, when there are no more than `budget` (what k-means
    with one cluster per point gives). -> picks [B] (-1 for none) and the
    k-means outputs it stands in for (iterations, inertia, rows clustered)."""
    (idx,) = jnp.nonzero(candidates, size=budget, fill_value=-1)
    return idx.astype(jnp.int32), jnp.int32(0), jnp.float32(0.0), jnp.sum(candidates, dtype=jnp.int32)


def cluster_candidates(key, embeddings, candidates, budget: int, *, max_candidates: int, kmeans_kwargs: dict,
                       normalise: bool = True):
    """One row per k-means cluster of the candidates (L2-normalised first
    unless normalise=False), `budget` clusters: the row nearest each centre. -> picks [B] (-1: empty cluster),
    k-means iterations, inertia, and how many candidates were clustered.

    The candidates are gathered into a buffer of `max_candidates` rows, in
    row order; if there are more, a uniform random subset of that size (by
    `key`) is clustered and `diagnostics["candidates_subsampled"]` says so.
    (Row order makes the buffer, and so the batch, the same as the sharded
    selector's, which gathers the subset from every device.)"""
    n = candidates.shape[0]
    count = jnp.sum(candidates, dtype=jnp.int32)
    capacity = min(n, max_candidates)
    subsample_key, kmeans_key = jax.random.split(key)
    priority = jnp.where(candidates, jax.random.uniform(subsample_key, (n,)), -1.0)
    idx = jax.lax.cond(
        count <= capacity,
        lambda: jnp.nonzero(candidates, size=capacity, fill_value=0)[0],
        lambda: jnp.sort(jax.lax.top_k(priority, capacity)[1]),
    ).astype(jnp.int32)
    n_valid = jnp.minimum(count, capacity)
    x = _normalise(embeddings[idx]) if normalise else embeddings[idx]
    result = kmeans(kmeans_key, x, n_valid, budget, **kmeans_kwargs)
    picks = jnp.where(result.picks >= 0, idx[jnp.maximum(result.picks, 0)], -1)
    return picks, result.iterations, result.inertia.astype(jnp.float32), n_valid


def check_selector_settings(*, alpha: str, diversity: str, **positive_integers) -> None:
    """ValueError naming the setting, for the settings both selector factories
    take (this one and `sharded.make_sharded_selector`)."""
    if alpha not in ALPHA_PATHS:
        raise ValueError(f"alpha must be one of {ALPHA_PATHS}, got {alpha!r}")
    if diversity not in DIVERSITY_MODES:
        raise ValueError(f"diversity must be one of {DIVERSITY_MODES}, got {diversity!r}")
    for name, value in positive_integers.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    budget, max_candidates = positive_integers["budget"], positive_integers["max_candidates"]
    if max_candidates < budget:
        raise ValueError(f"max_candidates ({max_candidates}) must be >= budget ({budget})")


def search_stats(found: search.SearchResult, eligible) -> dict:
    """Diagnostics that reduce over the pool: counts, and rho = the smallest
    mix fraction that flipped each candidate. eligible: [N] bool."""
    rho = jnp.where(found.candidates, found.min_rho, jnp.nan)
    return dict(
        num_candidates=jnp.sum(found.candidates, dtype=jnp.int32),
        zero_gradient_rows=jnp.sum(eligible & ~found.has_direction, dtype=jnp.int32),
        rho_mean=jnp.nanmean(rho),
        rho_std=jnp.nanstd(rho),
        rho_min=jnp.nanmin(rho),
        rho_max=jnp.nanmax(rho),
    )


def selection_diagnostics(caps, found: search.SearchResult, pool_stats: dict, *, clustered, filled, iterations,
                          inertia, from_candidates) -> dict:
    """The `Selection.diagnostics` dict (see `make_alfamix_selector`)."""
    clustered = jnp.asarray(clustered, jnp.int32)
    return dict(
        caps=jnp.asarray(caps, jnp.float32),
        caps_tried=found.caps_tried,
        flips_per_cap=found.flips_per_cap,
        union_per_cap=found.union_per_cap,
        flips_per_anchor=found.flips_per_anchor,
        num_candidates=pool_stats["num_candidates"],
        num_clustered=clustered,
        num_from_candidates=from_candidates,
        num_filled=filled,
        kmeans_iterations=iterations,
        kmeans_inertia=inertia,
        zero_gradient_rows=pool_stats["zero_gradient_rows"],
        candidates_subsampled=pool_stats["num_candidates"] > clustered,
        **{k: pool_stats[k] for k in ("rho_mean", "rho_std", "rho_min", "rho_max")},
    )


def make_alfamix_selector(
    *,
    budget: int,
    num_classes: int,
    head_apply: HeadApply | None = None,
    alpha: str = "closed-form",
    compat: str = "default",
    alpha_cap_step: float = 0.2,
    learned: mixing.LearnedAlphaConfig = DEFAULT_LEARNED,
    block_size: int = 4096,
    max_candidates: int = 65536,
    kmeans_max_iters: int = 100,
    kmeans_tol: float = 1e-4,
    linear_fast_path: bool = True,
    fused: bool = False,
    jit: bool = True,
    diversity: str = "kmeans",
    anchors: str = "class-means",
    max_anchors: int = 2048,
):
    """Build `select(key, embeddings [N, D], labels [N], head_params) -> Selection`.

    head_apply: `(head_params, z [n, D]) -> logits [n, C]`, row-wise (any
      Flax `apply`); None means the linear head (`head_params` a `LinearHead`).
    alpha: "closed-form" (paper eq. 5), "random", or "learned" (optax Adam).
    compat: "default" fixes the original's defects Q1-Q6
      (shared/reference/README.md); "reference" reproduces its semantics
      (cap schedule, literal closed form, fill with replacement, Adam reset
      each learned step, no candidate preference in the fill).
    linear_fast_path: with the linear head, closed form and default mode, use
      the exact threshold shortcut (`candidates.search_linear_closed_form`).
    fused: one jitted program, with `lax.cond` between taking every candidate
      and k-means (for use inside a larger jitted function). The default is
      two jitted stages with one host read of the candidate count between
      them, so the k-means program is compiled only when a round needs it
      (its compile is most of a cold first call). Both give the same result.
    jit: False runs everything eagerly (for debugging and jit-vs-eager tests).
    diversity (ablation): how `budget` rows are chosen among more candidates:
      "kmeans" (the paper), "random" (uniform among candidates), or
      "top-alpha" (the candidates that flip with the smallest mix, rho).
    anchors (ablation): "class-means" (the paper) or "labelled" (every
      labelled row is an anchor; at most `max_anchors`, a random subset beyond).

    Diagnostics: caps [S], caps_tried, flips_per_cap [S], union_per_cap [S]
    (candidates after each cap), flips_per_anchor [S, K], num_candidates,
    num_clustered, num_from_candidates, num_filled, kmeans_iterations,
    kmeans_inertia, zero_gradient_rows, candidates_subsampled, and
    rho_mean/std/min/max: over candidates, the smallest fraction of the way
    to an anchor (||mix - u|| / ||a - u||) that flipped the row.
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    if anchors not in ANCHOR_MODES:
        raise ValueError(f"anchors must be one of {ANCHOR_MODES}, got {anchors!r}")
    check_selector_settings(alpha=alpha, diversity=diversity, budget=budget, num_classes=num_classes,
                            block_size=block_size, max_candidates=max_candidates, max_anchors=max_anchors,
                            **{"learned.iters": learned.iters})
    caps = make_caps(alpha_cap_step, compat)
    reference = compat == "reference"
    learned = learned._replace(reset_state_each_step=reference)
    use_fast_path = linear_fast_path and head_apply is None and alpha == "closed-form" and not reference
    head_apply = head_apply or linear_head_apply
    kmeans_kwargs = dict(max_iters=kmeans_max_iters, tol=kmeans_tol, block_size=block_size)
    anchor_mode = anchors

    def flips_fn(block, anchor, eps, cap, key, *, head_params):
        if alpha == "closed-form":
            return mixing.closed_form_flips(head_apply, head_params, block, anchor, eps, literal=reference)
        if alpha == "random":
            return mixing.random_flips(head_apply, head_params, block, anchor, cap, key)
        return mixing.learned_flips(head_apply, head_params, block, anchor, cap, key, learned)

    def search_stage(key, embeddings, labels, head_params) -> search.SearchResult:
        search_key = jax.random.split(key, 3)[0]
        dim = embeddings.shape[-1]
        eligible = labels < 0
        if anchor_mode == "class-means":
            anchors = compute_anchors(embeddings, labels, num_classes)
        else:
            anchors, _ = labelled_anchors(jax.random.fold_in(key, 0xA7), embeddings, labels, max_anchors)
        cap_values = jnp.asarray(caps, embeddings.dtype)
        # The closed form scales the cap by 1/sqrt(D); random and learned alpha do not.
        eps = cap_values / np.sqrt(dim) if alpha == "closed-form" else cap_values
        if use_fast_path:
            return search.search_linear_closed_form(embeddings, eligible, head_params, anchors, eps, budget)
        pseudo = pseudo_labels(head_apply, head_params, embeddings)
        return search.search_general(
            search_key, embeddings, eligible, pseudo, anchors, head_apply, head_params, eps, cap_values,
            budget, functools.partial(flips_fn, head_params=head_params),
            block_size=block_size,
            # Q1: a row with no gradient direction is never a candidate in
            # default mode; the literal reference form gives it no step anyway.
            require_direction=not reference,
            emulate_torch_nan=reference and alpha == "closed-form",
        )

    diversity_mode = diversity

    def diversify(key, embeddings, found: search.SearchResult):
        """`budget` rows among more candidates than that, by the diversity mode."""
        cands = found.candidates
        if diversity_mode == "kmeans":
            return cluster_candidates(
                key, embeddings, cands, budget, max_candidates=max_candidates, kmeans_kwargs=kmeans_kwargs
            )
        if diversity_mode == "random":
            score = jax.random.uniform(key, cands.shape)
        else:  # "top-alpha": the smallest mix that flips the row first
            score = -found.min_rho
        picks = jax.lax.top_k(jnp.where(cands, score, -jnp.inf), budget)[1].astype(jnp.int32)
        return picks, jnp.int32(0), jnp.float32(0.0), jnp.sum(cands, dtype=jnp.int32)

    def finish_stage(key, embeddings, labels, found: search.SearchResult, *, diversity: str) -> Selection:
        _, diversity_key, fill_key = jax.random.split(key, 3)
        eligible = labels < 0
        cands = found.candidates
        if diversity == "all":
            picks, iters, inertia, clustered = take_all_candidates(cands, budget)
        elif diversity == "diversify":
            picks, iters, inertia, clustered = diversify(diversity_key, embeddings, found)
        else:  # "auto", inside one program
            picks, iters, inertia, clustered = jax.lax.cond(
                jnp.sum(cands) <= budget,
                lambda: take_all_candidates(cands, budget),
                lambda: diversify(diversity_key, embeddings, found),
            )
        if reference:
            selected, filled = fill_reference(fill_key, picks, eligible)
        else:
            selected, filled = fill_default(fill_key, picks, cands, eligible)
        pool_stats = search_stats(found, eligible)
        diagnostics = selection_diagnostics(
            caps, found, pool_stats, clustered=clustered, filled=filled, iterations=iters, inertia=inertia,
            from_candidates=jnp.sum(cands[selected], dtype=jnp.int32),
        )
        return Selection(selected, cands, diagnostics)

    if fused:
        def select_fused(key, embeddings, labels, head_params) -> Selection:
            found = search_stage(key, embeddings, labels, head_params)
            return finish_stage(key, embeddings, labels, found, diversity="auto")

        return jax.jit(select_fused) if jit else select_fused

    wrap = jax.jit if jit else (lambda f, **_: f)
    search_fn = wrap(search_stage)
    finish_fns = {d: wrap(functools.partial(finish_stage, diversity=d)) for d in ("all", "diversify")}

    def select(key, embeddings, labels, head_params) -> Selection:
        """Search, read the candidate count, then finish with every candidate
        or with k-means: the k-means program compiles only when needed."""
        found = search_fn(key, embeddings, labels, head_params)
        stage = "all" if int(jnp.sum(found.candidates)) <= budget else "diversify"
        return finish_fns[stage](key, embeddings, labels, found)

    # The jitted stages, for `.lower(...).compile().memory_analysis()` and the like.
    select.stages = dict(search=search_fn, **{f"finish_{d}": f for d, f in finish_fns.items()})
    return select
