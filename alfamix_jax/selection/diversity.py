"""Choosing `budget` rows among the candidates: every candidate when there are few enough,
else k-means (the paper), uniform random, the smallest mix that flips ("top-alpha"), or a
researcher's function. Each takes a `Layout`, so it runs on one device or a mesh alike.

A diversity function has the contract
    diversity(key, embeddings [N, D], candidates [N] bool, budget) -> [budget] int32
pool rows, -1 where it picks none (the fill completes the batch). Its picks are taken
as given where they are unlabelled pool rows, first occurrence; anything else counts as -1.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alfamix_jax.selection import threefry
from alfamix_jax.selection.kmeans import Sizing, kmeans
from alfamix_jax.selection.layout import ROW, WHOLE, Layout, Rows
from alfamix_jax.selection.points import Points, normalised

DiversityFn = Callable[[jax.Array, jax.Array, jax.Array, int], jax.Array]
# A k-means buffer read ahead: ((rows [capacity], n_valid []), x [capacity, D]).
KMeansBuffer = tuple[tuple[jax.Array, jax.Array], jax.Array]


class Clustering(NamedTuple):
    """What the choice among candidates reports (zeros where no k-means ran)."""

    iterations: jax.Array  # [] int32 Lloyd iterations
    inertia: jax.Array  # [] float32
    clustered: jax.Array  # [] int32 candidates the choice saw (k-means: those in its buffer)


def no_clustering(count: jax.Array) -> Clustering:
    return Clustering(jnp.int32(0), jnp.float32(0.0), jnp.asarray(count, jnp.int32))


def take_all(layout: Layout, candidates: jax.Array, budget: int) -> jax.Array:
    """Every candidate, in row order, when there are at most `budget`. -> [B] rows (-1: none)."""
    return layout.run(lambda rows, mask: rows.first(mask, budget), (ROW,), WHOLE)(candidates)


def top_scores(layout: Layout, candidates: jax.Array, score: jax.Array, budget: int) -> jax.Array:
    """The `budget` candidates with the highest score [N]; ties to the lower row. -> [B] rows."""
    def pick(rows: Rows, score: jax.Array) -> jax.Array:
        values, picked = rows.top_k(score, budget)
        return jnp.where(values > -jnp.inf, picked, -1)

    return layout.run(pick, (ROW,), WHOLE)(jnp.where(candidates, score, -jnp.inf))


def _buffer_rows(rows: Rows, candidates: jax.Array, priority: jax.Array, *,
                 capacity: int) -> tuple[jax.Array, jax.Array]:
    count = rows.total(jnp.sum(candidates, dtype=jnp.int32))

    def subset() -> jax.Array:
        values, picked = rows.top_k(priority, capacity)
        return jnp.sort(jnp.where(values >= 0, picked, jnp.iinfo(jnp.int32).max))

    picked = jax.lax.cond(count <= capacity, lambda: rows.first(candidates, capacity), subset)
    n_valid = jnp.minimum(count, capacity)
    return jnp.where(jnp.arange(capacity) < n_valid, picked, picked[0]), n_valid


def kmeans_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(subsample key, seeding key) of k-means' share of a selection key."""
    return tuple(threefry.split(key))


def kmeans_buffer(layout: Layout, key: jax.Array, candidates: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """The rows k-means clusters: every candidate if there are at most `capacity`, else a
    uniform subset of that size (by `key`); in row order. -> rows [capacity] (past n_valid:
    a repeat, ignored), n_valid."""
    priority = jnp.where(candidates, layout.uniform(key, candidates.shape[0]), -1.0)
    return layout.run(functools.partial(_buffer_rows, capacity=capacity), (ROW, ROW), (WHOLE, WHOLE))(
        candidates, priority)


_GATHER_SIZES = (1024, 8192)  # row counts of the smaller gathers (`_gather_points`)


def _gather_points(rows: Rows, embeddings: jax.Array, buffer_rows: jax.Array, n_valid: jax.Array) -> jax.Array:
    """embeddings [N, D] at buffer_rows [C] (the first n_valid real), zero past the gathered
    rows, the same on every device. -> x [C, D]. Only the smallest of a few static prefixes
    that holds the real rows is gathered (`lax.switch`): on a CPU a 20,000 x 512 row gather
    costs ~50 ms, k-means on 600 of them less."""
    capacity = buffer_rows.shape[0]

    def prefix(size: int) -> jax.Array:
        return jnp.pad(rows.gather(embeddings, buffer_rows[:size]), ((0, capacity - size), (0, 0)))

    sizes = [s for s in _GATHER_SIZES if s < capacity] + [capacity]
    if len(sizes) == 1:
        return prefix(capacity)
    branch = jnp.searchsorted(jnp.asarray(sizes[:-1]), n_valid, side="left")
    return jax.lax.switch(branch, [functools.partial(prefix, s) for s in sizes])


def kmeans_picks(layout: Layout, key: jax.Array, embeddings: jax.Array | None, candidates: jax.Array, budget: int, *,
                 capacity: int, kmeans_kwargs: dict[str, Any], normalise: bool = True,
                 buffer: KMeansBuffer | None = None, sizing: Sizing | None = None) -> tuple[jax.Array, Clustering]:
    """One row per k-means cluster of the candidates (L2-normalised first unless
    normalise=False), `budget` clusters: the row nearest each centre. -> picks [B] (-1:
    empty cluster), Clustering. buffer: (rows, x) already read (a streamed pool), else
    the rows are chosen by `kmeans_buffer` and gathered from `embeddings`. sizing: k-means'
    sizes when the caller knows the candidate count (`kmeans.sizing`).
    On a mesh the Lloyd passes split their row blocks over the devices (`kmeans(axis_name=)`)."""
    subsample_key, kmeans_key = kmeans_keys(key)
    # Every way reads its rows through a gather (`Points`: the same bits whichever array holds them).
    if buffer is not None:
        (buffer_rows, n_valid), source = buffer
        points = Points(source, jnp.arange(source.shape[0], dtype=jnp.int32))
    else:
        assert embeddings is not None, "kmeans_picks: give the embeddings or a buffer already read"
        buffer_rows, n_valid = kmeans_buffer(layout, subsample_key, candidates, capacity)
        if layout.mesh is None:  # the pool's own rows, read where k-means needs them (no copy)
            points = Points(embeddings, buffer_rows)
        else:  # gathered onto every device once: reading a block of them would be a collective
            gathered = layout.run(_gather_points, (ROW, WHOLE, WHOLE), WHOLE)(embeddings, buffer_rows, n_valid)
            points = Points(gathered, jnp.arange(capacity, dtype=jnp.int32))

    def cluster(rows: Rows, key: jax.Array, points: Points, buffer_rows: jax.Array,
                n_valid: jax.Array) -> tuple[jax.Array, Clustering]:
        points = normalised(points, n_valid) if normalise else points
        result = kmeans(key, points, n_valid, budget, axis_name=rows.axis, **(sizing or Sizing())._asdict(),
                        **kmeans_kwargs)
        picks = jnp.where(result.picks >= 0, buffer_rows[jnp.maximum(result.picks, 0)], -1)
        return picks, Clustering(result.iterations, result.inertia.astype(jnp.float32), n_valid)

    specs = (WHOLE, jax.tree.map(lambda _: WHOLE, points), WHOLE, WHOLE)
    # The output's spec tree is a Clustering of spec strings, not arrays: built with _make, which takes any values.
    return layout.run(cluster, specs, (WHOLE, Clustering._make((WHOLE, WHOLE, WHOLE))))(
        kmeans_key, points, buffer_rows, n_valid)


def custom_picks(fn: DiversityFn, key: jax.Array, embeddings: jax.Array, candidates: jax.Array, eligible: jax.Array,
                 budget: int) -> jax.Array:
    """A researcher's diversity function, called on the whole (on a mesh: row-split) arrays.
    Its picks count where they are eligible pool rows, first occurrence; else -1."""
    picks = fn(key, embeddings, candidates, budget)
    shape, dtype = getattr(picks, "shape", None), getattr(picks, "dtype", None)
    if shape != (budget,) or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"diversity: the function {getattr(fn, '__name__', fn)!r} returned "
                         f"{dtype} {shape}; expected [budget={budget}] int32 pool rows (-1: none)")
    picks = picks.astype(jnp.int32)
    n = candidates.shape[0]
    inside = (picks >= 0) & (picks < n)
    ok = inside & eligible[jnp.clip(picks, 0, n - 1)]
    order = jnp.argsort(jnp.where(ok, picks, n), stable=True)
    ranked = jnp.where(ok, picks, n)[order]
    repeat_sorted = jnp.concatenate([jnp.zeros((1,), bool), ranked[1:] == ranked[:-1]])
    repeat = jnp.zeros((budget,), bool).at[order].set(repeat_sorted)
    return jnp.where(ok & ~repeat, picks, -1)
