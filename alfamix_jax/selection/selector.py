"""`make_alfamix_selector`: the whole ALFA-Mix query, on one device or a device mesh.

    select = make_alfamix_selector(budget=1000, num_classes=10)                    # one device
    select = make_alfamix_selector(budget=1000, num_classes=10, mesh=pool_mesh())  # rows over a mesh
    result = select(key, embeddings, labels, LinearHead(W, b))
    result.selected  # [B] pool rows to label next

Settings that fix shapes or control flow go to the factory (`SelectorSettings`, or its
fields as keywords); arrays go to the returned function, whose shapes do not change from
round to round: the pool is the whole fixed-size array and `labels == -1` marks the
unlabelled rows, so a round with more labels reuses the compiled programs.

This module orders the stages of `stages.py` and moves data: it checks the arguments,
places the pool (one device, row-split over a mesh, or streamed from the host), reads two
integers between the search and the rest, and raises on a non-finite row.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alfamix_jax.selection import stages, validation
from alfamix_jax.selection.diversity import KMeansBuffer
from alfamix_jax.selection.heads import HeadApply
from alfamix_jax.selection.layout import Layout
from alfamix_jax.selection.mesh import ShardedPool
from alfamix_jax.selection.search import SearchResult
from alfamix_jax.selection.settings import SelectorSettings
from alfamix_jax.selection.stages import Diagnostics, Selection  # noqa: F401 (re-exported)
from alfamix_jax.selection.streaming import StreamedSearch


def make_alfamix_selector(*, budget: int, num_classes: int, head_apply: HeadApply | None = None,
                          mesh: Mesh | None = None, settings: SelectorSettings | None = None, fused: bool = False,
                          jit: bool = True, **setting_fields: Any) -> Selector:
    """Build `select(key, embeddings [N, D], labels [N], head_params) -> Selection`.

    budget: rows per batch; num_classes: C (the head's logits).
    head_apply: `(head_params, z [n, D]) -> logits [n, C]`, row-wise (any Flax `apply`);
      None means the linear head (`head_params` a `LinearHead`), which has exact shortcuts.
    mesh: None runs on one device. A 1-D `Mesh` (`mesh.pool_mesh()`) splits the pool's rows
      over its devices; the same seed gives the same batch on any number of devices, bit for
      bit, and the one-device batch. On more than one device, `compat="reference"`, the
      "labelled" anchors, `fused` and `jit=False` are refused (they run on one device).
    settings: a `SelectorSettings`; keywords replace its fields (`alpha="learned"`, ...).
    fused: one jitted program (a `lax.cond` between taking every candidate and the
      diversity rule), to call inside your own `jit`. By default two jitted stages with one
      host read between them, so the k-means program compiles only in rounds that need it.
    jit: False runs the stages eagerly (debugging, jit-vs-eager tests).

    The arguments of `select`:
    - key: a PRNG key (`jax.random.key(seed)`); the same key gives the same batch.
    - embeddings: a float array [N, D]. On a mesh, a JAX array is split over the devices
      (a copy unless it already is); a `ShardedPool` (`mesh.shard_pool`) is placed once, by
      every process for its own devices; a NumPy array or memory-mapped `.npy` is streamed
      through the devices in blocks (linear head, closed form), so it may exceed memory.
    - labels: integer [N], -1 = unlabelled, else the class in [0, C); at least one labelled.
    - head_params: the head's parameters (a `LinearHead` for the linear head).
    Bad arguments raise ValueError naming the argument, the value and what is expected.

    Parts you replace with a function (see `SelectorSettings` and the README, "Writing a
    variant"): `alpha`, `anchors`, `diversity`.
    """
    budget = validation.check_count("budget", budget, 1)
    num_classes = validation.check_count("num_classes", num_classes, 2)
    if settings is not None and not isinstance(settings, SelectorSettings):
        raise ValueError(f"settings: got a {type(settings).__name__}; expected a SelectorSettings")
    settings = (settings or SelectorSettings()).with_fields(**setting_fields)
    plan = stages.make_plan(settings, budget=budget, num_classes=num_classes, head_apply=head_apply)
    one_device_only = one_device_features(settings, fused=fused, jit=jit)
    device = None
    if mesh is not None and one_device_only:
        devices = list(mesh.devices.flat)
        if len(devices) > 1:
            raise ValueError(f"{one_device_only[0]} runs on one device, not on a mesh of {len(devices)}; build the "
                             "selector with mesh=None (or a mesh of one device)")
        mesh, device = None, devices[0]
    return Selector(plan, Layout(mesh), settings, fused=fused, jit=jit, device=device)


def one_device_features(settings: SelectorSettings, *, fused: bool = False, jit: bool = True) -> list[str]:
    """What keeps a selector on one device, in words."""
    features = []
    if settings.compat == "reference":
        features.append('compat="reference"')  # the original's fill draws from the whole pool at once
    if settings.anchors == "labelled":
        features.append('anchors="labelled"')  # a random subset drawn over the whole pool
    if fused:
        features.append("fused=True")  # one program: no host read of the labelled rows
    if not jit:
        features.append("jit=False")
    return features


@dataclasses.dataclass
class _Pool:
    """A call's arguments, checked and placed."""

    x: Any  # [N', D] on the layout, or the host array to stream
    labels: jax.Array  # [N'] int32 on the layout (PAD_LABEL past N)
    host_labels: np.ndarray | None  # [N], on a mesh
    size: int  # N
    streamed: bool
    labels_pending: bool  # device labels: their values are checked at the search's host read


class Selector:
    """`select(key, embeddings, labels, head_params) -> Selection` (see `make_alfamix_selector`)."""

    def __init__(self, plan: stages.Plan, layout: Layout, settings: SelectorSettings, *, fused: bool, jit: bool,
                 device: jax.Device | None = None) -> None:
        self.plan, self.layout, self.settings, self.fused, self.device = plan, layout, settings, fused, device
        wrap = jax.jit if jit else (lambda f, **_: f)
        self._search = wrap(functools.partial(stages.run_search, layout, plan))
        self._finish = {stage: wrap(functools.partial(stages.finish, layout, plan, stage),
                                    static_argnames=("pool_size", "kmeans_sizing")) for stage in ("all", "diversify")}
        self._fused = wrap(self._fused_program)
        self._anchors = wrap(lambda key, x, y: stages.compute_anchor_rows(plan, stages.split_keys(key), x, y))
        self._gather = wrap(layout.gather)
        self._buffer = wrap(functools.partial(stages.kmeans_buffer, layout, plan), static_argnames="pool_size")
        self._stream: StreamedSearch | None = None
        if layout.mesh is not None:
            self._stream = StreamedSearch(layout, plan, block_rows=settings.stream_block_size,
                                          prefetch=settings.prefetch)
        # The jitted stages, for `.lower(...).compile().memory_analysis()` and benchmarks.
        self.stages = dict(search=self._search, finish_all=self._finish["all"],
                           finish_diversify=self._finish["diversify"], fused=self._fused)

    @property
    def streams(self) -> bool:
        """Whether a NumPy array / memmap pool is streamed through the mesh (else refused)."""
        return self.layout.mesh is not None and self.plan.fast_path and not callable(self.plan.diversity)

    def _fused_program(self, key: jax.Array, x: jax.Array, labels: jax.Array,
                       head_params: Any) -> tuple[Selection, jax.Array]:
        found, summary = stages.run_search(self.layout, self.plan, key, x, labels, head_params, x, labels)
        selection = stages.finish(self.layout, self.plan, "auto", key, x, labels, found, pool_size=x.shape[0])
        return selection, summary

    def __call__(self, key: jax.Array, embeddings: jax.Array | np.ndarray | ShardedPool, labels: jax.Array | np.ndarray,
                 head_params: Any) -> Selection:
        _check_key(key)
        pool = self._place(embeddings, labels, head_params)
        if self.fused:
            selection, summary = self._fused(key, pool.x, pool.labels, head_params)
            if not isinstance(summary, jax.core.Tracer):  # called eagerly: check as the two stages do
                self._check_summary(summary, pool)
            return selection
        found, count = self._run_search(key, pool, head_params)
        stage = "all" if count <= self.plan.budget else "diversify"
        buffer = None
        if pool.streamed and stage == "diversify" and self.plan.diversity == "kmeans":
            buffer = self._read_buffer(key, pool, found)
        x = None if pool.streamed else pool.x
        sizing = stages.kmeans_sizing(self.plan, count, pool_size=pool.size)
        return self._finish[stage](key, x, pool.labels, found, pool_size=pool.size, buffer=buffer, kmeans_sizing=sizing)

    def _run_search(self, key: jax.Array, pool: _Pool, head_params: Any) -> tuple[SearchResult, int]:
        """The candidate search on a placed pool -> (SearchResult, candidate count); raises on a
        non-finite row. The count and that row are the one host read between the stages."""
        if pool.streamed:
            anchor_x, anchor_y = self._labelled_rows(pool)
            anchors = self._anchors(key, anchor_x, anchor_y)
            # A pool is streamed only on a mesh, where the selector has a stream and the host labels.
            assert self._stream is not None and pool.host_labels is not None
            found, summary = self._stream(pool.x, pool.host_labels, head_params, anchors)
        else:
            anchor_x, anchor_y = self._labelled_rows(pool) if self.layout.mesh is not None else (pool.x, pool.labels)
            found, summary = self._search(key, pool.x, pool.labels, head_params, anchor_x, anchor_y)
        count = self._check_summary(summary, pool)
        return found, count

    def _check_summary(self, summary: jax.Array, pool: _Pool) -> int:
        """The one host read: raise on bad label values or a non-finite row. -> candidate count."""
        values = [int(v) for v in jax.device_get(summary)]
        if pool.labels_pending:
            validation.check_label_values(*values[2:5], n=pool.size, num_classes=self.plan.num_classes,
                                          budget=self.plan.budget)
        validation.raise_nonfinite_row(values[1])
        return values[0]

    def _place(self, embeddings: jax.Array | np.ndarray | ShardedPool, labels: jax.Array | np.ndarray,
               head_params: Any) -> _Pool:
        """Check the arguments (validation.py) and lay the pool out on this selector's layout."""
        sharded = isinstance(embeddings, ShardedPool)
        if sharded and self.layout.mesh is None:
            raise ValueError("embeddings: got a ShardedPool, which is placed on a mesh; pass the array itself, or "
                             "build the selector with mesh=")
        # isinstance() below rather than `sharded`: the same test, which mypy narrows embeddings by
        n, dim = validation.check_embeddings(embeddings.rows if isinstance(embeddings, ShardedPool) else embeddings)
        if isinstance(embeddings, ShardedPool):
            n = validation.check_count("embeddings.size", embeddings.size, 1)
            if embeddings.rows.shape[0] != self.layout.padded(n):
                raise ValueError(f"embeddings: a ShardedPool of {embeddings.rows.shape[0]} rows for size {n} on "
                                 f"{self.layout.devices} devices; build it with mesh.shard_pool(mesh, embeddings)")
        if self.layout.mesh is not None and isinstance(labels, jax.Array) and not isinstance(labels, jax.core.Tracer):
            labels = np.asarray(labels)  # a mesh reads the labels on the host anyway: check them there, once
        pending = validation.check_labels(labels, n=n, num_classes=self.plan.num_classes, budget=self.plan.budget)
        validation.check_head(self.plan.head_apply, head_params, dim=dim, num_classes=self.plan.num_classes,
                              dtype=jnp.float32)
        streamed = isinstance(embeddings, np.ndarray) and self.layout.mesh is not None
        if streamed:
            self._check_streamable()
        if self.layout.mesh is None:
            x = jnp.asarray(embeddings) if self.device is None else jax.device_put(embeddings, self.device)
            y = jnp.asarray(labels, jnp.int32)
            return _Pool(x, y if self.device is None else jax.device_put(y, self.device), None, n, False, pending)
        host_labels = np.asarray(labels, np.int32)
        if isinstance(embeddings, ShardedPool):
            x = embeddings.rows
        elif streamed:
            x = embeddings
        else:
            x = self.layout.place_rows(jnp.asarray(embeddings))
        return _Pool(x, self.layout.place_labels(host_labels), host_labels, n, streamed, False)

    def _check_streamable(self) -> None:
        if jax.process_count() > 1:
            raise ValueError("embeddings: a NumPy array is streamed from this process, and this mesh spans "
                             f"{jax.process_count()} processes; place the pool with mesh.shard_pool(mesh, embeddings) "
                             "(each process reads only its own rows)")
        if not self.streams:
            raise ValueError("embeddings: a NumPy array on a mesh is streamed through the devices, which needs the "
                             "linear head with the closed-form alpha and a built-in diversity rule; pass "
                             "jnp.asarray(embeddings) (or mesh.shard_pool) for other heads and rules")

    def _labelled_rows(self, pool: _Pool) -> tuple[jax.Array, jax.Array]:
        """On a mesh, the anchors' rows: the labelled rows gathered in row order into a buffer
        of a power-of-two size (few compiles), padding slots labelled -1."""
        assert pool.host_labels is not None  # set on a mesh, the only layout that calls this
        rows = np.flatnonzero(pool.host_labels >= 0)
        size = max(64, 1 << max(0, rows.size - 1).bit_length())
        padded = np.zeros(size, np.int32)
        padded[: rows.size] = rows
        y = np.full(size, -1, np.int32)
        y[: rows.size] = pool.host_labels[rows]
        if pool.streamed:
            return jnp.asarray(np.asarray(pool.x[padded], np.float32)), jnp.asarray(y)
        return self._gather(pool.x, jnp.asarray(padded)), jnp.asarray(y)

    def _read_buffer(self, key: jax.Array, pool: _Pool, found: SearchResult) -> KMeansBuffer:
        """A streamed pool's k-means buffer, read back from the host array."""
        rows, n_valid = self._buffer(key, found.candidates, pool_size=pool.size)
        x = jnp.asarray(np.asarray(pool.x[np.asarray(rows)], np.float32))
        return (rows, n_valid), x


def _check_key(key: jax.Array) -> None:
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ()
    raw = dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)
    if not (typed or raw):
        raise ValueError(f"key: got {type(key).__name__} {getattr(key, 'shape', '')}; expected one PRNG key, "
                         "e.g. jax.random.key(seed)")

