"""Fashion-MNIST from local IDX files, prepared once into a cached TFDS array_record directory.

The first load parses the IDX files and writes array_record files (about 7 s for 60000 + 10000
images on one core); later loads reuse them. The cache lives under
`cache_dir / fashion_mnist_idx-<digest of the IDX files>`, so different IDX files never share a
cache. Two processes preparing at once, or a run killed midway, are safe: preparation holds an
exclusive lock on the cache directory, TFDS writes into an `incomplete.*` directory and renames it
only when complete, and stale `incomplete.*` directories are removed under the lock.
"""
import contextlib
import glob
import hashlib
import os
import shutil

import numpy as np

from alfamix_jax.experiment.data.idx import find_idx_files
from alfamix_jax.experiment.data.tfds_source import FASHION_MNIST_MEAN_STD, read_records

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian/Ubuntu package dataset-fashion-mnist
CACHE_ENV = "ALFAMIX_JAX_TFDS_DIR"
MEAN, STD = FASHION_MNIST_MEAN_STD


def default_cache_dir() -> str:
    """$ALFAMIX_JAX_TFDS_DIR, else $XDG_CACHE_HOME/alfamix-jax/tfds, else ~/.cache/alfamix-jax/tfds."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "alfamix-jax", "tfds")


def idx_digest(files: dict[str, tuple[str, str]]) -> str:
    """First 16 hex digits of the SHA-256 of the four IDX files' bytes (about 0.1 s for the real set)."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        for path in files[split]:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """Hold an exclusive advisory lock (POSIX flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_fashion_mnist(idx_dir: str = DEFAULT_IDX_DIR, cache_dir: str | None = None):
    """Prepare (once) and return the TFDS builder whose array_record files hold the IDX data."""
    import tensorflow_datasets as tfds

    from alfamix_jax.experiment.data.fashion_mnist_builder import FashionMnistIdx

    files = find_idx_files(idx_dir)
    cache_dir = cache_dir or default_cache_dir()
    root = os.path.join(cache_dir, f"fashion_mnist_idx-{idx_digest(files)}")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"cache_dir {cache_dir!r} is not writable ({e}); pass another cache_dir or set ${CACHE_ENV}"
        ) from e

    def builder():
        return FashionMnistIdx(data_dir=root, file_format="array_record")

    if not builder().is_prepared():
        with _exclusive(os.path.join(root, ".prepare.lock")):
            preparing = builder()  # another process may have finished meanwhile
            if not preparing.is_prepared():
                for stale in glob.glob(os.path.join(root, preparing.name, "incomplete.*")):
                    shutil.rmtree(stale, ignore_errors=True)
                preparing.download_and_prepare(
                    download_dir=os.path.join(root, "downloads"),
                    download_config=tfds.download.DownloadConfig(manual_dir=idx_dir),
                )
    # Built once the data is complete: TFDS reads the splits' info when a builder is made, so one
    # made while another process was still preparing would open no split (KeyError 'train').
    return builder()


def load_fashion_mnist_split(builder, split: str, select) -> tuple[np.ndarray, np.ndarray]:
    """-> uint8 images [n, 28, 28, 1] and int32 labels [n] of `split`, rows chosen by `select(num_rows)`."""
    source = builder.as_data_source(split=split)
    indices = select(len(source))
    images, labels = read_records(source, indices, image_shape=(28, 28, 1), what=f"fashion_mnist {split}")
    return images, labels.astype(np.int32)
