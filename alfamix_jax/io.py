"""Reading selection problems from .npz and writing results atomically."""
import os
import tempfile
import zipfile

import numpy as np

POOL_KEYS = ("embeddings", "labels", "head_weight", "head_bias")


def load_pool(path: str) -> dict[str, np.ndarray]:
    """Read the four pool arrays from an .npz. Never unpickles (object
    arrays are refused). Raises ValueError naming the file or key."""
    if not os.path.isfile(path):
        raise ValueError(f"--input {path!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError(f"--input {path!r}: not an .npz archive (a single .npy array?)")
            missing = [k for k in POOL_KEYS if k not in npz.files]
            if missing:
                raise ValueError(
                    f"--input {path!r}: missing key(s) {', '.join(missing)}; expected {', '.join(POOL_KEYS)}"
                )
            pool = {}
            for key in POOL_KEYS:
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
