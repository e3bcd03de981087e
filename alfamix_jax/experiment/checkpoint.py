"""Per-run checkpoints: one orbax step per finished round.

Orbax writes each step into a temporary directory and renames it only once
everything is on disk (`commit_success.txt`), so a run killed at any moment
leaves either the previous round or the new one, never half of one; stray
temporary directories are removed when the manager opens. A step holds an
array pytree (labelled mask, optional model state) and JSON metadata (round,
records, the run's identity).
"""
from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import numpy as np

# orbax logs every save at INFO through absl; the runner prints its own progress.
logging.getLogger("absl").setLevel(logging.WARNING)


class Restored(NamedTuple):
    round: int
    arrays: Any  # the pytree given to `save`, as NumPy arrays
    meta: dict


class RunCheckpointer:
    """Saves and restores the state of one (strategy, seed) run."""

    def __init__(self, directory: str, *, keep: int = 2):
        import orbax.checkpoint as ocp  # heavy import, only for runs

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def save(self, round_index: int, arrays, meta: dict) -> None:
        arrays = jax.tree.map(np.asarray, arrays)
        args = self._ocp.args.Composite(
            arrays=self._ocp.args.StandardSave(arrays), meta=self._ocp.args.JsonSave(meta)
        )
        self._manager.save(round_index, args=args, force=True)
        self._manager.wait_until_finished()

    def latest(self, template=None) -> Restored | None:
        """The last finished round, or None. `template`: a pytree like the one
        saved (arrays or shape/dtype structs), to get the same pytree types back
        (NamedTuples, nnx.State); without it, nested dicts."""
        step = self._manager.latest_step()
        if step is None:
            return None
        if template is not None:
            template = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, template)
        args = self._ocp.args.Composite(
            arrays=self._ocp.args.StandardRestore(template), meta=self._ocp.args.JsonRestore()
        )
        out = self._manager.restore(step, args=args)
        return Restored(int(step), out["arrays"], dict(out["meta"]))

    def latest_meta(self) -> dict | None:
        """Only the metadata of the last finished round (cheap; no arrays read)."""
        step = self._manager.latest_step()
        if step is None:
            return None
        out = self._manager.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))
        return dict(out["meta"])

    def close(self) -> None:
        self._manager.close()
