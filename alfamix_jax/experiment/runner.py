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
import csv
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alfamix_jax.experiment.checkpoint import RunCheckpointer
from alfamix_jax.experiment.config import INITIAL_MODES, ExperimentConfig, check_recordable_parts, from_dict
from alfamix_jax.experiment.training import check_train_config
from alfamix_jax.selection.settings import SelectorSettings
from alfamix_jax.strategies import STRATEGIES, BaselineSettings, PoolView, check_query, make_strategy

RESULT_COLUMNS = (
    "strategy", "seed", "round", "labelled", "test_accuracy", "train_accuracy", "train_epochs",
    "train_seconds", "train_compile_seconds", "query_seconds", "query_compile_seconds", "candidates", "filled",
)
# Settings a workdir may change between invocations: which runs to do. Anything
# else must match the config the workdir was started with.
RUN_SELECTION_FIELDS = ("strategies", "seeds")
MODELS = ("mlp", "cnn", "resnet18")


# --------------------------------------------------------------------------- config checks


def check_config(config: ExperimentConfig) -> None:
    """The whole config, checked before any data is loaded and before anything is written
    (fail fast, name the setting): the data and model names, the selector and baseline
    settings, the strategies (registered by then, a config file's own too), the loop and
    the training settings."""
    from alfamix_jax.experiment.data import check_dataset_args

    check_dataset_args(config.data.name, data_dir=config.data.data_dir, path=config.data.path,
                       normalisation=config.data.normalisation)
    if config.model.name not in MODELS:
        raise ValueError(f"model.name {config.model.name!r} is unknown; choose from {MODELS}")
    _check_settings(config)
    _check_strategies(config)
    _check_loop(config.loop)
    try:
        check_train_config(config.train)
    except ValueError as e:
        raise ValueError(f"train.{e}") from None
    if config.train.data_parallel and config.train.batch_size % jax.device_count():
        raise ValueError(f"train.batch_size {config.train.batch_size} must be a multiple of the {jax.device_count()} "
                         "devices with train.data_parallel (each device trains on an equal share of a batch)")
    if not 0 < config.train.stop_accuracy <= 1:  # the trainer also takes > 1 (never stop); a config may not
        raise ValueError(f"train.stop_accuracy must be in (0, 1], got {config.train.stop_accuracy}")


def _check_settings(config: ExperimentConfig) -> None:
    """alfamix and baselines: the right types, valid (checked again, in case a value was set
    around the dataclass), and every selector part importable by the name config.json records."""
    for section, cls in (("alfamix", SelectorSettings), ("baselines", BaselineSettings)):
        value = getattr(config, section)
        if not isinstance(value, cls):
            raise ValueError(f"{section}: got a {type(value).__name__}; expected a {cls.__name__}")
        try:
            dataclasses.replace(value)  # runs the section's own checks (__post_init__)
        except ValueError as e:
            raise ValueError(f"{section}.{e}") from None
    check_recordable_parts(config.alfamix)


def _check_strategies(config: ExperimentConfig) -> None:
    if not config.strategies:
        raise ValueError("strategies is empty; name at least one of " + ", ".join(sorted(STRATEGIES)))
    for name in config.strategies:
        if name not in STRATEGIES:
            raise ValueError(f"strategies: {name!r} is unknown; choose from {sorted(STRATEGIES)}, or register it in "
                             "the config file (alfamix_jax.strategies.register_strategy)")
    if len(set(config.strategies)) != len(config.strategies):
        raise ValueError(f"strategies has duplicates: {list(config.strategies)}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"seeds must be a non-empty list without duplicates, got {list(config.seeds)}")
    if "bald" in config.strategies and config.model.dropout <= 0:
        raise ValueError("strategy 'bald' needs MC dropout: set model.dropout > 0 (e.g. --set model.dropout=0.3); "
                         "with dropout 0 every pass is the same and BALD's score is 0 everywhere")


def _check_loop(loop) -> None:
    for name in ("initial_size", "budget", "rounds"):
        if getattr(loop, name) < 1:
            raise ValueError(f"loop.{name} must be >= 1, got {getattr(loop, name)}")
    if loop.growth_ratio <= 0:
        raise ValueError(f"loop.growth_ratio must be > 0, got {loop.growth_ratio}")
    if loop.initial_mode not in INITIAL_MODES:
        raise ValueError(f"loop.initial_mode must be one of {INITIAL_MODES}, got {loop.initial_mode!r}")
    if any(loop.budget_at(r) < 1 for r in range(1, loop.rounds + 1)):
        raise ValueError(f"loop.growth_ratio {loop.growth_ratio} shrinks the budget below 1 row")


def check_pool(config: ExperimentConfig, y_train: np.ndarray, num_classes: int) -> None:
    """Checks that need the data: the protocol must fit in the pool."""
    loop, pool_size = config.loop, len(y_train)
    total = loop.initial_size + sum(loop.budget_at(r) for r in range(1, loop.rounds + 1))
    if total > pool_size:
        raise ValueError(
            f"the protocol labels {total} rows (initial_size {loop.initial_size} + budgets over {loop.rounds} "
            f"rounds) but the pool of {config.data.name!r} has {pool_size}; lower loop.budget or loop.rounds"
        )
    if loop.initial_mode == "per_class":
        if loop.initial_size % num_classes:
            raise ValueError(
                f"loop.initial_size {loop.initial_size} must be a multiple of the {num_classes} classes "
                "with initial_mode='per_class'"
            )
        counts = np.bincount(y_train, minlength=num_classes)
        if counts.min() < loop.initial_size // num_classes:
            raise ValueError(
                f"initial_mode='per_class' needs {loop.initial_size // num_classes} rows of every class; class "
                f"{int(counts.argmin())} has {int(counts.min())}"
            )


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


def run_dir(workdir: str, strategy: str, seed: int) -> str:
    return os.path.join(workdir, "runs", f"{strategy}-seed{seed}")


def load_run_records(workdir: str, strategy: str, seed: int) -> list[dict]:
    """Records of a run's last checkpoint ([] if it has none)."""
    path = run_dir(workdir, strategy, seed)
    if not os.path.isdir(path):
        return []
    checkpointer = RunCheckpointer(path)
    try:
        meta = checkpointer.latest_meta()
    finally:
        checkpointer.close()
    return list(meta["records"]) if meta else []


def run_one(bench: Workbench, workdir: str, strategy_name: str, seed: int, *,
            on_round: Callable[[dict], None] = lambda record: None) -> list[dict]:
    """Run (or resume) one (strategy, seed) run to the last round; returns its records."""
    checkpointer = RunCheckpointer(run_dir(workdir, strategy_name, seed))
    try:
        return _run_rounds(bench, checkpointer, strategy_name, seed, on_round)
    finally:
        checkpointer.close()


def _run_rounds(bench, checkpointer, strategy_name, seed, on_round):
    config, loop, trainer = bench.config, bench.config.loop, bench.trainer
    _, initial_key, loop_key = _seed_keys(seed)
    template = {"labelled": np.zeros(len(bench.y_train), bool)}
    if config.train.warm_start:
        template["train_state"] = bench.initial_state(seed)
    restored = checkpointer.latest(template)
    if restored is None:
        start_round, records, pending = 0, [], {}
        labelled = initial_labelled(initial_key, seed, bench.y_train, size=loop.initial_size, mode=loop.initial_mode,
                                    num_classes=bench.num_classes)
        state = None
    else:
        if restored.meta["identity"] != _identity(strategy_name, seed):
            raise ValueError(f"checkpoint in {run_dir('.', strategy_name, seed)} belongs to another run")
        start_round, records, pending = restored.round + 1, restored.meta["records"], restored.meta["pending"]
        labelled = np.asarray(restored.arrays["labelled"]).astype(bool)
        state = restored.arrays.get("train_state")
    for r in range(start_round, loop.rounds + 1):
        if state is None or not config.train.warm_start:
            state = bench.initial_state(seed)
        train_key, query_key = jax.random.fold_in(loop_key, 2 * r), jax.random.fold_in(loop_key, 2 * r + 1)
        labelled_now = jnp.asarray(labelled)
        (state, stats), train_s, train_compile_s = timed(
            trainer.train, state, bench.x_train, bench.y_train_device, labelled_now, train_key
        )
        accuracy = float(trainer.evaluate(state, bench.x_test, bench.y_test))
        record = dict(
            strategy=strategy_name, seed=seed, round=r, labelled=int(labelled.sum()), test_accuracy=accuracy,
            train_accuracy=float(stats.train_accuracy), train_epochs=int(stats.epochs), train_seconds=train_s,
            train_compile_seconds=train_compile_s, query_seconds=pending.get("query_seconds", ""),
            query_compile_seconds=pending.get("query_compile_seconds", ""),
            candidates=pending.get("candidates", ""), filled=pending.get("filled", ""),
        )
        records = [*records, record]
        pending = {}
        if r < loop.rounds:
            budget = loop.budget_at(r + 1)
            strategy = bench.strategy(strategy_name, budget)
            query, query_s, query_compile_s = timed(_query, trainer, strategy, state, bench, labelled_now, query_key)
            chosen = check_query(strategy_name, query, budget=budget, labels=np.where(labelled, bench.y_train, -1),
                                 round_index=r + 1)
            labelled = labelled.copy()
            labelled[chosen] = True
            pending = dict(query_seconds=query_s, query_compile_seconds=query_compile_s)
            for column, name in (("candidates", "num_candidates"), ("filled", "num_filled")):
                if name in query.diagnostics:
                    pending[column] = int(query.diagnostics[name])
        arrays = {"labelled": labelled}
        if config.train.warm_start:
            arrays["train_state"] = state
        checkpointer.save(r, arrays, dict(identity=_identity(strategy_name, seed), records=records, pending=pending))
        on_round(record)
    return records


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


def write_results_csv(path: str, records: Sequence[dict]) -> None:
    """Write all records atomically (tmp file + os.replace): a reader never sees half a file."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _format(record[k]) for k in RESULT_COLUMNS})
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _format(value):
    if isinstance(value, float):
        return repr(value)  # shortest repr that round-trips: the CSV holds the exact float
    return value


def check_workdir(config: ExperimentConfig, workdir: str) -> None:
    """A workdir that holds runs must have been started with the same config
    (up to which strategies and seeds are run)."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path) and os.path.isdir(os.path.join(workdir, "runs")):
        with open(path) as f:
            try:
                saved = from_dict(json.load(f))
            except ValueError as e:
                raise ValueError(f"--workdir {workdir}: its config.json does not load ({e}); use a new --workdir, or "
                                 "make what it names importable again") from None
        mine = {k: v for k, v in config.to_dict().items() if k not in RUN_SELECTION_FIELDS}
        theirs = {k: v for k, v in saved.to_dict().items() if k not in RUN_SELECTION_FIELDS}
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ValueError(
                f"--workdir {workdir} holds an experiment with a different config (sections differ: {diff}); "
                "use a new --workdir, or the same config and overrides as before"
            )


def save_config(config: ExperimentConfig, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(config.to_json())
    os.replace(tmp, path)


def run_experiment(config: ExperimentConfig, workdir: str, *, strategies: Sequence[str] | None = None,
                   seeds: Sequence[int] | None = None, progress: bool = True,
                   log: Callable[[str], None] = print, on_round: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Run every (strategy, seed) of the config (or the named subset), resuming
    what the workdir already holds; write DIR/results.csv after every round.
    Every check (the config, the workdir's saved config, the pool's size) comes
    before the first write, so a refused run leaves a new workdir uncreated."""
    check_config(config)
    strategies = list(strategies or config.strategies)
    seeds = list(config.seeds if seeds is None else seeds)
    for name in strategies:
        if name not in config.strategies:
            raise ValueError(f"--strategy {name!r} is not in the config's strategies {list(config.strategies)}")
    for seed in seeds:
        if seed not in config.seeds:
            raise ValueError(f"--seed {seed} is not in the config's seeds {list(config.seeds)}")
    check_workdir(config, workdir)
    log(describe_training(config))
    runs = [(s, seed) for s in config.strategies for seed in config.seeds]
    records = {run: load_run_records(workdir, *run) for run in runs}
    results_path = os.path.join(workdir, "results.csv")

    def flush():
        write_results_csv(results_path, [r for run in runs for r in records[run]])

    todo = [run for run in runs if run[0] in strategies and run[1] in seeds]
    rounds = config.loop.rounds + 1
    remaining = sum(rounds - len(records[run]) for run in todo)
    if remaining == 0:
        if os.path.isdir(workdir):
            flush()
        log(f"nothing to do: {workdir} already holds every round of the selected runs")
        return [r for run in runs for r in records[run]]
    bench = make_workbench(config, log)  # loads the data and checks that the protocol fits the pool
    save_config(config, workdir)  # the first write (makes the workdir)
    flush()
    bar = _progress_bar(total=len(todo) * rounds, initial=len(todo) * rounds - remaining, enabled=progress)
    try:
        for run in todo:
            if len(records[run]) == rounds:
                continue
            bar.set_description(f"{run[0]} seed {run[1]}")

            def record_round(record, run=run):
                records[run] = [*records[run], record]
                flush()
                bar.update(1)
                bar.set_postfix(round=record["round"], acc=f"{record['test_accuracy']:.3f}")
                on_round(record)

            run_one(bench, workdir, run[0], run[1], on_round=record_round)
    finally:
        bar.close()
    return [r for run in runs for r in records[run]]


def _progress_bar(*, total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="round", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False)
