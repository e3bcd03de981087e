"""A workdir that any number of runs may share at once.

Layout (documented in the README, "The workdir"):

    DIR/config.json            the experiment's config; strategies and seeds: every one run so far
    DIR/results.csv            one row per (strategy, seed, round): RESULT_COLUMNS
    DIR/picks.csv              one row per labelled pool row: PICK_COLUMNS
    DIR/runs/STRATEGY-seedS/   that run's checkpoints (one orbax step per round)
    DIR/runs/STRATEGY-seedS.lock, DIR/.lock, DIR/runs/corrupt/

Two kinds of lock (POSIX `flock`, so the kernel releases them when a process
ends in any way, kill -9 included: a lock is never stale): one per run, held
while the run trains and queries, and one for the shared files, held for the
moment it takes to check and write them. results.csv and picks.csv are always
rebuilt from every run on disk, never patched, so no interleaving of runs
loses a row. Lock files are opened with O_NOFOLLOW; every other file goes
through `files.write_atomic`.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from alfamix_jax.experiment.checkpoint import read_latest_meta
from alfamix_jax.experiment.config import ExperimentConfig, from_dict
from alfamix_jax.files import write_text_atomic

RESULT_COLUMNS = (
    "strategy", "seed", "round", "labelled", "test_accuracy", "train_accuracy", "train_epochs",
    "train_seconds", "train_compile_seconds", "query_seconds", "query_compile_seconds", "candidates", "filled",
)
# picks.csv: `index` is a row of the training pool (0-based, in the order the dataset loads), first
# trained on in `round` (0 = the initial set); `rank` is its place in that round's batch as the
# strategy returned it. A round's picks are saved with the checkpoint of the round before it, so
# picks.csv may hold one round more than results.csv while a run is going.
PICK_COLUMNS = ("strategy", "seed", "round", "rank", "index")
# Settings a workdir may change between invocations: which runs to do. Anything
# else must match the config the workdir was started with.
RUN_SELECTION_FIELDS = ("strategies", "seeds")
RUNS_DIR = "runs"
LOG = Callable[[str], None]


class LockHeld(ValueError):
    """A lock another process holds, when the caller asked not to wait."""


def run_dir(workdir: str, strategy: str, seed: int) -> str:
    return os.path.join(workdir, RUNS_DIR, f"{strategy}-seed{seed}")


# --------------------------------------------------------------------------- locks


def _holder_line() -> str:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')} ({command})"


def _open_lock_file(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if os.path.islink(path):
            raise ValueError(f"{path} is a symbolic link; a lock file never is: remove it and rerun") from None
        raise OSError(e.errno, f"cannot open the lock file ({e.strerror})", path) from None


@contextlib.contextmanager
def hold_lock(path: str, what: str, *, wait: bool = True, log: LOG = print) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block. Held by another
    process: wait (saying so, naming the holder), or with wait=False raise LockHeld naming it."""
    import fcntl  # POSIX only, as the rest of the runner

    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            if not wait:
                raise LockHeld(f"{what} is in use by {holder}; wait for it to finish, or rerun without "
                               "--no-wait to wait for it") from None
            log(f"waiting for {what}, in use by {holder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        line = _holder_line().encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def shared_files_lock(workdir: str, log: LOG = print):
    """The lock over config.json, results.csv and picks.csv (held for moments)."""
    return hold_lock(os.path.join(workdir, ".lock"), f"the shared files of {workdir}", log=log)


def run_lock(workdir: str, strategy: str, seed: int, *, wait: bool, log: LOG = print):
    """The lock of one (strategy, seed) run, held while it runs."""
    os.makedirs(os.path.join(workdir, RUNS_DIR), exist_ok=True)
    return hold_lock(run_dir(workdir, strategy, seed) + ".lock", f"run {strategy} seed {seed} in {workdir}",
                     wait=wait, log=log)


# --------------------------------------------------------------------------- the saved config


def has_runs(workdir: str) -> bool:
    runs = os.path.join(workdir, RUNS_DIR)
    return os.path.isdir(runs) and any(os.path.isdir(os.path.join(runs, n)) and "-seed" in n for n in os.listdir(runs))


def read_saved_config(workdir: str) -> ExperimentConfig | None:
    """The config a workdir's runs were made with (None while it holds no run: a config.json
    there guards nothing and is replaced). Runs but no config.json is an error: they could not
    be checked against this config."""
    path = os.path.join(workdir, "config.json")
    if not has_runs(workdir):
        return None
    if not os.path.exists(path):
        raise ValueError(
            f"--workdir {workdir} holds runs but no config.json, so they cannot be checked against this "
            f"config; restore {path} (e.g. from a copy), or use a new --workdir; if you know they were made "
            f"with this very config, write it there with the same command plus --print-config > {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return from_dict(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"--workdir {workdir}: {path} does not load ({e}); restore it, or use a new --workdir "
                         "(if it names a module, make it importable again)") from None


def check_workdir(config: ExperimentConfig, workdir: str) -> None:
    """A workdir that holds runs must have been started with the same config (up to which
    strategies and seeds are run)."""
    saved = read_saved_config(workdir)
    if saved is None:
        return
    mine = {k: v for k, v in config.to_dict().items() if k not in RUN_SELECTION_FIELDS}
    theirs = {k: v for k, v in saved.to_dict().items() if k not in RUN_SELECTION_FIELDS}
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise ValueError(
            f"--workdir {workdir} holds an experiment with a different config (sections differ: {diff}); "
            "use a new --workdir, or the same config and overrides as before"
        )


def save_config(config: ExperimentConfig, workdir: str) -> None:
    """Write config.json with the strategies and seeds of every run so far (call under the
    shared-files lock, after check_workdir)."""
    saved = read_saved_config(workdir)
    if saved is not None:
        strategies = tuple(dict.fromkeys((*saved.strategies, *config.strategies)))
        seeds = tuple(dict.fromkeys((*saved.seeds, *config.seeds)))
        config = _with_runs(config, strategies, seeds)
    write_text_atomic(os.path.join(workdir, "config.json"), config.to_json())


def _with_runs(config: ExperimentConfig, strategies, seeds) -> ExperimentConfig:
    return dataclasses.replace(config, strategies=strategies, seeds=seeds)


# --------------------------------------------------------------------------- results.csv and picks.csv


def read_runs(workdir: str, log: LOG = print) -> dict[tuple[str, int], dict]:
    """(strategy, seed) -> the metadata of its newest readable checkpoint, for every run on disk
    (read-only; a run another process is writing reads as its last finished round)."""
    runs = os.path.join(workdir, RUNS_DIR)
    found = {}
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        path = os.path.join(runs, name)
        if "-seed" not in name or not os.path.isdir(path):
            continue
        meta, problems = read_latest_meta(path)
        for problem in problems:
            log(f"skipping an unreadable checkpoint: {problem}")
        if meta is not None:
            identity = meta.get("identity", {})
            found[identity.get("strategy"), identity.get("seed")] = meta
    return found


def run_order(config: ExperimentConfig, runs) -> list[tuple[str, int]]:
    """The config's runs in its order (strategy, then seed), then any other run on disk."""
    first = [(s, seed) for s in config.strategies for seed in config.seeds]
    return first + sorted(set(runs) - set(first), key=lambda run: (str(run[0]), str(run[1])))


def rebuild_shared_files(workdir: str, config: ExperimentConfig, log: LOG = print) -> dict:
    """Rewrite results.csv and picks.csv from every run on disk (under the shared-files lock).
    -> (strategy, seed) -> records."""
    runs = read_runs(workdir, log)
    order = [run for run in run_order(config, runs) if run in runs]
    write_text_atomic(os.path.join(workdir, "results.csv"),
                      _csv(RESULT_COLUMNS, (_result_row(r) for run in order for r in runs[run]["records"])))
    write_text_atomic(os.path.join(workdir, "picks.csv"),
                      _csv(PICK_COLUMNS, (row for run in order for row in _pick_rows(run, runs[run]))))
    return {run: list(runs[run]["records"]) for run in order}


def _csv(columns: Sequence[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def _result_row(record: dict) -> list:
    # repr: the shortest text that round-trips, so the CSV holds the exact float
    return [repr(v) if isinstance(v, float) else v for v in (record[k] for k in RESULT_COLUMNS)]


def _pick_rows(run: tuple[str, int], meta: dict):
    for round_index, picked in enumerate(meta.get("picks", [])):  # absent in checkpoints before picks.csv
        for rank, index in enumerate(picked):
            yield (run[0], run[1], round_index, rank, index)
