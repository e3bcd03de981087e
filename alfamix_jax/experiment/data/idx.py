"""Reading the IDX format of MNIST-family files (Fashion-MNIST's train-images-idx3-ubyte, ...).

IDX: two zero bytes, a type code, the number of dimensions, then each dimension as a
big-endian uint32, then the data in row-major order (big-endian for multi-byte types).
Files may be gzip-compressed; we detect that from the content, not the name.
"""
import gzip
import os

import numpy as np

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"

# Fashion-MNIST's file stems per split; `find_idx_files` accepts each with or without ".gz" and
# the ".idx3-ubyte" spelling some mirrors use.
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (raw or gzip) into an array in native byte order."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"IDX file {path!r}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise ValueError(f"IDX file {path!r}: not an IDX file (header bytes {raw[:4].hex() or 'empty'})")
    dtype = np.dtype(_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path!r}: truncated header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"IDX file {path!r}: header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def find_idx_files(directory: str) -> dict[str, tuple[str, str]]:
    """-> {"train": (images_path, labels_path), "test": (...)} found in `directory`.

    Raises ValueError listing what is missing (and what the directory holds) otherwise.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"data_dir {directory!r} is not a directory; expected the four Fashion-MNIST IDX files")
    found, missing = {}, []
    for split, stems in IDX_STEMS.items():
        paths = []
        for stem in stems:
            hits = [os.path.join(directory, n) for n in _candidates(stem) if os.path.isfile(os.path.join(directory, n))]
            if hits:
                paths.append(hits[0])
            else:
                missing.append(stem + "[.gz]")
        found[split] = tuple(paths)
    if missing:
        present = sorted(os.listdir(directory))[:10]
        raise ValueError(
            f"data_dir {directory!r} lacks the Fashion-MNIST IDX file(s) {', '.join(missing)} "
            f"(it holds {present or 'nothing'}); put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there (Debian: apt install dataset-fashion-mnist "
            "puts them in /usr/share/datasets/fashion-mnist)"
        )
    return found


def read_image_label_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """-> images [N, H, W] uint8, labels [N] uint8, checked to agree in N."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"IDX file {images_path!r}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"IDX file {labels_path!r}: expected uint8 labels [N], got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"IDX files {images_path!r} and {labels_path!r} disagree: "
            f"{images.shape[0]} images, {labels.shape[0]} labels"
        )
    return images, labels
