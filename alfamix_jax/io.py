"""Reading selection problems from .npz and writing results atomically."""
import os
import tempfile
import zipfile

import numpy as np

POOL_KEYS = ("embeddings", "labels", "head_weight", "head_bias")


def load_pool(path: str, keys: tuple[str, ...] = POOL_KEYS) -> dict[str, np.ndarray]:
    """Read the pool arrays named by `keys` from an .npz. Never unpickles
    (object arrays are refused). Raises ValueError naming the file or key."""
    if not os.path.isfile(path):
        raise ValueError(f"--input {path!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError(f"--input {path!r}: not an .npz archive (a single .npy array?)")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(
                    f"--input {path!r}: missing key(s) {', '.join(missing)}; expected {', '.join(keys)}"
                )
            pool = {}
            for key in keys:
                try:
                    pool[key] = npz[key]
                except ValueError as e:  # object arrays need pickle
                    raise ValueError(f"--input {path!r}: key {key!r} holds an object array ({e}); store numbers") from e
            return pool
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"--input {path!r}: not a readable .npz file ({e})") from e
    except ValueError as e:
        if str(e).startswith("--input"):
            raise
        raise ValueError(f"--input {path!r}: not a readable .npz file ({e})") from e


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz so that `path` is either absent or complete: write a
    temporary file in the same directory, fsync, then rename over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def open_embeddings(path: str) -> np.ndarray:
    """A `.npy` of embeddings [N, D], memory-mapped (read-only): nothing is
    read until rows are used, so the file may exceed memory. Raises
    ValueError naming --embeddings."""
    if not os.path.isfile(path):
        raise ValueError(f"--embeddings {path!r}: no such file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"--embeddings {path!r}: not a readable .npy file ({e})") from e
    if not isinstance(array, np.ndarray):
        raise ValueError(f"--embeddings {path!r}: an .npz archive; pass one .npy array [N, D]")
    if array.ndim != 2 or array.dtype.kind != "f":
        raise ValueError(f"--embeddings {path!r}: expected a float array [N, D], got {array.dtype} {array.shape}")
    return array
