"""`alfamix-jax select` against hostile inputs and outputs: every case exits 2 with one line
naming the option or key, before any compute where it can, and creates or replaces no file
(no output, no temporary, the input keeps its bytes)."""
from __future__ import annotations

import errno
import io
import os
import socket
import stat
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format
from test_cli import make_pool

from alfamix_jax import files
from alfamix_jax.cli import main

PREFIX = "alfamix-jax select: error: "


def snapshot(folder) -> dict:
    """Every entry under `folder`: a regular file's bytes, else its type (and a link's target)."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    out[path] = f.read()
            else:
                out[path] = (stat.S_IFMT(mode), os.readlink(path) if stat.S_ISLNK(mode) else None)
    return out


def refused(capsys, folder, argv, *needles) -> str:
    """Run select; assert exit 2, one line naming every needle, and `folder` left exactly as it was."""
    before = snapshot(folder)
    try:
        code = main(["select", *map(str, argv)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(PREFIX) and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(folder) == before  # nothing created, replaced or left behind
    return err


def npy_header(shape, descr="<f4") -> bytes:
    """The bytes of a valid .npy 1.0 header (magic included) declaring `shape` and `descr`."""
    f = io.BytesIO()
    npy_format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return f.getvalue()


def npy_bytes(array) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def write_zip(path, members: dict) -> None:
    """An .npz by hand: name -> bytes, or (bytes, the uncompressed size its zip entry declares)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            data, declared = data if isinstance(data, tuple) else (data, None)
            zf.writestr(name, data)
            if declared is not None:
                zf.filelist[-1].file_size = declared  # the central directory lies; nothing big is stored


@pytest.fixture
def pool(tmp_path):
    """A valid pool.npz (N=300, D=16, C=4) and its arrays."""
    return make_pool(tmp_path / "pool.npz")


def base(tmp_path, **extra):
    argv = ["--input", tmp_path / "pool.npz", "--budget", "5", "--output", tmp_path / "out.npz"]
    for option, value in extra.items():
        flag = f"--{option.replace('_', '-')}"
        argv += [flag] if value is True else [flag, value]
    return argv


# --- values beyond float32 ------------------------------------------------------------------

@pytest.mark.parametrize("key, at, needle", [
    ("embeddings", (7, 3), "embeddings: row 7, column 3 holds 1e+300"),
    ("head_weight", (2, 5), "head_weight: row 2, column 5 holds -1e+300"),
    ("head_bias", (1,), "head_bias: index 1 holds 1e+300"),
])
def test_float64_beyond_float32_names_the_key_and_index(tmp_path, capsys, pool, key, at, needle):
    array = pool[key].astype(np.float64)
    array[at] = -1e300 if key == "head_weight" else 1e300
    make_pool(tmp_path / "pool.npz", **{key: array})
    refused(capsys, tmp_path, base(tmp_path), "--input", needle, "float32")


def test_streamed_float64_beyond_float32_names_embeddings(tmp_path, capsys, pool):
    make_pool(tmp_path / "pool.npz", embeddings=None)
    x = pool["embeddings"].astype(np.float64)
    x[123, 4] = 1e300
    np.save(tmp_path / "pool.npy", x)
    refused(capsys, tmp_path, base(tmp_path, embeddings=tmp_path / "pool.npy", no_compile_cache=True),
            "--embeddings", "embeddings: row 123", "float32")


# --- the output path ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["same path", "relative", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(tmp_path, capsys, monkeypatch, pool, how):
    monkeypatch.chdir(tmp_path)
    output = {"same path": tmp_path / "pool.npz", "relative": "pool.npz", "symlink": "link.npz",
              "hard link": "hard.npz"}[how]
    if how == "symlink":
        os.symlink("pool.npz", "link.npz")
    if how == "hard link":
        os.link("pool.npz", "hard.npz")
    argv = ["--input", tmp_path / "pool.npz", "--budget", "5", "--output", output]
    refused(capsys, tmp_path, argv, f"--output {str(output)!r}", "the same file as --input")


def test_output_that_is_the_embeddings_is_refused(tmp_path, capsys, pool):
    make_pool(tmp_path / "pool.npz", embeddings=None)
    np.save(tmp_path / "pool.npy", pool["embeddings"])
    argv = base(tmp_path, embeddings=tmp_path / "pool.npy")
    argv[argv.index("--output") + 1] = tmp_path / "pool.npy"
    refused(capsys, tmp_path, argv, "--output", "the same file as --embeddings")


def test_output_symlink_to_another_file_is_refused(tmp_path, capsys, pool):
    """Decision: a symbolic link is refused, not resolved (the atomic rename would replace the link)."""
    (tmp_path / "old.npz").write_bytes(b"previous result")
    os.symlink(tmp_path / "old.npz", tmp_path / "out.npz")
    refused(capsys, tmp_path, base(tmp_path), "--output", "symbolic link", "old.npz")


def test_output_directory_is_refused(tmp_path, capsys, pool):
    (tmp_path / "out.npz").mkdir()
    refused(capsys, tmp_path, base(tmp_path), "--output", "a directory")


def test_output_in_a_missing_directory_is_refused(tmp_path, capsys, pool):
    argv = base(tmp_path)
    argv[-1] = tmp_path / "missing" / "out.npz"
    refused(capsys, tmp_path, argv, "--output", "missing", "does not exist")


def test_output_is_checked_before_the_input_is_read(tmp_path, capsys):
    argv = ["--input", tmp_path / "nope.npz", "--budget", "5", "--output", tmp_path / "missing" / "o.npz"]
    refused(capsys, tmp_path, argv, "--output", "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_output_in_a_read_only_directory_is_refused(tmp_path, capsys, pool):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        argv = base(tmp_path)
        argv[-1] = folder / "out.npz"
        refused(capsys, tmp_path, argv, "--output", "not writable")
    finally:
        folder.chmod(0o755)


def make_special(tmp_path, kind: str) -> str:
    """A special file to write over. The device is made in tmp_path as root (a failing check must
    never replace the real /dev/null); without root, /dev/null itself cannot be replaced."""
    path = str(tmp_path / kind.replace(" ", "-"))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)
    elif os.geteuid() == 0:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    else:
        path = "/dev/null"
    return path


@pytest.mark.parametrize("kind, test", [("fifo", stat.S_ISFIFO), ("socket", stat.S_ISSOCK),
                                        ("character device", stat.S_ISCHR)])
def test_output_special_file_is_refused(tmp_path, capsys, pool, kind, test):
    target = make_special(tmp_path, kind)
    argv = base(tmp_path)
    argv[-1] = target
    refused(capsys, tmp_path, argv, "--output", "not a regular file", kind)
    assert test(os.lstat(target).st_mode)


def test_disk_full_exits_2_naming_the_output(tmp_path, capsys, monkeypatch, pool):
    (tmp_path / "out.npz").write_bytes(b"previous result")  # kept whole

    def full_disk(f, **arrays):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    refused(capsys, tmp_path, base(tmp_path, no_compile_cache=True), "--output", "No space left on device")


def test_check_output_path_allows_new_and_regular_files(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "linked")  # a linked directory is fine: only the last name counts
    (tmp_path / "old.npz").write_bytes(b"x")
    assert files.check_output_path("--output", str(tmp_path / "old.npz")) == str(tmp_path / "old.npz")
    inputs = {"--input": str(tmp_path / "old.npz"), "--embeddings": None}
    new = files.check_output_path("--output", str(tmp_path / "linked" / "new.npz"), inputs=inputs)
    assert new == str(tmp_path / "linked" / "new.npz")
    with pytest.raises(ValueError, match="--out 'a/': not a file name"):
        files.check_output_path("--out", "a/")


# --- the inputs' formats and headers --------------------------------------------------------

def test_npy_as_input_points_to_embeddings(tmp_path, capsys, pool):
    np.save(tmp_path / "x.npy", pool["embeddings"])
    argv = base(tmp_path)
    argv[1] = tmp_path / "x.npy"
    refused(capsys, tmp_path, argv, "--input", "--embeddings", ".npy")


def test_npz_as_embeddings_points_to_input(tmp_path, capsys, pool):
    refused(capsys, tmp_path, base(tmp_path, embeddings=tmp_path / "pool.npz"), "--embeddings", ".npz", "--input")


@pytest.mark.parametrize("shape, needles", [
    ((-5, 3), ["(-5, 3)", ">= 0"]),
    ((10**13, 8), ["(10000000000000, 8)", "truncated"]),
])
def test_bad_npy_header_shape(tmp_path, capsys, pool, shape, needles):
    make_pool(tmp_path / "pool.npz", embeddings=None)
    (tmp_path / "x.npy").write_bytes(npy_header(shape) + b"\0" * 64)
    refused(capsys, tmp_path, base(tmp_path, embeddings=tmp_path / "x.npy"), "--embeddings", *needles)


def pool_members(pool, **members) -> dict:
    """The .npz members of `pool` (as .npy bytes), some replaced by `members`."""
    out = {f"{key}.npy": npy_bytes(value) for key, value in pool.items()}
    out.update({f"{key}.npy": value for key, value in members.items()})
    return out


def test_negative_shape_in_npz_member(tmp_path, capsys, pool):
    write_zip(tmp_path / "pool.npz", pool_members(pool, embeddings=npy_header((-5, 3)) + b"\0" * 60))
    refused(capsys, tmp_path, base(tmp_path), "--input", "embeddings", "(-5, 3)", ">= 0")


def test_lying_header_in_npz_member(tmp_path, capsys, pool):
    """A header declaring more than its zip entry holds (here 64 TB): refused before allocating."""
    write_zip(tmp_path / "pool.npz", pool_members(pool, embeddings=npy_header((10**13, 8)) + b"\0" * 64))
    refused(capsys, tmp_path, base(tmp_path), "embeddings", "(10000000000000, 8)", "zip bomb or a lying header")


def test_huge_consistent_npz_is_refused_by_memory(tmp_path, capsys, pool):
    """Shapes and zip sizes agree (forged zip64 sizes), but 64 TB does not fit in memory."""
    n = 10**13
    emb, lab = npy_header((n, 8)), npy_header((n,), "<i8")
    write_zip(tmp_path / "pool.npz", pool_members(pool, embeddings=(emb, len(emb) + n * 32),
                                                  labels=(lab, len(lab) + n * 8),
                                                  head_weight=npy_bytes(pool["head_weight"][:, :8])))
    refused(capsys, tmp_path, base(tmp_path), "--input", "embeddings", "memory", "--embeddings")


def test_memory_check_uses_available_memory(tmp_path, capsys, monkeypatch, pool):
    monkeypatch.setattr("alfamix_jax.io.available_memory", lambda: 1000)
    refused(capsys, tmp_path, base(tmp_path), "embeddings", "of memory available")


def test_zip_bomb_is_refused_before_decompressing(tmp_path, capsys, pool):
    """A real bomb (64 MiB of zeros, ~64 KiB stored) and a forged one declaring 2 GiB, each with
    labels for 300 rows: refused from the headers, with almost nothing allocated."""
    zeros = npy_bytes(np.zeros((2**21, 8), np.float32))
    write_zip(tmp_path / "pool.npz", pool_members(pool, embeddings=zeros))
    assert os.path.getsize(tmp_path / "pool.npz") < 2**20
    for bomb in ("real", "forged"):
        if bomb == "forged":
            header = npy_header((2**26, 8))
            write_zip(tmp_path / "pool.npz", pool_members(pool, embeddings=(header, len(header) + 2**31)))
        tracemalloc.start()
        try:
            err = refused(capsys, tmp_path, base(tmp_path), "labels: got shape (300,); expected (")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, (bomb, peak, err)  # the real bomb alone would take 64 MiB
        assert f"--input {str(tmp_path / 'pool.npz')!r}" in err


def test_mismatched_n_across_files(tmp_path, capsys, pool):
    make_pool(tmp_path / "pool.npz", embeddings=None)
    np.save(tmp_path / "x.npy", pool["embeddings"][:200])
    refused(capsys, tmp_path, base(tmp_path, embeddings=tmp_path / "x.npy"), "--input",
            "labels: got shape (300,); expected (200,) (N = 200 from embeddings)")


@pytest.mark.parametrize("member, needle", [
    (np.array(["a"] * 300), "not numeric"),
    (np.array([object()] * 300, dtype=object), "object array"),
])
def test_non_numeric_member(tmp_path, capsys, pool, member, needle):
    make_pool(tmp_path / "pool.npz", labels=member)
    refused(capsys, tmp_path, base(tmp_path), "--input", "labels", needle)


# --- options --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [str(2**70), "-1"])
def test_seed_out_of_range(tmp_path, capsys, pool, seed):
    refused(capsys, tmp_path, base(tmp_path, seed=seed), f"--seed: got {seed}", "[0, 4294967295]")


@pytest.mark.parametrize("step, needle", [("1e-7", "which tries 10000000 caps"), ("1e-320", "more than 1000 caps")])
def test_tiny_cap_step(tmp_path, capsys, pool, step, needle):
    refused(capsys, tmp_path, base(tmp_path, alpha_cap_step=step), "--alpha-cap-step", needle)


# --- as a process: stderr itself ------------------------------------------------------------

@pytest.mark.parametrize("case", ["output is input", "64 TB header"])
def test_process_stderr_is_one_line(tmp_path, pool, case):
    output = tmp_path / ("pool.npz" if case == "output is input" else "out.npz")
    if case == "64 TB header":
        write_zip(tmp_path / "pool.npz", pool_members(pool, embeddings=npy_header((10**13, 8)) + b"\0" * 64))
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "alfamix_jax.cli", "select", "--input", str(tmp_path / "pool.npz"),
                           "--budget", "5", "--output", str(output)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(PREFIX) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and snapshot(tmp_path) == before
