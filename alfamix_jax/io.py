"""Reading a selection problem for `select`: every declared size is checked before a byte is
decompressed or allocated.

An .npz is a zip of .npy members; each member's .npy header declares its shape and dtype. We
read those headers first (a few hundred bytes each) and refuse, naming the file and key:
a negative dimension, a non-numeric or object dtype (nothing is ever unpickled), shapes that do
not fit together (embeddings [N, D], labels [N], head_weight [C, D], head_bias [C]), a zip
member whose declared uncompressed size is not header + prod(shape) * itemsize (a zip bomb or a
lying header), and arrays that together declare more bytes than the memory available. Only then
are the arrays read, each at most its declared size. A `--embeddings` .npy is memory-mapped
instead: its file must hold the bytes its header declares. After loading, a float64 value beyond
float32's range (which the selector's float32 cast would turn into inf) is an error naming the
key and its index.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

POOL_KEYS = ("embeddings", "labels", "head_weight", "head_bias")
POOL_SHAPES = {"embeddings": ("N", "D"), "labels": ("N",), "head_weight": ("C", "D"), "head_bias": ("C",)}
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
NUMERIC_KINDS = "biufc"
FLOAT32_MAX = float(np.finfo(np.float32).max)
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, RuntimeError,
                NotImplementedError, MemoryError)


class InputError(ValueError):
    """A refused input, its message already naming the file and key (not wrapped again)."""


@dataclasses.dataclass(frozen=True)
class Declared:
    """What one .npy header declares: the array's shape and dtype, and where its data starts."""

    where: str  # "--input 'pool.npz'" or "--embeddings 'pool.npy'"
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_len: int  # bytes before the data (magic and header)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow

    def error(self, message: str) -> InputError:
        return InputError(f"{self.where}: {self.key}: {message}")


def _size(n: int) -> str:
    """A byte count for people: '2.0 GiB (2147483648 bytes)'."""
    value, unit = float(n), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n} bytes)"


@contextlib.contextmanager
def _reading(where: str, what: str) -> Iterator[None]:
    """Turn the errors a damaged file raises while it is read into one InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, *_READ_ERRORS) as e:
        raise InputError(f"{where}: not a readable {what} ({type(e).__name__}: {e})") from None


def read_header(f: IO[bytes], where: str, key: str) -> Declared:
    """The header of the .npy at `f`'s position (read_magic, read_array_header_1_0 / 2_0), checked:
    dimensions >= 0 and a plain numeric dtype. Reads only the header."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]}; expected 1.0 or 2.0")
    except ValueError as e:
        raise InputError(f"{where}: {key}: not a valid .npy header ({e})") from None
    declared = Declared(where, key, tuple(int(d) for d in shape), dtype, bool(fortran_order), f.tell())
    if any(d < 0 for d in declared.shape):
        raise declared.error(f"the header declares shape {declared.shape}; expected dimensions >= 0 "
                             "(a damaged or hand-made file)")
    if dtype.hasobject:
        raise declared.error(f"holds an object array (dtype {dtype}); store numbers (select never unpickles)")
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise declared.error(f"dtype {dtype} is not numeric; expected floats (labels: integers)")
    return declared


def check_shapes(arrays: list[Declared]) -> None:
    """Each array has its POOL_SHAPES rank and they agree: embeddings [N, D], labels [N],
    head_weight [C, D], head_bias [C] (a size is set by the first array, in POOL_KEYS order, naming it)."""
    sizes: dict[str, tuple[int, str]] = {}
    for a in sorted(arrays, key=lambda a: POOL_KEYS.index(a.key)):
        dims = POOL_SHAPES[a.key]
        if len(a.shape) != len(dims):
            raise a.error(f"got shape {a.shape}; expected [{', '.join(dims)}] ({len(dims)} dimension(s))")
        expected = tuple(sizes[d][0] if d in sizes else n for d, n in zip(dims, a.shape, strict=True))
        if expected != a.shape:
            why = ", ".join(f"{d} = {sizes[d][0]} from {sizes[d][1]}" for d, n in zip(dims, a.shape, strict=True)
                            if d in sizes and sizes[d][0] != n)
            raise a.error(f"got shape {a.shape}; expected {expected} ({why})")
        for d, n in zip(dims, a.shape, strict=True):
            sizes.setdefault(d, (n, a.key))


def available_memory() -> int | None:
    """Bytes of memory available now: MemAvailable from /proc/meminfo (Linux), else the free
    pages os.sysconf reports; None when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(arrays: list[Declared]) -> None:
    """The arrays to load declare no more bytes, together, than the memory available."""
    total, available = sum(a.nbytes for a in arrays), available_memory()
    if not arrays or available is None or total <= available:
        return
    largest = max(arrays, key=lambda a: a.nbytes)
    raise largest.error(f"declares shape {largest.shape} {largest.dtype} ({_size(largest.nbytes)}); the arrays "
                        f"to load declare {_size(total)} in all, more than the {_size(available)} of memory "
                        "available. For a pool larger than memory pass the embeddings [N, D] as a .npy with "
                        "--embeddings (memory-mapped and streamed)")


def _sniff(option: str, path: str) -> bytes:
    """The first bytes of the regular file `path`; an InputError naming `option` if it is not one."""
    if not os.path.lexists(path):
        raise InputError(f"{option} {path!r}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{option} {path!r}: not a regular file (a directory, device or fifo)")
    with _reading(f"{option} {path!r}", "file"), open(path, "rb") as f:
        return f.read(len(NPY_MAGIC))


def _npz_headers(zf: zipfile.ZipFile, where: str,
                 keys: tuple[str, ...]) -> dict[str, tuple[zipfile.ZipInfo, Declared]]:
    """Each key's zip member and its checked header; the member's declared uncompressed size
    must be header + prod(shape) * itemsize. Decompresses only the headers."""
    members = {}
    for key in keys:
        info = next((zf.NameToInfo[n] for n in (f"{key}.npy", key) if n in zf.NameToInfo), None)
        if info is None:
            members[key] = None
            continue
        with _reading(where, ".npz file"), zf.open(info) as f:
            declared = read_header(f, where, key)
        expected = declared.header_len + declared.nbytes
        if info.file_size != expected:
            raise declared.error(
                f"the zip member {info.filename!r} declares {_size(info.file_size)} uncompressed, but its .npy "
                f"header declares shape {declared.shape} {declared.dtype}: {_size(expected)} with the header; "
                "refusing a damaged or hostile archive (a zip bomb or a lying header)")
        members[key] = (info, declared)
    missing = [k for k in keys if members[k] is None]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}; expected {', '.join(keys)}")
    return members  # type: ignore[return-value]


def _npy_header(path: str) -> Declared:
    """The checked header of the --embeddings .npy: a float array [N, D] whose file holds the
    bytes the header declares (it is memory-mapped, so memory does not bound it)."""
    where = f"--embeddings {path!r}"
    magic = _sniff("--embeddings", path)
    if magic.startswith(ZIP_MAGICS):
        raise InputError(f"{where}: an .npz archive; pass one .npy array [N, D] as --embeddings (the labels, "
                         "head_weight and head_bias go in the .npz given as --input)")
    if not magic.startswith(NPY_MAGIC):
        raise InputError(f"{where}: not a .npy file (it does not start with the .npy magic)")
    with _reading(where, ".npy file"), open(path, "rb") as f:
        declared = read_header(f, where, "embeddings")
        size = os.fstat(f.fileno()).st_size
    if len(declared.shape) != 2 or declared.dtype.kind != "f":
        raise declared.error(f"expected a float array [N, D], got {declared.dtype} {declared.shape}")
    if size < declared.header_len + declared.nbytes:
        raise declared.error(f"the header declares shape {declared.shape} {declared.dtype}: "
                             f"{_size(declared.nbytes)} of data, but the file holds {_size(size - declared.header_len)}"
                             " after its header (truncated, or a lying header)")
    return declared


def _map(path: str, declared: Declared) -> np.ndarray:  # [N, D], memory-mapped read-only
    """The checked .npy at `path` memory-mapped with its checked header (nothing read yet)."""
    if declared.nbytes == 0:
        return np.empty(declared.shape, declared.dtype)  # mmap refuses empty maps; the selector names it
    with _reading(declared.where, ".npy file"):
        return np.memmap(path, dtype=declared.dtype, mode="r", offset=declared.header_len, shape=declared.shape,
                         order="F" if declared.fortran_order else "C")


def _first_beyond_float32(array: np.ndarray) -> tuple[int, ...] | None:  # array: [M, ...] float
    """The index of the first finite value beyond float32's range, scanning blocks of rows
    (no full-size temporary); None if there is none."""
    rows = max(1, 2**22 // max(1, math.prod(array.shape[1:])))
    for start in range(0, array.shape[0], rows):
        block = array[start:start + rows]
        beyond = np.isfinite(block) & (np.abs(block) > FLOAT32_MAX)
        if beyond.any():
            at = np.unravel_index(int(np.argmax(beyond)), block.shape)
            return (start + int(at[0]), *(int(i) for i in at[1:]))
    return None


def check_float32_range(where: str, key: str, array: np.ndarray) -> None:  # array: [M, ...]
    """A float64 value beyond float32's range (e.g. 1e300) would become inf in the selector's
    float32 cast: an InputError naming the key and the first index. The common case costs a
    max and a min (no copy); NaN and inf are left to the selector's own check."""
    if array.dtype.kind != "f" or array.size == 0 or float(np.finfo(array.dtype).max) <= FLOAT32_MAX:
        return
    if not (array.max() > FLOAT32_MAX or array.min() < -FLOAT32_MAX):  # False with a NaN: the selector names it
        return
    at = _first_beyond_float32(array)
    if at is None:
        return
    place = f"row {at[0]}, column {at[1]}" if len(at) == 2 else f"index {at[0]}"
    raise InputError(f"{where}: {key}: {place} holds {float(array[at])!r}, beyond float32's range "
                     f"(+-{FLOAT32_MAX:.4g}); select computes in float32, where it would become inf: rescale or "
                     "remove such values")


def read_pool(input_path: str, embeddings_path: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of a selection problem: embeddings [N, D], labels [N], head_weight [C, D],
    head_bias [C] from the .npz `input_path`, or the embeddings memory-mapped from the .npy
    `embeddings_path`. Every header is checked (shapes, dtypes, zip sizes, memory; see the module
    docstring) before any array is read. Raises InputError (a ValueError) naming file and key."""
    where = f"--input {input_path!r}"
    magic = _sniff("--input", input_path)
    if magic.startswith(NPY_MAGIC):
        raise InputError(f"{where}: a single .npy array, not an .npz archive; pass the embeddings [N, D] .npy as "
                         "--embeddings, and an .npz with labels [N], head_weight [C, D] and head_bias [C] as --input")
    keys = POOL_KEYS if embeddings_path is None else POOL_KEYS[1:]
    with _reading(where, ".npz file"), zipfile.ZipFile(input_path) as zf:
        members = _npz_headers(zf, where, keys)
        in_memory = [declared for _, declared in members.values()]
        mapped = None if embeddings_path is None else _npy_header(embeddings_path)
        check_shapes(in_memory + ([] if mapped is None else [mapped]))
        check_memory(in_memory)
        pool = {}
        for key, (info, _) in members.items():
            with zf.open(info) as f:
                pool[key] = npy_format.read_array(f, allow_pickle=False)  # reads the declared bytes only
            check_float32_range(where, key, pool[key])
    if mapped is not None:
        pool["embeddings"] = _map(embeddings_path, mapped)
    return pool
