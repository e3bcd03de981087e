"""The active-learning runner end to end: every model family for 2 rounds,
pairing across strategies, reruns bit-identical, resume after kill -9 equals
an uninterrupted run, no recompilation from round 2, bad configs fail fast."""
import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from support import CLI_CONFIG, RESNET, cli_run  # noqa: F401 (CLI_CONFIG re-exported)

from alfamix_jax.experiment.config import (
    DataConfig,
    ExperimentConfig,
    LoopConfig,
    ModelConfig,
    apply_overrides,
    load_config,
)
from alfamix_jax.experiment.runner import RESULT_COLUMNS, initial_labelled, run_dir, run_experiment
from alfamix_jax.experiment.training import TrainConfig

TIMING = {"train_seconds", "train_compile_seconds", "query_seconds", "query_compile_seconds"}
QUIET = dict(progress=False, log=lambda *_: None)


def small_config(**changes) -> ExperimentConfig:
    config = ExperimentConfig(
        name="small",
        data=DataConfig(name="digits", max_train=300, max_test=120),
        model=ModelConfig(name="mlp", embed_dim=32),
        train=TrainConfig(learning_rate=3e-3, batch_size=32, max_epochs=25),
        loop=LoopConfig(initial_size=20, budget=10, rounds=2),
        strategies=("alfamix", "random", "entropy"),
        seeds=(1, 2),
    )
    return dataclasses.replace(config, **changes)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def labelled_masks(workdir, config):
    from alfamix_jax.experiment.checkpoint import RunCheckpointer

    masks = {}
    for strategy in config.strategies:
        for seed in config.seeds:
            checkpointer = RunCheckpointer(run_dir(str(workdir), strategy, seed))
            masks[strategy, seed] = checkpointer.latest().arrays["labelled"]
            checkpointer.close()
    return masks


def write_image_npz(path, *, shape, num_classes=3, n_train=90, n_test=30, seed=0):
    """Tiny learnable images: each class lights up its own block of pixels."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        x = rng.normal(0, 0.3, (n, *shape)).astype(np.float32)
        for c in range(num_classes):
            x[y == c, 4 * c:4 * c + 4, :8] += 2.0
        return x, y

    (xt, yt), (xs, ys) = make(n_train), make(n_test)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return str(path)


# --------------------------------------------------------------------------- end to end, per model family


def test_mlp_two_rounds_on_digits(tmp_path):
    """ALFA-Mix (closed form and learned alpha) and two baselines through the loop; every
    registered strategy's own invariants are test_strategies.py's."""
    config = small_config(strategies=("alfamix", "alfamix_learned", "random", "entropy"))
    logged = []
    records = run_experiment(config, str(tmp_path), progress=False, log=logged.append)
    assert any("re-initialised to the same weights each round" in line and "batch 32" in line for line in logged)
    rows = read_csv(tmp_path / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert len(rows) == len(records) == 4 * 2 * 3
    for row in rows:
        r = int(row["round"])
        assert int(row["labelled"]) == 20 + 10 * r
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert 1 <= int(row["train_epochs"]) <= 25
        assert (row["query_seconds"] == "") == (r == 0)
        has_diagnostics = row["strategy"].startswith("alfamix") and r > 0
        assert (row["candidates"] != "") == has_diagnostics
        if has_diagnostics:
            assert 0 <= int(row["filled"]) <= 10
    # Same seed: same initial weights and initial set for every strategy, so round 0 is identical.
    for seed in (1, 2):
        round0 = {row["test_accuracy"] for row in rows if row["round"] == "0" and row["seed"] == str(seed)}
        assert len(round0) == 1
    # Different seeds: different initial sets.
    masks = labelled_masks(tmp_path, config)
    assert masks["random", 1].sum() == 40
    assert not np.array_equal(masks["random", 1], masks["random", 2])
    # Learning happens: the digits MLP is far above chance (0.1) with 40 labels.
    assert np.mean([float(r["test_accuracy"]) for r in rows if r["round"] == "2"]) > 0.5


@pytest.mark.parametrize("model,shape,strategies", [("cnn", (16, 16, 1), ("alfamix", "entropy")),
                                                    ("resnet18", RESNET["shape"], ("alfamix",))])
def test_image_models_two_rounds(tmp_path, model, shape, strategies):
    """The CNN on 16x16 images (it pools them twice, as 28x28 ones), two strategies. The ResNet-18 run uses
    support.RESNET's settings, as test_training.py does (images, pool, batch, optimiser, final labelled count
    12 + 2 * 6 = 24), so one compilation of its step and eval programs serves both files; one strategy (each
    fit of ResNet-18 is seconds on 2 cores, and the CNN case runs the second strategy through the loop)."""
    path = write_image_npz(tmp_path / "images.npz", shape=shape, n_train=RESNET["pool"])
    config = small_config(
        data=DataConfig(name="npz", path=path),
        model=ModelConfig(name=model),
        train=TrainConfig(learning_rate=RESNET["learning_rate"], batch_size=RESNET["batch_size"], max_epochs=2),
        loop=LoopConfig(initial_size=12, budget=6, rounds=2),
        strategies=strategies,
        seeds=(3,),
    )
    run_experiment(config, str(tmp_path / "run"), **QUIET)
    rows = read_csv(tmp_path / "run" / "results.csv")
    assert [int(r["labelled"]) for r in rows] == [12, 18, 24] * len(strategies)
    masks = labelled_masks(tmp_path / "run", config)
    assert all(m.sum() == 24 for m in masks.values())


# --------------------------------------------------------------------------- reproducibility and resume


def test_rerun_is_bit_identical(tmp_path):
    config = small_config(strategies=("alfamix", "random"), seeds=(5,))
    run_experiment(config, str(tmp_path / "a"), **QUIET)
    run_experiment(config, str(tmp_path / "b"), **QUIET)
    assert without_timing(read_csv(tmp_path / "a" / "results.csv")) == without_timing(
        read_csv(tmp_path / "b" / "results.csv"))
    a, b = labelled_masks(tmp_path / "a", config), labelled_masks(tmp_path / "b", config)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_run_reruns_alone_and_a_finished_workdir_is_left_alone(tmp_path):
    config = small_config(strategies=("alfamix", "random"), seeds=(1, 2))
    full = run_experiment(config, str(tmp_path / "all"), **QUIET)
    alone = run_experiment(config, str(tmp_path / "one"), strategies=["alfamix"], seeds=[2], **QUIET)
    pick = [r for r in full if r["strategy"] == "alfamix" and r["seed"] == 2]
    assert without_timing(alone) == without_timing(pick)
    before = (tmp_path / "all" / "results.csv").read_text()
    again = run_experiment(config, str(tmp_path / "all"), **QUIET)
    assert (tmp_path / "all" / "results.csv").read_text() == before
    assert len(again) == len(full)


def test_warm_start_resumes_identically(tmp_path):
    """A stop after round 1 (emulated by deleting the last round's checkpoint) resumes from the saved
    weights to the records the finished run had written. small_config's training settings plus warm_start,
    so the fit is the program the other digits runs compiled already (warm_start changes no program)."""
    config = small_config(strategies=("alfamix",), seeds=(1,), train=dataclasses.replace(
        small_config().train, warm_start=True))
    whole = run_experiment(config, str(tmp_path), **QUIET)
    ckpt = run_dir(str(tmp_path), "alfamix", 1)
    last = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
    import shutil

    shutil.rmtree(os.path.join(ckpt, str(last)))
    resumed = run_experiment(config, str(tmp_path), **QUIET)
    assert without_timing(resumed) == without_timing(whole)


def _cli(config_path, workdir, **kwargs):
    return cli_run("--config", config_path, "--workdir", workdir, "--no-progress", **kwargs)


def _rows_written(workdir):
    path = os.path.join(workdir, "results.csv")
    try:
        return len(read_csv(path))
    except FileNotFoundError:
        return 0


def test_resume_after_kill_9_equals_uninterrupted(killable_whole, tmp_path):
    """`killable_whole` (conftest.py) is the uninterrupted run of the same config."""
    config_path = killable_whole / "killable.py"
    workdir = tmp_path / "killed"
    for kill_after_rows in (3, 9, 14):  # inside the first run, at a run boundary, in the last runs
        proc = _cli(config_path, workdir)
        deadline = time.time() + 240
        while _rows_written(workdir) < kill_after_rows and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finish = _cli(config_path, workdir)
    _, err = finish.communicate(timeout=300)
    assert finish.returncode == 0, err[-2000:]

    expected = without_timing(read_csv(killable_whole / "w" / "results.csv"))
    got = without_timing(read_csv(workdir / "results.csv"))
    assert got == expected  # nothing lost, nothing duplicated, same numbers
    config = load_config(str(config_path))
    a, b = labelled_masks(killable_whole / "w", config), labelled_masks(workdir, config)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- compilation


def test_no_recompilation_from_round_two(tmp_path):
    """Every program is compiled at most once: a program compiled in round >= 2
    must be new (ALFA-Mix's k-means stage compiles the first round it is needed)."""
    compiled_in_round = {}
    current = {"round": 0, "names": []}

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            current["names"].append(kwargs.get("fun_name", "?"))

    def on_round(record):
        compiled_in_round.setdefault(record["round"], []).extend(current["names"])
        current["names"] = []

    config = small_config(loop=LoopConfig(initial_size=20, budget=10, rounds=4), seeds=(1, 2))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run_experiment(config, str(tmp_path), on_round=on_round, **QUIET)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    seen = set()
    for r in sorted(compiled_in_round):
        names = compiled_in_round[r]
        if r >= 2:
            again = [n for n in names if n in seen]
            assert not again, f"round {r} recompiled {again}"
        seen.update(names)
    later = [n for r, names in compiled_in_round.items() if r >= 2 for n in names]
    assert len(later) <= 2, later  # at most ALFA-Mix's finish stages, the first time one is needed


# --------------------------------------------------------------------------- initial set


def test_initial_set_per_class_and_random():
    y = np.repeat(np.arange(5), 30)
    key = jax.random.key(0)
    per_class = initial_labelled(key, 0, y, size=10, mode="per_class", num_classes=5)
    assert np.array_equal(np.bincount(y[per_class], minlength=5), [2] * 5)
    rand = initial_labelled(key, 0, y, size=17, mode="random", num_classes=5)
    assert rand.sum() == 17
    assert np.array_equal(rand, initial_labelled(key, 0, y, size=17, mode="random", num_classes=5))


def _original_main_py_draw(seed, n, size):
    """The original main.py's initial draw, transcribed: the global RNG, seeded, shuffles arange(N)."""
    np.random.seed(seed)
    idxs_lb = np.zeros(n, dtype=bool)
    idxs_tmp = np.arange(n)
    np.random.shuffle(idxs_tmp)
    idxs_lb[idxs_tmp[:size]] = True
    return idxs_lb


@pytest.mark.parametrize("seed", [1, 10, 100, 1000, 10000])
def test_initial_set_original_is_main_py_for_each_seed(seed):
    y = np.arange(60000) % 10
    state = np.random.get_state()
    try:
        np.random.seed(12345)
        before = np.random.get_state()[1].copy()
        mine = initial_labelled(jax.random.key(seed), seed, y, size=100, mode="original", num_classes=10)
        assert np.array_equal(np.random.get_state()[1], before)  # the global RNG is left alone
        expected = _original_main_py_draw(seed, 60000, 100)
    finally:
        np.random.set_state(state)
    assert mine.sum() == 100 and np.array_equal(mine, expected)
    other = initial_labelled(jax.random.key(seed), seed + 1, y, size=100, mode="original", num_classes=10)
    assert not np.array_equal(mine, other)  # the seed, not the key, decides


# --------------------------------------------------------------------------- configs and bad input


def _run_cli(*args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "alfamix_jax.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("overrides,message", [
    (["data.name=imagenet"], "imagenet"),
    (["data.name=cifar10"], "data_dir"),
    (["loop.budget=5000"], "loop.budget"),
    (["strategies=alfamix,coreset9"], "coreset9"),
    (["model.name=vit"], "model.name"),
    (["train.nonsense=1"], "nonsense"),
    (["loop.rounds=x"], "loop.rounds"),
])
def test_bad_configs_fail_fast_with_a_clear_message(tmp_path, capsys, overrides, message):
    """In process (the command's own main); test_a_bad_config_fails_fast_in_a_fresh_process runs one as a command."""
    from alfamix_jax.cli import main

    sets = [a for o in overrides for a in ("--set", o)]
    start = time.time()
    try:
        code = main(["run", "--config", "demo", "--workdir", str(tmp_path / "w"), "--no-progress", *sets])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert time.time() - start < 60
    assert not (tmp_path / "w").exists()  # nothing was run, nothing written


def test_a_bad_config_fails_fast_in_a_fresh_process(tmp_path):
    start = time.time()
    result = _run_cli("run", "--config", "demo", "--workdir", str(tmp_path / "w"), "--no-progress",
                      "--set", "loop.budget=5000")  # the data-dependent check: it reads the pool's size
    assert result.returncode == 2, result.stderr
    assert "loop.budget" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "w").exists()


def test_workdir_refuses_a_different_config(tmp_path):
    config = small_config(strategies=("random",), seeds=(1,), loop=LoopConfig(initial_size=20, budget=10, rounds=1))
    run_experiment(config, str(tmp_path), **QUIET)
    other = apply_overrides(config, ["train.learning_rate=0.5"])
    with pytest.raises(ValueError, match="different config"):
        run_experiment(other, str(tmp_path), **QUIET)
    # Adding a seed is fine: runs are independent.
    more = apply_overrides(config, ["seeds=1,7"])
    assert len(run_experiment(more, str(tmp_path), **QUIET)) == 4


def test_overrides_parse_types():
    config = apply_overrides(load_config("demo"), [
        "train.learning_rate=0.5", "seeds=3,4", "data.max_train=None", "train.warm_start=true", "loop.rounds=2",
    ])
    assert config.train.learning_rate == 0.5 and config.seeds == (3, 4) and config.train.warm_start
    assert config.data.max_train is None and config.loop.rounds == 2


def test_shipped_configs_load_and_state_their_command():
    from alfamix_jax.experiment.config import shipped_configs

    names = shipped_configs()
    assert {"demo", "fashion_mnist_mlp", "mnist_mlp", "cifar10_resnet18"} <= set(names)
    for name in names:
        config = load_config(name)
        module = sys.modules[f"alfamix_jax.experiment.configs.{name}"]
        assert f"--config {name}" in module.__doc__
        assert config.strategies and config.seeds
    fm = load_config("fashion_mnist_mlp")
    assert (fm.loop.initial_size, fm.loop.budget, fm.loop.rounds) == (100, 100, 10)
    assert (fm.train.learning_rate, fm.train.batch_size, fm.train.max_epochs) == (1e-3, 64, 1000)
    assert fm.train.stop_accuracy == 0.99 and not fm.train.warm_start and fm.model.embed_dim == 256
    assert fm.seeds == (1, 10, 100, 1000, 10000)
    assert set(fm.strategies) == {"alfamix", "alfamix_learned", "random", "entropy", "badge"}
    # The original ran Fashion-MNIST through its MNIST handler, and drew the initial set with np.random.
    assert fm.data.normalisation == "mnist" and fm.loop.initial_mode == "original"


def test_report_command_reads_a_workdir(tmp_path, capsys):
    """In process (the command's own main: the `python -m alfamix_jax.cli` entry is run by the tests above)."""
    from alfamix_jax.cli import main

    config = small_config(strategies=("random", "entropy"), seeds=(1, 2))
    run_experiment(config, str(tmp_path), **QUIET)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "random" in out and "entropy" in out
    assert any(f.endswith(".png") for f in os.listdir(tmp_path / "report"))
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err



def test_fashion_mnist_idx_through_the_runner(tmp_path, monkeypatch):
    """The IDX -> TFDS builder -> array_record path inside a whole run (tiny IDX files the test writes).
    A 300-row pool with small_config's model, loop and classes: the selection programs are those the
    digits runs compiled (same pool size, embedding width and budget), only the 784-input fit is new."""
    from test_data import write_fashion_idx

    monkeypatch.setenv("ALFAMIX_JAX_TFDS_DIR", str(tmp_path / "tfds"))
    write_fashion_idx(tmp_path / "idx", n_train=300, n_test=20)
    config = small_config(
        data=DataConfig(name="fashion_mnist", data_dir=str(tmp_path / "idx")),
        strategies=("alfamix", "random"),
        seeds=(1,),
    )
    run_experiment(config, str(tmp_path / "run"), **QUIET)
    rows = read_csv(tmp_path / "run" / "results.csv")
    assert [int(r["labelled"]) for r in rows] == [20, 30, 40] * 2
    assert os.listdir(tmp_path / "tfds")  # prepared once into the cache


def test_baselines_through_the_runner(tmp_path):
    """BALD gets its MC-dropout passes from the trainer; a diversity baseline runs alongside."""
    config = small_config(model=ModelConfig(name="mlp", embed_dim=32, dropout=0.3),
                          strategies=("bald", "coreset"), seeds=(1,))
    run_experiment(config, str(tmp_path), **QUIET)
    rows = read_csv(tmp_path / "results.csv")
    assert [int(r["labelled"]) for r in rows] == [20, 30, 40] * 2
    masks = labelled_masks(tmp_path, config)
    assert not np.array_equal(masks["bald", 1], masks["coreset", 1])


def test_bald_without_dropout_is_refused():
    from alfamix_jax.experiment.runner import check_config

    with pytest.raises(ValueError, match="model.dropout"):
        check_config(small_config(strategies=("bald",)))


# --------------------------------------------------------------------------- checks before writes, every batch checked


def test_a_refused_run_writes_nothing(tmp_path):
    """check_config and the data-dependent check_pool both come before the first write."""
    workdir = tmp_path / "new"
    with pytest.raises(ValueError, match="strategies: 'nope' is unknown"):
        run_experiment(small_config(strategies=("nope",)), str(workdir), **QUIET)
    assert not workdir.exists()
    with pytest.raises(ValueError, match="the protocol labels 520 rows"):
        run_experiment(small_config(loop=LoopConfig(initial_size=20, budget=250, rounds=2)), str(workdir), **QUIET)
    assert not workdir.exists()


@pytest.fixture
def registry():
    from alfamix_jax.strategies import STRATEGIES

    saved = dict(STRATEGIES)
    yield
    STRATEGIES.clear()
    STRATEGIES.update(saved)


@pytest.mark.parametrize("fault,message", [
    ("short", r"^strategy 'faulty' returned 8 rows in round 1; expected budget=10$"),
    ("float", r"^strategy 'faulty' returned float32 indices in round 1; expected an integer dtype"),
    ("labelled", r"^strategy 'faulty' returned row \d+ in round 1, which is already labelled; expected unlabelled"),
])
def test_the_runner_checks_every_batch(tmp_path, registry, fault, message):
    import jax.numpy as jnp

    from alfamix_jax.strategies import Query, register_strategy, top_unlabelled

    def make_faulty(*, budget, **_):
        def query(key, view):
            rows = top_unlabelled(jnp.zeros(view.labels.shape), view.labels, budget)
            if fault == "short":
                rows = rows[:-2]
            elif fault == "float":
                rows = rows.astype(jnp.float32)
            else:
                rows = rows.at[0].set(jnp.argmax(view.labels >= 0))
            return Query(rows, {})

        return query

    register_strategy("faulty", make_faulty)
    config = small_config(strategies=("faulty",), seeds=(1,), loop=LoopConfig(initial_size=20, budget=10, rounds=1),
                          train=TrainConfig(learning_rate=3e-3, batch_size=32, max_epochs=2))
    with pytest.raises(ValueError, match=message):
        run_experiment(config, str(tmp_path), **QUIET)
