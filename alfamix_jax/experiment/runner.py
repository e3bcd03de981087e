"""The active-learning loop and the experiment runner (the imperative shell).

A run is one (strategy, seed) pair. Round r (0 = the initial labelled set):
train on the labelled rows, evaluate on the test split, then (unless it is
the last round) query the next rows with the trained model. The run is
checkpointed after every round, so `run_experiment` on the same workdir after
a crash (kill -9 at any point) continues from the last finished round and
ends with exactly the records of an uninterrupted run.

Randomness, per seed (big_vision style): root = key(seed); init_key gives the
model's initial weights and initial_key the initial labelled set, both shared
by every strategy of that seed (a paired comparison, as in the original);
round r trains with fold_in(loop_key, 2r) and queries with fold_in(loop_key,
2r + 1). Nothing else is random, so a rerun is bit-identical.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.experiment.checkpoint import RunCheckpointer, finish_background_writes
from alfamix_jax.experiment.config import ExperimentConfig
from alfamix_jax.experiment.config_checks import check_config, check_pool
from alfamix_jax.experiment.workdir import (
    RESULT_COLUMNS,
    LockHeld,
    check_workdir,
    read_runs,
    rebuild_shared_files,
    run_dir,
    run_lock,
    save_config,
    shared_files_lock,
)
from alfamix_jax.strategies import PoolView, check_query, make_strategy

__all__ = ["RESULT_COLUMNS", "RunInterrupted", "Terminated", "check_config", "run_dir", "run_experiment"]

# --------------------------------------------------------------------------- the loop pieces


def initial_labelled(key, seed: int, y_train: np.ndarray, *, size: int, mode: str, num_classes: int) -> np.ndarray:
    """The round-0 labelled mask [N]: `size` random rows, size / C per class, or the original's draw."""
    n = len(y_train)
    mask = np.zeros(n, bool)
    if mode == "original":
        # main.py: np.random.seed(seed); np.random.shuffle(idxs); the first n. A RandomState of
        # its own gives the same permutation without touching NumPy's global RNG.
        order = np.arange(n)
        np.random.RandomState(seed).shuffle(order)
        mask[order[:size]] = True
        return mask
    order = np.asarray(jax.random.permutation(key, n))
    if mode == "random":
        mask[order[:size]] = True
    else:
        per_class = size // num_classes
        shuffled = y_train[order]
        for c in range(num_classes):
            mask[order[shuffled == c][:per_class]] = True
    return mask


@contextlib.contextmanager
def compile_seconds():
    """Seconds spent tracing, lowering and compiling inside the block (jax.monitoring events)."""
    total = [0.0]

    def listener(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def timed(fn, *args):
    """(result, steady seconds, compile seconds) of fn(*args), blocking on the result."""
    start = time.perf_counter()
    with compile_seconds() as compiling:
        result = jax.block_until_ready(fn(*args))
    wall = time.perf_counter() - start
    return result, max(wall - compiling[0], 0.0), compiling[0]


@dataclasses.dataclass
class Workbench:
    """Everything shared by the runs of one experiment: data, jitted trainer,
    strategies (built once, so seeds and strategies reuse compiled programs)."""

    config: ExperimentConfig
    x_train: jax.Array
    y_train: np.ndarray  # host copy, for the initial set
    y_train_device: jax.Array  # [N], put on the device once per experiment
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int
    trainer: object
    initial_states: dict  # seed -> TrainState with that seed's initial weights
    strategies: dict  # (name, budget) -> Strategy
    mesh: Any = None  # the pool mesh under train.data_parallel: training and ALFA-Mix's selection run on it
    log: Callable[[str], None] = print
    notes_logged: set = dataclasses.field(default_factory=set)  # (strategy, note) already in the log

    def initial_state(self, seed: int):
        if seed not in self.initial_states:
            from flax import nnx

            from alfamix_jax.experiment.models import make_model

            model = make_model(
                self.config.model.name, input_shape=tuple(self.x_train.shape[1:]), num_classes=self.num_classes,
                rngs=nnx.Rngs(params=_seed_keys(seed)[0]), embed_dim=self.config.model.embed_dim,
                dropout=self.config.model.dropout,
            )
            self.initial_states[seed] = self.trainer.init_state(model)
        return self.initial_states[seed]

    def strategy(self, name: str, budget: int):
        """The strategy for this budget, built once (on the pool mesh when there is one); its
        notes (e.g. that it selects on one device) go to the log once per strategy."""
        if (name, budget) not in self.strategies:
            strategy = make_strategy(name, budget=budget, num_classes=self.num_classes, alfamix=self.config.alfamix,
                                     baselines=self.config.baselines, mesh=self.mesh)
            for note in strategy.notes:
                if (name, note) not in self.notes_logged:
                    self.notes_logged.add((name, note))
                    self.log(f"{name}: {note}")
            self.strategies[name, budget] = strategy
        return self.strategies[name, budget]


def _seed_keys(seed: int):
    """(init_key, initial_key, loop_key) for a seed."""
    return tuple(jax.random.split(jax.random.key(seed), 3))


def make_workbench(config: ExperimentConfig, log: Callable[[str], None] = print) -> Workbench:
    from flax import nnx

    from alfamix_jax.experiment.data import load_dataset
    from alfamix_jax.experiment.models import make_model
    from alfamix_jax.experiment.training import make_trainer
    from alfamix_jax.selection.mesh import pool_mesh, replicated

    d = config.data
    start = time.perf_counter()
    data = load_dataset(d.name, data_dir=d.data_dir, path=d.path, max_train=d.max_train, max_test=d.max_test,
                        seed=d.split_seed, normalisation=d.normalisation)
    check_pool(config, data.y_train, data.num_classes)
    log(f"data: {data.name}, pool {len(data.y_train)}, test {len(data.y_test)}, input {data.input_shape}, "
        f"{data.num_classes} classes ({time.perf_counter() - start:.1f} s)")
    template = make_model(config.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                          rngs=nnx.Rngs(params=0), embed_dim=config.model.embed_dim, dropout=config.model.dropout)
    loop = config.loop
    final_labelled = loop.initial_size + sum(loop.budget_at(r) for r in range(1, loop.rounds + 1))
    # data_parallel: train on a mesh of every device, the arrays replicated on it once.
    mesh = pool_mesh() if config.train.data_parallel else None
    placement = None if mesh is None else replicated(mesh)
    # max_labelled bounds each epoch's shuffle buffer (the pool itself can be 100x larger).
    trainer = make_trainer(template, config.train, pool_size=len(data.y_train), max_labelled=final_labelled,
                           mesh=mesh)
    return Workbench(
        config=config, x_train=jax.device_put(data.x_train, placement), y_train=np.asarray(data.y_train),
        y_train_device=jax.device_put(np.asarray(data.y_train, np.int32), placement),
        x_test=jax.device_put(data.x_test, placement),
        y_test=jax.device_put(np.asarray(data.y_test, np.int32), placement),
        num_classes=data.num_classes,
        trainer=trainer, initial_states={}, strategies={}, mesh=mesh, log=log,
    )


def describe_training(config: ExperimentConfig) -> str:
    t = config.train
    optimiser = f"{t.optimizer} lr {t.learning_rate:g}" + (f" momentum {t.momentum:g}" if t.optimizer == "sgd" else "")
    start = "warm-started from the previous round" if t.warm_start else "re-initialised to the same weights each round"
    return (f"training: {config.model.name}, {optimiser}, weight decay {t.weight_decay:g}, batch {t.batch_size}, "
            f"up to {t.max_epochs} epochs, stop at training accuracy {t.stop_accuracy:g}, {start}"
            + (f", data-parallel over {jax.device_count()} devices (ALFA-Mix selects on the same mesh)"
               if t.data_parallel else ""))


# --------------------------------------------------------------------------- one run


def run_one(bench: Workbench, workdir: str, strategy_name: str, seed: int, *,
            on_round: Callable[[dict], None] = lambda record: None) -> list[dict]:
    """Run (or resume) one (strategy, seed) run to the last round; returns its records.
    The caller holds the run's lock (workdir.run_lock)."""
    checkpointer = RunCheckpointer(run_dir(workdir, strategy_name, seed), log=bench.log)
    try:
        return _run_rounds(bench, checkpointer, strategy_name, seed, on_round)
    finally:
        checkpointer.close()


def _run_rounds(bench, checkpointer, strategy_name, seed, on_round):
    config, loop = bench.config, bench.config.loop
    _, initial_key, loop_key = _seed_keys(seed)
    template = {"labelled": np.zeros(len(bench.y_train), bool)}
    if config.train.warm_start:
        template["train_state"] = bench.initial_state(seed)
    restored = checkpointer.latest(template)
    if restored is None:
        start_round, records, pending, state = 0, [], {}, None
        labelled = initial_labelled(initial_key, seed, bench.y_train, size=loop.initial_size, mode=loop.initial_mode,
                                    num_classes=bench.num_classes)
        picks = [np.flatnonzero(labelled).tolist()]
    else:
        if restored.meta["identity"] != _identity(strategy_name, seed):
            raise ValueError(f"checkpoint in {run_dir('.', strategy_name, seed)} belongs to another run")
        start_round, records, pending = restored.round + 1, restored.meta["records"], restored.meta["pending"]
        picks = restored.meta.get("picks")  # None in checkpoints written before picks were recorded
        labelled = np.asarray(restored.arrays["labelled"]).astype(bool)
        state = restored.arrays.get("train_state")
    for r in range(start_round, loop.rounds + 1):
        if state is None or not config.train.warm_start:
            state = bench.initial_state(seed)
        state, record = _train_round(bench, state, labelled, strategy_name, seed, r, pending, loop_key)
        records, pending = [*records, record], {}
        if r < loop.rounds:
            chosen, pending = _query_round(bench, state, labelled, strategy_name, r + 1, loop_key)
            labelled = labelled.copy()
            labelled[chosen] = True
            picks = None if picks is None else [*picks, chosen.tolist()]
        arrays = {"labelled": labelled}
        if config.train.warm_start:
            arrays["train_state"] = state
        meta = dict(identity=_identity(strategy_name, seed), records=records, pending=pending)
        if picks is not None:
            meta["picks"] = picks
        checkpointer.save(r, arrays, meta)  # the round, its picks and the next round's: one atomic step
        on_round(record)
    return records


def _train_round(bench, state, labelled, strategy_name, seed, r, pending, loop_key):
    """Train on the labelled rows [N] and evaluate: (trained state, the round's record)."""
    trainer = bench.trainer
    (state, stats), train_s, train_compile_s = timed(
        trainer.train, state, bench.x_train, bench.y_train_device, jnp.asarray(labelled),
        jax.random.fold_in(loop_key, 2 * r),
    )
    accuracy = float(trainer.evaluate(state, bench.x_test, bench.y_test))
    record = dict(
        strategy=strategy_name, seed=seed, round=r, labelled=int(labelled.sum()), test_accuracy=accuracy,
        train_accuracy=float(stats.train_accuracy), train_epochs=int(stats.epochs), train_seconds=train_s,
        train_compile_seconds=train_compile_s, query_seconds=pending.get("query_seconds", ""),
        query_compile_seconds=pending.get("query_compile_seconds", ""),
        candidates=pending.get("candidates", ""), filled=pending.get("filled", ""),
    )
    return state, record


def _query_round(bench, state, labelled, strategy_name, next_round, loop_key):
    """Query round `next_round`'s batch with the trained model: (chosen pool rows [B] in the
    strategy's order, the next record's query columns)."""
    budget = bench.config.loop.budget_at(next_round)
    strategy = bench.strategy(strategy_name, budget)
    query_key = jax.random.fold_in(loop_key, 2 * (next_round - 1) + 1)
    query, query_s, query_compile_s = timed(_query, bench.trainer, strategy, state, bench, jnp.asarray(labelled),
                                            query_key)
    chosen = check_query(strategy_name, query, budget=budget, labels=np.where(labelled, bench.y_train, -1),
                         round_index=next_round)
    pending = dict(query_seconds=query_s, query_compile_seconds=query_compile_s)
    for column, name in (("candidates", "num_candidates"), ("filled", "num_filled")):
        if name in query.diagnostics:
            pending[column] = int(query.diagnostics[name])
    return np.asarray(chosen), pending


def _query(trainer, strategy, state, bench, labelled, key):
    embeddings, logits = trainer.embed_and_logits(state, bench.x_train)
    labels = jnp.where(labelled, bench.y_train_device, -1)
    mc_logits = None
    if "mc_logits" in strategy.needs:  # dropout masks from their own key; the query keeps `key`
        mc_logits = trainer.mc_logits(state, bench.x_train, jax.random.fold_in(key, 0x3C), passes=strategy.mc_passes)
    view = PoolView(embeddings, logits, labels, trainer.head_params(state), mc_logits=mc_logits)
    return strategy.query(key, view)


def _identity(strategy: str, seed: int) -> dict:
    return dict(strategy=strategy, seed=seed)


# --------------------------------------------------------------------------- the experiment


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler: stopped like Ctrl-C, reported with exit code 143."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM during `run_experiment`; the message says where and how to resume.
    Everything finished is on disk (the round in flight is redone on resume)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def run_experiment(config: ExperimentConfig, workdir: str, *, strategies: Sequence[str] | None = None,
                   seeds: Sequence[int] | None = None, progress: bool = True, wait: bool = True,
                   log: Callable[[str], None] = print, on_round: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Run every (strategy, seed) of the config (or the named subset), resuming what the
    workdir already holds; results.csv and picks.csv are rebuilt after every round. Every
    check comes before the first write, so a refused run leaves a new workdir uncreated.
    Other processes may run other (or the same) runs in the same workdir at the same time:
    a run another process holds is left to it, then waited for (wait=False: LockHeld)."""
    check_config(config)
    todo = _selected_runs(config, strategies, seeds)
    check_workdir(config, workdir)
    log(describe_training(config))
    runs = [(s, seed) for s in config.strategies for seed in config.seeds]
    done = read_runs(workdir, log) if os.path.isdir(workdir) else {}
    records = {run: list(done[run]["records"]) if run in done else [] for run in runs}
    rounds = config.loop.rounds + 1
    if all(len(records[run]) == rounds for run in todo):
        if os.path.isdir(workdir):
            with shared_files_lock(workdir, log):
                rebuild_shared_files(workdir, config, log)
        log(f"nothing to do: {workdir} already holds every round of the selected runs")
        return [r for run in runs for r in records[run]]
    bench = make_workbench(config, log)  # loads the data and checks that the protocol fits the pool
    os.makedirs(workdir, exist_ok=True)  # the first write
    with shared_files_lock(workdir, log):
        check_workdir(config, workdir)  # again: another process may have started this workdir since
        save_config(config, workdir)
        records.update(rebuild_shared_files(workdir, config, log))
    reporter = RoundReporter(total=len(todo) * rounds, done=sum(len(records[run]) for run in todo), enabled=progress)
    where = {"run": None}
    try:
        with reporter:
            _run_all(bench, workdir, todo, records, reporter, where, wait=wait, on_round=on_round)
    except KeyboardInterrupt as e:
        finish_background_writes()
        raise _interrupted(e, where["run"], records) from None
    return [r for run in runs for r in records[run]]


def _selected_runs(config, strategies, seeds) -> list[tuple[str, int]]:
    for name in strategies or ():
        if name not in config.strategies:
            raise ValueError(f"--strategy {name!r} is not in the config's strategies {list(config.strategies)}")
    for seed in seeds or ():
        if seed not in config.seeds:
            raise ValueError(f"--seed {seed} is not in the config's seeds {list(config.seeds)}")
    strategies = list(strategies or config.strategies)
    seeds = list(config.seeds if seeds is None else seeds)
    return [(s, seed) for s in config.strategies for seed in config.seeds if s in strategies and seed in seeds]


def _run_all(bench, workdir, todo, records, reporter, where, *, wait, on_round) -> None:
    """Each unfinished run under its lock: first those no other process holds, then the rest
    (waiting for them: usually the other process has finished them by then)."""
    rounds = bench.config.loop.rounds + 1
    config, log = bench.config, bench.log
    deferred = []
    for pass_index, queue in enumerate((todo, deferred)):
        for run in queue:
            if len(records[run]) == rounds:
                continue
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(run_lock(workdir, *run, wait=pass_index == 1 and wait, log=log))
                except LockHeld:
                    if pass_index == 0:
                        deferred.append(run)
                        continue
                    raise
                where["run"] = run

                def record_round(record, run=run):
                    with shared_files_lock(workdir, log):
                        records.update(rebuild_shared_files(workdir, config, log))
                    reporter.round_done(record)
                    on_round(record)

                run_one(bench, workdir, *run, on_round=record_round)
                where["run"] = None


def _interrupted(error: KeyboardInterrupt, run, records) -> RunInterrupted:
    code, signal_name = (143, "SIGTERM") if isinstance(error, Terminated) else (130, "Ctrl-C")
    if run is None:
        return RunInterrupted(f"interrupted ({signal_name}) between runs; rerun the same command to resume", code)
    strategy, seed = run
    return RunInterrupted(f"interrupted ({signal_name}) in round {len(records[run])} of {strategy} seed {seed}; "
                          "rerun the same command to resume", code)


class RoundReporter:
    """Progress: a tqdm bar on a terminal; one plain line per round on stderr otherwise (a bar's
    carriage-return updates make log files unreadable); nothing when disabled."""

    def __init__(self, *, total: int, done: int, enabled: bool, stream=None):
        self._stream = stream or sys.stderr
        self._total, self._done, self._enabled = total, done, enabled
        self._bar = None
        if enabled and self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="round", file=self._stream, dynamic_ncols=True,
                             leave=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def round_done(self, record: dict) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.set_description(f"{record['strategy']} seed {record['seed']}")
            self._bar.update(1)
            self._bar.set_postfix(round=record["round"], acc=f"{record['test_accuracy']:.3f}")
        elif self._enabled:
            print(f"[{self._done}/{self._total}] {record['strategy']} seed {record['seed']} round {record['round']}: "
                  f"test accuracy {record['test_accuracy']:.4f} with {record['labelled']} labelled",
                  file=self._stream, flush=True)
