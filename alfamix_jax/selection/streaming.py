"""The linear shortcut's search over a pool held on the host (a NumPy array or a memory-
mapped `.npy`, possibly larger than device memory), streamed through a mesh in blocks.

Blocks of `devices * stream_block_size` rows are read on a background thread (`prefetch`
blocks ahead, one reader at a time so the file is read sequentially) while the devices
work on the current one. Per row only one small integer stays (the first cap that flips
it); the caps' early stop is decided after the pass, from histograms summed over blocks,
so the result equals the in-memory search's.
"""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.selection import search
from alfamix_jax.selection.heads import LinearHead
from alfamix_jax.selection.layout import NO_ROW, PAD_LABEL, ROW, WHOLE, Layout
from alfamix_jax.selection.mesh import put_rows
from alfamix_jax.selection.stages import Plan


class StreamedSearch:
    """`search(source, labels, head, anchors) -> (SearchResult, [num_candidates, first_bad])`."""

    def __init__(self, layout: Layout, plan: Plan, *, block_rows: int, prefetch: int):
        if layout.mesh is None:
            raise ValueError("streaming needs a mesh layout")
        self.layout, self.plan, self.block_rows, self.prefetch = layout, plan, block_rows, prefetch
        # A LinearSearch of spec strings, not arrays (the pass's spec tree): built with _make, which takes any values.
        specs = search.LinearSearch._make((ROW, ROW, WHOLE, WHOLE, WHOLE))
        linear = functools.partial(search.linear_search, block_size=plan.block_size)
        self.block = jax.jit(layout.run(linear, (ROW, ROW, WHOLE, WHOLE, WHOLE), specs))
        self.resolve = jax.jit(self._resolve)

    def _resolve(self, first: jax.Array, direction: jax.Array, row_hist: jax.Array, anchor_hist: jax.Array,
                 eps: jax.Array, first_bad: jax.Array) -> tuple[search.SearchResult, jax.Array]:
        found = search.resolve_first_caps(first, direction, row_hist, anchor_hist, eps, self.plan.budget)
        return found, jnp.stack([jnp.sum(found.candidates, dtype=jnp.int32), first_bad])

    def __call__(self, source: np.ndarray, labels: np.ndarray, head: LinearHead,
                 anchors: jax.Array) -> tuple[search.SearchResult, jax.Array]:
        mesh, devices = self.layout.mesh, self.layout.devices
        assert mesh is not None  # __init__ refuses a layout without one
        n, dim = source.shape
        rows_total = self.layout.padded(n)
        step = devices * min(self.block_rows, max(1, rows_total // devices))
        starts = list(range(0, rows_total, step))
        labels_padded = np.full(rows_total, PAD_LABEL, np.int32)
        labels_padded[:n] = labels
        eps = self.plan.eps(dim)
        lock = threading.Lock()

        def read(start: int) -> tuple[jax.Array, jax.Array]:
            with lock:  # one reader at a time keeps the file read sequential
                rows = np.asarray(source[start:min(start + step, n)], np.float32)  # a view when it can be
                chunk = put_rows(mesh, rows, rows=step)  # pads the last block; the transfer starts here
            return chunk, put_rows(mesh, labels_padded[start:start + step], rows=step, fill=PAD_LABEL)

        row_hist: jax.Array | int  # totals over the blocks so far (0 before the first)
        anchor_hist: jax.Array | int
        first_bad: jax.Array | int
        firsts, directions, row_hist, anchor_hist, first_bad = [], [], 0, 0, NO_ROW
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(read, s) for s in starts[: self.prefetch]]
            for i, start in enumerate(starts):
                chunk, chunk_labels = pending.pop(0).result()
                if i + self.prefetch < len(starts):
                    pending.append(pool.submit(read, starts[i + self.prefetch]))
                part = self.block(chunk, chunk_labels, head, anchors, eps)
                first_bad = jnp.minimum(first_bad, jnp.where(part.first_bad < NO_ROW, part.first_bad + start, NO_ROW))
                firsts.append(part.first_cap)
                directions.append(part.has_direction)
                row_hist, anchor_hist = row_hist + part.row_hist, anchor_hist + part.anchor_hist
        first = put_rows(mesh, np.concatenate([np.asarray(f) for f in firsts])[:rows_total], rows=rows_total)
        direction = put_rows(mesh, np.concatenate([np.asarray(d) for d in directions])[:rows_total], rows=rows_total)
        return self.resolve(first, direction, row_hist, anchor_hist, eps, first_bad)
