"""Per-run checkpoints: one orbax step per finished round.

Orbax writes each step into a temporary directory and renames it only once
everything is on disk (`commit_success.txt`), so a run killed at any moment
leaves either the previous round or the new one, never half of one; stray
temporary directories are removed when the manager opens, which is why only
the process holding the run's lock may open one (`RunCheckpointer`). A step
holds an array pytree (labelled mask, optional model state) and JSON metadata
(round, records, picks, the run's identity) in `STEP/meta/metadata`, which
`read_latest_meta` reads directly: any process may read it, without orbax and
without touching the directory.

A step that cannot be read (a file emptied or cut short by hand, a disk
error) is moved to `runs/corrupt/` and the run resumes from the step before
it: orbax keeps the last two.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

# orbax logs every save at INFO through absl; the runner prints its own progress.
logging.getLogger("absl").setLevel(logging.WARNING)

CORRUPT_DIR = "corrupt"  # beside the run directories: unreadable steps are moved here, never deleted


class Restored(NamedTuple):
    round: int
    arrays: Any  # the pytree given to `save`, as NumPy arrays
    meta: dict


class CorruptStep(Exception):
    """A finished step whose `path` cannot be read back."""

    def __init__(self, path: str, cause: BaseException):
        super().__init__(f"{path}: {type(cause).__name__}: {cause}")
        self.path = path


def finished_steps(directory: str) -> list[int]:
    """The run's finished steps, newest first (orbax names a step's directory by its number
    only once it is complete; temporary ones carry a suffix)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted((int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n))),
                  reverse=True)


def read_step_meta(directory: str, step: int) -> dict:
    """The JSON metadata of one step; CorruptStep naming the file when it does not parse."""
    path = os.path.join(directory, str(step), "meta", "metadata")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptStep(path, e) from None
    if not isinstance(meta, dict) or "records" not in meta:
        raise CorruptStep(path, ValueError("not a run's metadata (no 'records')"))
    return meta


def read_latest_meta(directory: str) -> tuple[dict | None, list[str]]:
    """(metadata of the newest readable step or None, a line per unreadable newer step).
    Read-only: safe while another process runs, saves or cleans up this run."""
    problems = []
    for step in finished_steps(directory):
        try:
            return read_step_meta(directory, step), problems
        except CorruptStep as e:
            if not os.path.isdir(os.path.join(directory, str(step))):
                continue  # removed by the run that owns it since the listing (orbax keeps two)
            problems.append(str(e))
    return None, problems


def finish_background_writes(timeout: float = 60.0) -> None:
    """Wait (at most `timeout` seconds in all) for the Python threads other than this one
    that would keep the interpreter alive. orbax finishes a step's metadata on a thread of
    its own; a Ctrl-C or SIGTERM can leave one running, and at interpreter exit it dies
    with a traceback on stderr ("cannot schedule new futures after shutdown"). Called on
    the interrupt path only, before the one-line message and the exit."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM that arrive inside the block are held, then delivered once it
    ends, to the handlers that were there before (Ctrl-C's KeyboardInterrupt, the CLI's
    SIGTERM handler, or the default). Outside the main thread, where Python runs signal
    handlers, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum))
                for signum in _HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if arrived:
            signal.raise_signal(arrived[0])


class RunCheckpointer:
    """Saves and restores the state of one (strategy, seed) run. Open one only while holding
    the run's lock: opening removes orbax's temporary directories, and a save in flight has one."""

    def __init__(self, directory: str, *, keep: int = 2, log: Callable[[str], None] = print):
        self._directory = os.path.abspath(directory)
        self._keep = keep
        self._log = log
        self._open()

    def _open(self) -> None:
        import orbax.checkpoint as ocp  # heavy import, only for runs

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self._directory, options=options)

    def save(self, round_index: int, arrays, meta: dict) -> None:
        """Save one step whole. Ctrl-C or SIGTERM during it take effect once it is written:
        interrupted inside orbax, its asyncio machinery was left half done (coroutines never
        awaited, a thread writing the step's metadata), and the process then printed
        tracebacks at exit (seen in about one Ctrl-C test run in four)."""
        arrays = jax.tree.map(np.asarray, arrays)
        args = self._ocp.args.Composite(
            arrays=self._ocp.args.StandardSave(arrays), meta=self._ocp.args.JsonSave(meta)
        )
        with signals_held():
            self._manager.save(round_index, args=args, force=True)
            self._manager.wait_until_finished()  # orbax writes the metadata on a thread of its own

    def latest(self, template=None) -> Restored | None:
        """The newest step that reads back whole, or None. An unreadable newer step is moved
        to runs/corrupt/ and logged with the file that failed. `template`: a pytree like the
        one saved (arrays or shape/dtype structs), to get the same pytree types back
        (NamedTuples, nnx.State); without it, nested dicts."""
        moved = False
        for step in finished_steps(self._directory):
            try:
                restored = self._restore(step, template)
            except CorruptStep as e:
                moved = True
                self._log(f"checkpoint {e}; moved step {step} to {self._move_aside(step)}")
                continue
            if moved:
                self._log(f"resuming {self._directory} from its step {step}, the newest readable one")
            return restored
        if moved:
            self._log(f"no readable step left in {self._directory}: the run starts again from round 0")
        return None

    def _restore(self, step: int, template) -> Restored:
        meta = read_step_meta(self._directory, step)
        ocp = self._ocp
        structs = None if template is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(structs)))
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds; tell corruption from a mismatch
            if structs is None:
                raise CorruptStep(os.path.join(self._directory, str(step), "arrays"), e) from None
            try:
                self._manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore()))
            except Exception:  # noqa: BLE001
                raise CorruptStep(os.path.join(self._directory, str(step), "arrays"), e) from None
            raise  # readable, but not what this run saves: a config or code change, not corruption
        return Restored(step, out["arrays"], meta)

    def _move_aside(self, step: int) -> str:
        """Move an unreadable step out of the run (orbax would find it again) into runs/corrupt/."""
        target_dir = os.path.join(os.path.dirname(self._directory), CORRUPT_DIR)
        os.makedirs(target_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = os.path.join(target_dir, f"{os.path.basename(self._directory)}-step{step}-{stamp}-{os.getpid()}")
        self._manager.close()
        os.rename(os.path.join(self._directory, str(step)), target)
        self._open()
        return target

    def close(self) -> None:
        self._manager.close()
