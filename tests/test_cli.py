"""The `alfamix-jax select` command: output contract, determinism, and one
clear line with exit code 2 (and no output file) for each kind of bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest

from alfamix_jax.cli import main


def make_pool(path, n=300, labelled=40, dim=16, classes=4, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = (means[y] + rng.normal(size=(n, dim))).astype(np.float32)
    labels = np.full(n, -1, np.int64)
    labels[:labelled] = y[:labelled]
    arrays = dict(embeddings=x, labels=labels, head_weight=means.copy(), head_bias=np.zeros(classes, np.float32))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_select_writes_the_contract(tmp_path, capsys):
    pool = make_pool(tmp_path / "pool.npz")
    out = tmp_path / "out.npz"
    code, stdout, _ = run(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "25",
                           "--output", str(out), "--repeat", "2", "--no-compile-cache"], capsys)
    assert code == 0, stdout
    with np.load(out, allow_pickle=False) as r:
        selected, candidates = r["selected"], r["candidates"]
        assert selected.dtype == np.int64 and selected.shape == (25,)
        assert len(set(selected.tolist())) == 25
        assert np.all(pool["labels"][selected] == -1)
        assert candidates.dtype == bool and candidates.shape == (300,)
        assert not np.any(candidates[pool["labels"] >= 0])
        assert int(r["num_filled"]) + int(r["num_from_candidates"]) == 25
        assert int(r["num_candidates"]) == int(candidates.sum())
        assert r["timing_first_s"] > 0 and r["timing_steady_s"] > 0
        assert r["flips_per_anchor"].shape == (5, 4)  # caps 0.2..1.0, one column per class anchor
    assert sorted(os.listdir(tmp_path)) == ["out.npz", "pool.npz"]  # no temp file left behind


def test_same_seed_same_selection_across_processes(tmp_path, capsys):
    """Two selections in this process, one in a fresh process: the same seed gives the same batch in
    both processes, another seed another batch. The fresh process runs last and selects as
    test_select_writes_the_contract does (pool, budget), so it finds its programs in the session's
    compilation cache."""
    make_pool(tmp_path / "pool.npz")
    args = ["select", "--input", str(tmp_path / "pool.npz"), "--budget", "25", "--no-compile-cache"]
    outs = []
    for i, seed in enumerate([3, 4]):
        code, _, err = run([*args, "--output", str(tmp_path / f"out{i}.npz"), "--seed", str(seed)], capsys)
        assert code == 0, err
        outs.append(np.load(tmp_path / f"out{i}.npz")["selected"])
    subprocess.run([sys.executable, "-m", "alfamix_jax.cli", *args, "--output", str(tmp_path / "fresh.npz"),
                    "--seed", "3"], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npz")["selected"], outs[0])
    assert not np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("alpha", ["random", "learned"])
@pytest.mark.parametrize("compat", ["default", "reference"])
def test_other_alpha_paths_and_modes(tmp_path, capsys, alpha, compat):
    """The pool and budget of test_select_writes_the_contract: the stage after the search does not
    depend on the alpha path, so after the first case of each mode it comes from the session's
    compilation cache."""
    pool = make_pool(tmp_path / "pool.npz")
    out = tmp_path / "out.npz"
    code, stdout, err = run(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "25", "--output", str(out),
                             "--alpha", alpha, "--compat", compat, "--no-compile-cache"], capsys)
    assert code == 0, err
    selected = np.load(out)["selected"]
    assert selected.shape == (25,) and np.all(pool["labels"][selected] == -1)
    if compat == "default":
        assert len(set(selected.tolist())) == 25


BAD_POOLS = {
    "missing key": (dict(head_bias=None), "head_bias"),
    "wrong rank": (dict(embeddings=np.zeros(300, np.float32)), "embeddings"),
    "int embeddings": (dict(embeddings=np.zeros((300, 16), np.int32)), "embeddings"),
    "nan": (dict(embeddings=np.full((300, 16), np.nan, np.float32)), "NaN"),
    "inf in head": (dict(head_weight=np.full((4, 16), np.inf, np.float32)), "head_weight"),
    "head/embedding mismatch": (dict(head_weight=np.zeros((4, 8), np.float32)), "head_weight"),
    "bias mismatch": (dict(head_bias=np.zeros(3, np.float32)), "head_bias"),
    "labels too large": (dict(labels=np.r_[np.full(299, -1), 4]), "labels"),
    "labels below -1": (dict(labels=np.r_[np.full(299, -1), -2]), "labels"),
    "float labels": (dict(labels=np.zeros(300, np.float32)), "labels"),
    "labels length": (dict(labels=np.zeros(10, np.int64)), "labels"),
    "no labelled row": (dict(labels=np.full(300, -1)), "no labelled"),
}


@pytest.mark.parametrize("case", sorted(BAD_POOLS))
def test_bad_pool_exits_2_naming_the_key(tmp_path, capsys, case):
    overrides, needle = BAD_POOLS[case]
    make_pool(tmp_path / "pool.npz", **overrides)
    out = tmp_path / "out.npz"
    code, _, err = run(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "5", "--output", str(out)],
                       capsys)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_object_array_is_refused_without_unpickling(tmp_path, capsys):
    make_pool(tmp_path / "pool.npz", labels=np.array([object()] * 300, dtype=object))
    code, _, err = run(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "5",
                        "--output", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and "labels" in err and "object" in err


@pytest.mark.parametrize("content", [b"not a zip at all", b""])
def test_unreadable_input(tmp_path, capsys, content):
    bad = tmp_path / "pool.npz"
    bad.write_bytes(content)
    code, _, err = run(["select", "--input", str(bad), "--budget", "5", "--output", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and "--input" in err and not (tmp_path / "o.npz").exists()


def test_missing_file(tmp_path, capsys):
    code, _, err = run(["select", "--input", str(tmp_path / "nope.npz"), "--budget", "5",
                        "--output", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and "no such file" in err


def exit_code_and_err(args, capsys):
    """main() returns 2 for bad data; argparse raises SystemExit(2) for bad options."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("budget, needle", [("0", "--budget"), ("-3", "--budget"), ("261", "budget (261)"),
                                            ("x", "--budget")])
def test_bad_budget(tmp_path, capsys, budget, needle):
    make_pool(tmp_path / "pool.npz")  # 260 unlabelled rows
    code, err = exit_code_and_err(["select", "--input", str(tmp_path / "pool.npz"), "--budget", budget,
                                   "--output", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and needle in err
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("step", ["0", "-0.2", "nan", "inf"])
def test_bad_cap_step(tmp_path, capsys, step):
    make_pool(tmp_path / "pool.npz")
    code, err = exit_code_and_err(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "5", "--output",
                                   str(tmp_path / "o.npz"), "--alpha-cap-step", step], capsys)
    assert code == 2 and "--alpha-cap-step" in err


@pytest.mark.parametrize("devices", ["1", "4"])
def test_embeddings_npy_is_streamed_and_selects_the_same(tmp_path, capsys, devices):
    """--embeddings POOL.npy: memory-mapped, streamed through a mesh in blocks;
    the batch equals the one from the embeddings inside --input."""
    pool = make_pool(tmp_path / "pool.npz")
    np.save(tmp_path / "pool.npy", pool["embeddings"])
    make_pool(tmp_path / "head.npz", embeddings=None)  # labels and head only
    code, _, err = run(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "25",
                        "--output", str(tmp_path / "whole.npz")], capsys)
    assert code == 0, err
    code, stdout, err = run(["select", "--input", str(tmp_path / "head.npz"),
                             "--embeddings", str(tmp_path / "pool.npy"), "--budget", "25",
                             "--output", str(tmp_path / "streamed.npz"), "--devices", devices,
                             "--stream-block-size", "64"], capsys)
    assert code == 0, err
    with np.load(tmp_path / "whole.npz") as whole, np.load(tmp_path / "streamed.npz") as streamed:
        np.testing.assert_array_equal(streamed["selected"], whole["selected"])
        np.testing.assert_array_equal(streamed["candidates"], whole["candidates"])
        assert int(streamed["num_candidates"]) == int(whole["num_candidates"])


def test_embeddings_npy_bad_input_exits_2(tmp_path, capsys):
    pool = make_pool(tmp_path / "head.npz", embeddings=None)
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    x[123, 4] = np.inf
    np.save(tmp_path / "nan.npy", x)
    out = tmp_path / "o.npz"
    base = ["select", "--input", str(tmp_path / "head.npz"), "--budget", "5", "--output", str(out)]
    code, _, err = run(base + ["--embeddings", str(tmp_path / "nan.npy")], capsys)
    assert code == 2 and "embeddings: row 123" in err and not out.exists()
    np.save(tmp_path / "flat.npy", x[:, 0])
    code, _, err = run(base + ["--embeddings", str(tmp_path / "flat.npy")], capsys)
    assert code == 2 and "--embeddings" in err and "[N, D]" in err
    code, _, err = run(base + ["--embeddings", str(tmp_path / "missing.npy")], capsys)
    assert code == 2 and "no such file" in err
    np.save(tmp_path / "ok.npy", np.nan_to_num(x, posinf=0.0))
    code, _, err = run(base + ["--embeddings", str(tmp_path / "ok.npy"), "--alpha", "random"], capsys)
    assert code == 2 and "closed-form" in err
    np.save(tmp_path / "short.npy", x[:200])
    code, _, err = run(base + ["--embeddings", str(tmp_path / "short.npy")], capsys)
    assert code == 2 and "labels: got shape (300,); expected (200,)" in err
    assert pool["labels"].shape == (300,)


@pytest.mark.parametrize("option, value, needle", [
    ("--alpha-cap-step", "1e-7", "--alpha-cap-step: got 1e-07, which tries 10000000 caps"),
    ("--block-size", "0", "--block-size: got 0; expected an integer >= 1"),
    ("--learned-iters", "0", "--learned-iters: got 0; expected an integer >= 1"),
    ("--diversity", "greedy", "--diversity: got 'greedy'; expected one of kmeans, random, top-alpha"),
    ("--anchors", "no_such_module:f", "--anchors: cannot import 'no_such_module:f'"),
    ("--linear-fast-path", "maybe", "--linear-fast-path: expected bool"),
])
def test_every_selector_setting_is_an_option_checked_by_the_settings(tmp_path, capsys, option, value, needle):
    make_pool(tmp_path / "pool.npz")
    code, err = exit_code_and_err(["select", "--input", str(tmp_path / "pool.npz"), "--budget", "5", "--output",
                                   str(tmp_path / "o.npz"), option, value], capsys)
    assert code == 2 and needle in err
    assert not (tmp_path / "o.npz").exists()


def test_a_part_from_a_module_in_the_current_folder(tmp_path, capsys, monkeypatch):
    """--diversity module:function imports from the folder the command runs in."""
    pool = make_pool(tmp_path / "pool.npz", n=400, labelled=20)
    (tmp_path / "my_variants.py").write_text(
        "import jax.numpy as jnp\n"
        "def last_rows(key, embeddings, candidates, budget):\n"
        "    rows = jnp.nonzero(candidates, size=candidates.shape[0], fill_value=-1)[0]\n"
        "    return jnp.sort(rows)[::-1][:budget].astype(jnp.int32)\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["select", "--input", "pool.npz", "--budget", "10", "--output", "out.npz",
                        "--diversity", "my_variants:last_rows", "--alpha-cap-step", "1", "--no-compile-cache"], capsys)
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as out:
        candidates = np.flatnonzero(out["candidates"])
        assert len(candidates) > 10  # so the function chose (with 10 or fewer, every candidate is taken)
        np.testing.assert_array_equal(np.sort(out["selected"]), candidates[-10:])
        assert np.all(pool["labels"][out["selected"]] == -1)
