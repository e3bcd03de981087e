"""ALFA-Mix selection on a device mesh: pool rows split over devices (and hosts).

    mesh = pool_mesh()                                   # alfamix_jax.selection.mesh
    select = make_sharded_selector(mesh=mesh, budget=1000, num_classes=10)
    x = put_rows(mesh, embeddings)                       # [N, D] -> rows over the devices, once
    result = select(key, x, labels, LinearHead(W, b))    # labels: NumPy [N], -1 = unlabelled
    result = select(key, np.load("pool.npy", mmap_mode="r"), labels, head)   # streamed from the host

The same seed gives the same selection on any number of devices, bit for
bit. Everything per row (thresholds, flips, random draws keyed by the global
row) is computed by the same ops whatever the shard; what crosses devices is
either exact or done in a fixed order:
- integer counts (candidates per cap, per anchor) are summed with `psum`, and
  the caps' early stop is decided on those global counts;
- the anchors are the class means of the labelled rows, gathered into one
  buffer in row order (an exact gather) and averaged the same way everywhere;
- k-means runs on a buffer of candidate rows gathered the same way; its
  Lloyd passes split row blocks over the devices and add the per-block sums
  in block order (`kmeans(..., axis_name=...)`);
- the top-k steps (the candidate subsample, the fill) merge per-device top-k
  lists, which is exact, ties going to the lower row as in `lax.top_k`.

Pools larger than device memory: pass the embeddings as a NumPy array or a
memory-mapped `.npy` instead of a device array. They are streamed through
the mesh in blocks of `block_size` rows per device, the next block read by a
background thread while the devices work on the current one; per row only
one small integer stays (the first cap that flips it), and the k-means
buffer is read back from the file. Streaming uses the linear head with the
closed-form alpha (the exact shortcut of `candidates.linear_first_caps`), and
gives the same selection as the in-memory path.

What this path does not do: `compat="reference"` and the "labelled" anchors
ablation run on one device only (`make_alfamix_selector`). The anchors here
are computed from the gathered labelled rows, so they can differ from the
one-device selector's (a masked matmul over the whole pool) in the last bit.
"""
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from alfamix_jax.selection import mixing, search
from alfamix_jax.selection.anchors import compute_anchors
from alfamix_jax.selection.caps import make_caps
from alfamix_jax.selection.fill import _append, fill_scores
from alfamix_jax.selection.heads import HeadApply, LinearHead, linear_head_apply
from alfamix_jax.selection.kmeans import kmeans
from alfamix_jax.selection.mesh import mesh_size, padded_rows, put_rows, replicated, row_sharding
from alfamix_jax.selection.selector import (
    DEFAULT_LEARNED,
    Selection,
    _normalise,
    check_selector_settings,
    search_stats,
    selection_diagnostics,
)
from alfamix_jax.selection.validation import validate_head, validate_labels

PAD_LABEL = -2  # padding rows past N: neither labelled nor eligible
NO_ROW = np.iinfo(np.int32).max


def _bucket(n: int, smallest: int = 64) -> int:
    """Static buffer size for n rows: the next power of two (few compiles)."""
    return max(smallest, 1 << max(0, n - 1).bit_length())


def global_top_k(values, k: int, axis: str):
    """Inside shard_map: the k largest of a row-sharded [n] array, over all
    devices. -> (values [k], global rows [k]); -inf / -1 past the pool.
    Ties go to the lower row, as `lax.top_k` on the whole array does:
    each device's list is in that order, and the lists are joined in row order."""
    n = values.shape[0]
    local_k = min(k, n)
    v, i = jax.lax.top_k(values, local_k)
    rows = jax.lax.axis_index(axis) * n + i.astype(jnp.int32)
    every_v = jax.lax.all_gather(v, axis, tiled=True)  # [devices * local_k]
    every_rows = jax.lax.all_gather(rows, axis, tiled=True)
    top_v, at = jax.lax.top_k(every_v, min(k, every_v.shape[0]))
    top_rows = every_rows[at]
    missing = k - top_v.shape[0]
    if missing:
        top_v = jnp.concatenate([top_v, jnp.full((missing,), -jnp.inf, top_v.dtype)])
        top_rows = jnp.concatenate([top_rows, jnp.full((missing,), -1, jnp.int32)])
    return top_v, top_rows


def _local_mask(rows, n: int, axis: str):
    """[R] global rows (-1: none) -> [n] bool for this device's rows."""
    local = rows - jax.lax.axis_index(axis) * n
    inside = (rows >= 0) & (local >= 0) & (local < n)
    return jnp.zeros((n,), bool).at[jnp.where(inside, local, n)].set(True, mode="drop")


def make_sharded_selector(
    *,
    mesh: Mesh,
    budget: int,
    num_classes: int,
    head_apply: HeadApply | None = None,
    alpha: str = "closed-form",
    alpha_cap_step: float = 0.2,
    learned: mixing.LearnedAlphaConfig = DEFAULT_LEARNED,
    block_size: int = 4096,
    max_candidates: int = 65536,
    kmeans_max_iters: int = 100,
    kmeans_tol: float = 1e-4,
    kmeans_block_size: int | None = None,
    linear_fast_path: bool = True,
    diversity: str = "kmeans",
    stream_block_size: int | None = None,
    prefetch: int = 2,
):
    """Build `select(key, embeddings, labels, head_params) -> Selection` on `mesh`.

    embeddings: a row-sharded device array [N', D] (`mesh.put_rows`, N' >= N
      padded rows past N are ignored), or a host NumPy array / memory-mapped
      `.npy` [N, D] to stream through the devices (linear head, closed form).
    labels: NumPy [N] int, -1 = unlabelled; the same array on every process.
    Settings as in `make_alfamix_selector` (default compat). block_size: rows
    per device per step of the in-memory search: small blocks suit CPU caches;
    on a GPU, a block as large as the shard lets the search read the pool in
    one pass (a sliced block is copied first). stream_block_size: rows per
    device per block read from the host (default: block_size); prefetch:
    blocks read ahead.
    Returns the `Selection` of the single-device selector; `candidates` is
    [N'] sharded over the mesh (padding rows False).
    """
    check_selector_settings(alpha=alpha, diversity=diversity, budget=budget, num_classes=num_classes,
                            block_size=block_size, max_candidates=max_candidates, prefetch=prefetch,
                            stream_block_size=stream_block_size or block_size,
                            kmeans_block_size=kmeans_block_size or block_size)
    axis = mesh.axis_names[0]
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must have one axis (pool rows), got axes {mesh.axis_names}; use mesh.pool_mesh()")
    devices = mesh_size(mesh)
    stream_block_size = stream_block_size or block_size
    caps = make_caps(alpha_cap_step, "default")
    num_caps = len(caps)
    use_fast_path = linear_fast_path and head_apply is None and alpha == "closed-form"
    head_apply = head_apply or linear_head_apply
    kmeans_kwargs = dict(max_iters=kmeans_max_iters, tol=kmeans_tol, block_size=kmeans_block_size or block_size)
    rows_spec, whole = P(axis), P()
    # check_vma=False: loop carries start replicated and become per-device; every collective here is explicit.
    on_mesh = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)

    def eps_for(dim):
        cap_values = jnp.asarray(caps, jnp.float32)
        return cap_values / np.sqrt(dim) if alpha == "closed-form" else cap_values

    # ---- anchors: class means of the labelled rows, gathered in row order ---------------------
    @jax.jit
    def gather_rows(embeddings, rows):  # [N', D] sharded, [R] replicated -> [R, D] replicated
        return jax.lax.with_sharding_constraint(embeddings[rows], replicated(mesh))

    @jax.jit
    def anchors_from(x_labelled, y_labelled):  # [L, D], [L] (-1: padding slot) -> [C, D]
        return compute_anchors(x_labelled, y_labelled, num_classes)

    def labelled_buffer(labels):
        rows = np.flatnonzero(labels >= 0)
        size = _bucket(rows.size)
        padded = np.zeros(size, np.int32)
        padded[: rows.size] = rows
        y = np.full(size, -1, np.int32)
        y[: rows.size] = labels[rows]
        return padded, y

    # ---- the candidate search, in memory --------------------------------------------------------
    def linear_search_shard(embeddings, labels, head, anchors, eps):
        """One shard [n, D] -> first caps [n], directions [n], global histograms."""
        n = embeddings.shape[0]
        size, num_blocks = search.block_starts(n, block_size)

        def body(j, carry):
            first, direction, row_hist, anchor_hist, first_bad = carry
            start = jnp.minimum(j * size, n - size)  # the last block shifted back to end at n
            u = jax.lax.dynamic_slice_in_dim(embeddings, start, size)
            ok = jax.lax.dynamic_slice_in_dim(labels, start, size) == -1
            fresh = start + jnp.arange(size) >= j * size  # rows not counted by the block before
            found = search.linear_first_caps(u, ok, fresh, head, anchors, eps)
            real = jax.lax.dynamic_slice_in_dim(labels, start, size) != PAD_LABEL
            rows = jax.lax.axis_index(axis) * n + start + jnp.arange(size, dtype=jnp.int32)
            first_bad = jnp.minimum(first_bad, jnp.min(jnp.where(real & ~found.finite, rows, NO_ROW)))
            first = jax.lax.dynamic_update_slice_in_dim(first, found.first_cap, start, axis=0)
            direction = jax.lax.dynamic_update_slice_in_dim(direction, found.has_direction, start, axis=0)
            row_hist = row_hist + search.first_cap_hist(found.first_cap, fresh, num_caps)
            return first, direction, row_hist, anchor_hist + found.anchor_hist, first_bad

        init = (
            jnp.full((n,), num_caps, jnp.int32),
            jnp.zeros((n,), bool),
            jnp.zeros((num_caps + 1,), jnp.int32),
            jnp.zeros((num_caps + 1, anchors.shape[0]), jnp.int32),
            jnp.int32(NO_ROW),
        )
        if num_blocks == 1:  # the whole shard in one block: no loop, so XLA fuses across the whole search
            first, direction, row_hist, anchor_hist, first_bad = body(0, init)
        else:
            first, direction, row_hist, anchor_hist, first_bad = jax.lax.fori_loop(0, num_blocks, body, init)
        return (first, direction, jax.lax.psum(row_hist, axis), jax.lax.psum(anchor_hist, axis),
                jax.lax.pmin(first_bad, axis))

    linear_search_on_mesh = on_mesh(
        linear_search_shard,
        in_specs=(rows_spec, rows_spec, whole, whole, whole),
        out_specs=(rows_spec, rows_spec, whole, whole, whole),
    )

    @jax.jit
    def resolve(first, direction, row_hist, anchor_hist, eps):
        return search.resolve_first_caps(first, direction, row_hist, anchor_hist, eps, budget)

    def flips_fn(block, anchor, eps, cap, key, *, head_params):
        if alpha == "closed-form":
            return mixing.closed_form_flips(head_apply, head_params, block, anchor, eps, literal=False)
        if alpha == "random":
            return mixing.random_flips(head_apply, head_params, block, anchor, cap, key)
        return mixing.learned_flips(head_apply, head_params, block, anchor, cap, key, learned)

    def general_search_shard(key, embeddings, labels, head_params, anchors, eps, cap_values):
        n = embeddings.shape[0]
        eligible = labels == -1
        pseudo = jnp.argmax(head_apply(head_params, embeddings), axis=-1).astype(jnp.int32)
        return search.search_general(
            key, embeddings, eligible, pseudo, anchors, head_apply, head_params, eps, cap_values, budget,
            functools.partial(flips_fn, head_params=head_params), block_size=block_size,
            require_direction=True, row_offset=jax.lax.axis_index(axis) * n,
            total=lambda count: jax.lax.psum(count, axis),
        )

    @jax.jit
    def search_in_memory(key, embeddings, labels, head_params, anchors):
        eps = eps_for(embeddings.shape[-1])
        if use_fast_path:
            *parts, first_bad = linear_search_on_mesh(embeddings, labels, head_params, anchors, eps)
            return search.resolve_first_caps(*parts, eps, budget), first_bad
        rows = jnp.arange(embeddings.shape[0], dtype=jnp.int32)
        bad = (labels != PAD_LABEL) & ~jnp.all(jnp.isfinite(embeddings), axis=-1)
        first_bad = jnp.min(jnp.where(bad, rows, NO_ROW))
        search_key = jax.random.split(key, 3)[0]
        cap_values = jnp.asarray(caps, jnp.float32)
        out_specs = search.SearchResult(rows_spec, whole, whole, whole, whole, rows_spec, rows_spec)
        found = on_mesh(
            general_search_shard,
            in_specs=(whole, rows_spec, rows_spec, whole, whole, whole, whole),
            out_specs=out_specs,
        )(search_key, embeddings, labels, head_params, anchors, eps, cap_values)
        return found, first_bad

    # ---- the candidate search, streamed from the host -------------------------------------------
    @jax.jit
    def stream_block(embeddings, labels, head, anchors, eps):  # [devices * R, D] sharded
        return linear_search_on_mesh(embeddings, labels, head, anchors, eps)

    def search_streamed(source, labels_padded, head, anchors, rows_total):
        """One pass over `source` [N, D] (NumPy / memmap) in blocks of
        devices * stream_block_size rows, reading ahead on a background thread."""
        n, dim = source.shape
        step = devices * min(stream_block_size, max(1, rows_total // devices))
        starts = start_rows = list(range(0, rows_total, step))
        eps = eps_for(dim)
        lock = threading.Lock()

        def read(start):
            stop = min(start + step, n)
            with lock:  # one reader at a time keeps the file read sequential
                rows = np.asarray(source[start:stop], np.float32)  # a view when it can be (float32 in RAM)
                chunk = put_rows(mesh, rows, rows=step)  # pads the last block; the transfer starts here
            block_labels = labels_padded[start:start + step]
            return chunk, put_rows(mesh, block_labels, rows=step, fill=PAD_LABEL)

        firsts, directions = [], []
        row_hist = anchor_hist = 0
        first_bad = NO_ROW
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(read, s) for s in starts[:prefetch]]
            for i in range(len(starts)):
                chunk, chunk_labels = pending.pop(0).result()
                if i + prefetch < len(starts):
                    pending.append(pool.submit(read, starts[i + prefetch]))
                first, direction, rh, ah, bad = stream_block(chunk, chunk_labels, head, anchors, eps)
                first_bad = jnp.minimum(first_bad, jnp.where(bad < NO_ROW, bad + start_rows[i], NO_ROW))
                firsts.append(first)
                directions.append(direction)
                row_hist, anchor_hist = row_hist + rh, anchor_hist + ah
        first = np.concatenate([np.asarray(f) for f in firsts])[:rows_total]
        direction = np.concatenate([np.asarray(d) for d in directions])[:rows_total]
        first, direction = put_rows(mesh, first, rows=rows_total), put_rows(mesh, direction, rows=rows_total)
        return resolve(first, direction, row_hist, anchor_hist, eps), first_bad

    # ---- diversity and fill ---------------------------------------------------------------------
    def random_scores(key, rows_total):
        """[N'] uniform draws, row-sharded; a row's draw does not depend on N' or the mesh."""
        return jax.lax.with_sharding_constraint(jax.random.uniform(key, (rows_total,)), row_sharding(mesh))

    capacity = max_candidates

    @jax.jit
    def choose_buffer(key, found: search.SearchResult):
        """The rows k-means clusters: every candidate if there are at most
        `max_candidates`, else a uniform subset of that size; in row order.
        -> rows [capacity] (past n_valid: the last row, ignored), n_valid."""
        subsample_key = jax.random.split(jax.random.split(key, 3)[1])[0]
        cands = found.candidates
        priority = jnp.where(cands, random_scores(subsample_key, cands.shape[0]), -1.0)

        def shard(priority):
            return global_top_k(priority, capacity, axis)

        values, rows = on_mesh(shard, in_specs=rows_spec, out_specs=(whole, whole))(priority)
        valid = values >= 0
        rows = jnp.sort(jnp.where(valid, rows, jnp.iinfo(jnp.int32).max))
        n_valid = jnp.sum(valid, dtype=jnp.int32)
        return jnp.where(jnp.arange(capacity) < n_valid, rows, rows[0]), n_valid

    @jax.jit
    def gather_buffer(embeddings, rows):
        """[N', D] sharded, [M] -> [M, D] on every device: each device fills
        the rows it holds, zeros elsewhere, and a psum adds exact zeros."""
        def shard(x, rows):
            n = x.shape[0]
            local = rows - jax.lax.axis_index(axis) * n
            inside = (local >= 0) & (local < n)
            return jax.lax.psum(jnp.where(inside[:, None], x[jnp.clip(local, 0, n - 1)], 0.0), axis)

        return on_mesh(shard, in_specs=(rows_spec, whole), out_specs=whole)(embeddings, rows)

    @jax.jit
    def cluster(key, buffer, rows, n_valid):
        """k-means over the L2-normalised buffer, Lloyd passes split over the
        devices. -> picks [B] global rows (-1: empty cluster), iterations, inertia."""
        kmeans_key = jax.random.split(jax.random.split(key, 3)[1])[1]

        def shard(buffer, rows, n_valid):
            result = kmeans(kmeans_key, _normalise(buffer), n_valid, budget, axis_name=axis, **kmeans_kwargs)
            picks = jnp.where(result.picks >= 0, rows[jnp.maximum(result.picks, 0)], -1)
            return picks, result.iterations, result.inertia.astype(jnp.float32)

        return on_mesh(shard, in_specs=(whole, whole, whole), out_specs=(whole, whole, whole))(buffer, rows, n_valid)

    @functools.partial(jax.jit, static_argnames="mode")
    def pick_by_score(key, found: search.SearchResult, mode: str):
        """Every candidate ("all"), or `budget` of them by a score: "random" or "top-alpha"."""
        cands = found.candidates
        if mode == "all":
            score = jnp.where(cands, -jnp.arange(cands.shape[0], dtype=jnp.float32), -jnp.inf)  # row order
        elif mode == "random":
            score = jnp.where(cands, random_scores(jax.random.split(key, 3)[1], cands.shape[0]), -jnp.inf)
        else:
            score = jnp.where(cands, -found.min_rho, -jnp.inf)

        def shard(score):
            values, rows = global_top_k(score, budget, axis)
            return jnp.where(values > -jnp.inf, rows, -1)

        return on_mesh(shard, in_specs=rows_spec, out_specs=whole)(score)

    @jax.jit
    def fill(key, picks, found: search.SearchResult, labels):
        """`fill_default` over the mesh: picks first, then unpicked candidates,
        then other unlabelled rows, each in random order; no duplicates."""
        fill_key = jax.random.split(key, 3)[2]
        u = random_scores(fill_key, labels.shape[0])

        def shard(picks, cands, labels, u):
            n = cands.shape[0]
            score = fill_scores(_local_mask(picks, n, axis), cands, labels == -1, u)
            _, extra = global_top_k(score, budget, axis)
            selected, filled = _append(picks, extra)
            chosen = _local_mask(selected, n, axis)
            from_candidates = jax.lax.psum(jnp.sum(chosen & cands, dtype=jnp.int32), axis)
            return selected, filled, from_candidates

        return on_mesh(shard, in_specs=(whole, rows_spec, rows_spec, rows_spec),
                       out_specs=(whole, whole, whole))(picks, found.candidates, labels, u)

    @jax.jit
    def summarise(found: search.SearchResult, labels):
        """Counts (exact on any mesh) and rho statistics (mean / std are float
        sums over rows, so their last bits may depend on the mesh)."""
        return search_stats(found, labels == -1)

    # ---- the query --------------------------------------------------------------------------------
    def check(embeddings, labels):
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be a 1-D NumPy integer array (-1 = unlabelled), got "
                             f"{type(labels).__name__} {getattr(labels, 'shape', '')}")
        n = labels.shape[0]
        if embeddings.ndim != 2 or embeddings.shape[0] < n:
            raise ValueError(f"embeddings must be [N, D] with N >= len(labels)={n} (padding rows past N are "
                             f"ignored), got shape {embeddings.shape}")
        validate_labels(labels, num_classes=num_classes, budget=budget)
        if isinstance(embeddings, jax.Array):
            if embeddings.shape[0] % devices:
                raise ValueError(f"embeddings: {embeddings.shape[0]} rows do not split over {devices} devices; "
                                 f"place them with alfamix_jax.selection.mesh.put_rows(mesh, embeddings)")
        elif not isinstance(embeddings, np.ndarray):
            raise ValueError(f"embeddings must be a jax.Array on the mesh or a NumPy array / memmap, got "
                             f"{type(embeddings).__name__}")
        elif jax.process_count() > 1:
            raise ValueError("streamed embeddings run in one process; with several processes, place the pool on "
                             "the mesh with alfamix_jax.selection.mesh.put_rows (each process reads only its own rows)")
        elif not use_fast_path:
            raise ValueError("streamed embeddings (a NumPy array / memmap) need the linear head with the "
                             "closed-form alpha; put them on the mesh (mesh.put_rows) for other paths")

    def check_head(head_params, dim):
        if not isinstance(head_params, LinearHead):
            return
        weight = np.asarray(head_params.weight)
        validate_head(weight, np.asarray(head_params.bias), dim=dim)
        if weight.shape[0] != num_classes:
            raise ValueError(f"head_weight has {weight.shape[0]} classes (rows); the selector was built for "
                             f"num_classes={num_classes}")

    def class_anchors(embeddings, labels):
        """[C, D] replicated: the labelled rows gathered (from the mesh or the
        host array) into a buffer in row order, then their class means."""
        labelled_rows, labelled_y = labelled_buffer(labels)
        if isinstance(embeddings, jax.Array):
            x_labelled = gather_rows(embeddings, jnp.asarray(labelled_rows))
        else:
            x_labelled = jnp.asarray(np.asarray(embeddings[labelled_rows], np.float32))
        if not bool(jnp.all(jnp.isfinite(x_labelled))):
            raise ValueError("embeddings: a labelled row holds NaN/inf, so the class anchors would too; "
                             "remove or impute it")
        return anchors_from(x_labelled, jnp.asarray(labelled_y))

    def select(key, embeddings, labels, head_params) -> Selection:
        check(embeddings, labels)
        check_head(head_params, embeddings.shape[1])
        n = labels.shape[0]
        streamed = not isinstance(embeddings, jax.Array)
        rows_total = padded_rows(n, devices) if streamed else embeddings.shape[0]
        labels_padded = np.full(rows_total, PAD_LABEL, np.int32)
        labels_padded[:n] = labels
        labels_on_mesh = put_rows(mesh, labels_padded)

        anchors = class_anchors(embeddings, labels)

        if streamed:
            found, first_bad = search_streamed(embeddings, labels_padded, head_params, anchors, rows_total)
        else:
            found, first_bad = search_in_memory(key, embeddings, labels_on_mesh, head_params, anchors)
        if int(first_bad) != NO_ROW:
            raise ValueError(f"embeddings: row {int(first_bad)} (and maybe others) holds NaN/inf, or values so "
                             f"large the logits overflow; remove or impute such rows")
        stats = summarise(found, labels_on_mesh)
        count = int(stats["num_candidates"])

        iterations, inertia, clustered = jnp.int32(0), jnp.float32(0.0), jnp.int32(min(count, budget))
        if count <= budget:
            picks = pick_by_score(key, found, mode="all")
        elif diversity == "kmeans":
            rows, clustered = choose_buffer(key, found)
            if streamed:
                host_rows = np.asarray(rows)
                buffer = jnp.asarray(np.asarray(embeddings[host_rows], np.float32))
            else:
                buffer = gather_buffer(embeddings, rows)
            picks, iterations, inertia = cluster(key, buffer, rows, clustered)
        else:
            picks = pick_by_score(key, found, mode=diversity)
            clustered = jnp.int32(count)
        selected, filled, from_candidates = fill(key, picks, found, labels_on_mesh)
        diagnostics = selection_diagnostics(caps, found, stats, clustered=clustered, filled=filled,
                                            iterations=iterations, inertia=inertia, from_candidates=from_candidates)
        return Selection(selected, found.candidates, diagnostics)

    # The stages, for benchmarks and `.lower(...)`: anchors(embeddings, labels) -> [C, D];
    # search(key, embeddings, labels_on_mesh, head, anchors) -> (SearchResult, first bad row); then
    # choose_buffer -> gather_buffer -> cluster -> fill, as `select` calls them.
    select.stages = dict(anchors=class_anchors, search=search_in_memory, choose_buffer=choose_buffer,
                         gather_buffer=gather_buffer, cluster=cluster, fill=fill, stream_block=stream_block)
    return select
