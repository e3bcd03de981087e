"""alfamix_jax.experiment.data: every loader on data the test writes itself (never a download), the errors,
and one integration test on the real Fashion-MNIST IDX files where the Debian package is installed."""
import functools
import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from alfamix_jax.experiment.data import DATASETS, Dataset, check_dataset_args, load_dataset
from alfamix_jax.experiment.data.dataset import subset_indices
from alfamix_jax.experiment.data.idx import read_idx
from alfamix_jax.experiment.data.tfds_source import PUBLIC_TFDS

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


# ---------------------------------------------------------------- helpers


def write_idx(path, array: np.ndarray, *, gz: bool) -> None:
    """Write `array` as an IDX file (big-endian), gzip-compressed or raw."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def write_fashion_idx(directory, *, n_train=30, n_test=10, gz=True, seed=0):
    """Tiny Fashion-MNIST-shaped IDX files; returns the (images, labels) written per split."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images, gz=gz)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, gz=gz)
        out[prefix] = (images, labels)
    return out


def indexed_images(n: int, shape, seed: int) -> np.ndarray:
    """uint8 images [n, *shape] whose first pixel is the row index (to find rows after TFDS shuffles)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


def write_fake_tfds(data_dir, tfds_name: str, splits: dict) -> None:
    """Prepare a real array_record TFDS directory for a public dataset from our own arrays.

    Subclasses the registered builder (same name, version, config and features, so
    `tfds.data_source(tfds_name, data_dir=...)` reads it as the real thing) and replaces only the
    generator. Images go in as PIL images, which TFDS PNG-encodes without TensorFlow.
    """
    import tensorflow_datasets as tfds
    from etils import epath
    from PIL import Image

    name, _, config = tfds_name.partition("/")
    real = tfds.builder_cls(name)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
        images, labels = splits[split]
        for i in range(len(labels)):
            img = images[i]
            pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
            record = {"image": pil, "label": int(labels[i])}
            for key in self.info.features.keys():  # cifar's extra fields
                if key not in record:
                    record[key] = f"{split}_{i}" if key == "id" else 0
            yield i, record

    namespace = dict(
        name=real.name,
        code_path=epath.Path(__file__),
        _split_generators=_split_generators,
        _generate_examples=_generate_examples,
    )
    fake = type(real.__name__, (real,), namespace, skip_registration=True)
    fake(data_dir=str(data_dir), config=config or None, file_format="array_record").download_and_prepare()


def make_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.normal(size=(20, 5)).astype(np.float32),
        y_train=np.arange(20) % 3,
        x_test=rng.normal(size=(6, 5)).astype(np.float32),
        y_test=np.arange(6) % 3,
    )
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def write_png_folder(root, classes, *, per_class=(4, 2), size=(6, 5), mode="L", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for name in classes:
            d = os.path.join(root, split, name)
            os.makedirs(d, exist_ok=True)
            for i in range(count):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(os.path.join(d, f"{i}.png"))


# ---------------------------------------------------------------- names, Dataset, subsets


def test_names_and_unknown_name():
    assert {"digits", "fashion_mnist", "npz", "folder", *PUBLIC_TFDS} == set(DATASETS)
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*digits"):
        check_dataset_args("imagenet")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("MNIST")


def test_dataset_validates_itself():
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1], np.int32)
    assert Dataset("t", x, y, x, y, 2).input_shape == (3,)
    with pytest.raises(ValueError, match="x_train must be float32"):
        Dataset("t", x.astype(np.float64), y, x, y, 2)
    with pytest.raises(ValueError, match="y_test must be int32"):
        Dataset("t", x, y, x, y.astype(np.int64), 2)
    with pytest.raises(ValueError, match=r"y_train must lie in \[0, 2\)"):
        Dataset("t", x, y + 1, x, y, 2)
    with pytest.raises(ValueError, match="same input shape"):
        Dataset("t", x, y, np.zeros((4, 2), np.float32), y, 2)


def test_subset_indices_seeded_sorted_and_bounded():
    a = subset_indices(100, 10, seed=1, split="train", dataset="d")
    assert np.array_equal(a, subset_indices(100, 10, seed=1, split="train", dataset="d"))
    assert not np.array_equal(a, subset_indices(100, 10, seed=2, split="train", dataset="d"))
    assert not np.array_equal(a, subset_indices(100, 10, seed=1, split="test", dataset="d"))
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 100
    assert np.array_equal(subset_indices(7, None, seed=0, split="test", dataset="d"), np.arange(7))
    with pytest.raises(ValueError, match=r"max_train=101 is larger than the 100 train rows"):
        subset_indices(100, 101, seed=0, split="train", dataset="d")


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_split_and_subset():
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 8, 8, 1) and d.x_test.shape == (360, 8, 8, 1)
    assert d.num_classes == 10 and d.input_shape == (8, 8, 1)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert np.bincount(d.y_test, minlength=10).min() >= 35  # stratified: 35-37 of each digit
    # The split is fixed, whatever the seed; only subsets depend on it.
    assert np.array_equal(load_dataset("digits", seed=5).x_test, d.x_test)
    sub = load_dataset("digits", max_train=100, max_test=50, seed=3)
    assert sub.x_train.shape == (100, 8, 8, 1) and sub.x_test.shape == (50, 8, 8, 1)
    keep = subset_indices(1437, 100, seed=3, split="train", dataset="digits")
    assert np.array_equal(sub.x_train, d.x_train[keep]) and np.array_equal(sub.y_train, d.y_train[keep])
    other = load_dataset("digits", max_train=100, seed=4)
    assert not np.array_equal(other.y_train, sub.y_train) or not np.array_equal(other.x_train, sub.x_train)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"max_train=2000 is larger than the 1437 train rows"):
        load_dataset("digits", max_train=2000)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_test must be None or an integer >= 1"):
            load_dataset("digits", max_test=bad)
    with pytest.raises(ValueError, match="'digits' takes no path"):
        check_dataset_args("digits", path="x.npz")
    with pytest.raises(ValueError, match="'digits' takes no data_dir"):
        check_dataset_args("digits", data_dir="/tmp")
    with pytest.raises(ValueError, match="cache_dir is only used by dataset 'fashion_mnist'"):
        load_dataset("digits", cache_dir="/tmp")


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 4).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=dtype)
    write_idx(tmp_path / "a", a, gz=gz)
    b = read_idx(str(tmp_path / "a"))
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape and np.array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(tmp_path / "junk"))
    write_idx(tmp_path / "short", np.zeros((3, 4), np.uint8), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"header says shape \(3, 4\)"):
        read_idx(str(tmp_path / "short"))


# ---------------------------------------------------------------- fashion_mnist (IDX -> TFDS builder)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_keeps_order_and_normalises(tmp_path, gz):
    written = write_fashion_idx(tmp_path / "idx", gz=gz)
    d = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), cache_dir=str(tmp_path / "cache"))
    assert (d.x_train.shape, d.x_test.shape, d.num_classes) == ((30, 28, 28, 1), (10, 28, 28, 1), 10)
    for x, y, prefix in ((d.x_train, d.y_train, "train"), (d.x_test, d.y_test, "t10k")):
        images, labels = written[prefix]
        expected = (images[..., None].astype(np.float64) / 255 - FASHION_MEAN) / FASHION_STD
        np.testing.assert_allclose(x, expected, atol=1e-5)  # record i = IDX row i
        assert np.array_equal(y, labels)
    mnist = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), cache_dir=str(tmp_path / "cache"),
                         normalisation="mnist")  # the original's MNIST handler
    images, _ = written["train"]
    np.testing.assert_allclose(mnist.x_train, (images[..., None] / 255 - 0.1307) / 0.3081, atol=1e-5)
    assert np.array_equal(mnist.y_train, d.y_train)


def test_normalisation_is_checked_before_loading(tmp_path):
    with pytest.raises(ValueError, match="normalisation 'imagenet' is unknown; choose from dataset, mnist"):
        check_dataset_args("fashion_mnist", data_dir=str(tmp_path), normalisation="imagenet")
    with pytest.raises(ValueError, match="normalisation 'mnist': dataset 'digits' is not standardised"):
        load_dataset("digits", normalisation="mnist")


def test_fashion_mnist_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    from alfamix_jax.experiment.data.fashion_mnist_builder import FashionMnistIdx

    write_fashion_idx(tmp_path / "idx", seed=0)
    cache = tmp_path / "cache"
    first = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), cache_dir=str(cache), max_train=5, seed=1)

    def no_prepare(*args, **kwargs):
        raise AssertionError("prepared again instead of reusing the cache")

    monkeypatch.setattr(FashionMnistIdx, "download_and_prepare", no_prepare)
    again = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), cache_dir=str(cache), max_train=5, seed=1)
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_train, again.y_train)
    # Other IDX content gets its own cache entry (so it is prepared, here refused by the patch).
    write_fashion_idx(tmp_path / "idx2", seed=1)
    with pytest.raises(AssertionError, match="prepared again"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx2"), cache_dir=str(cache))
    # The environment variable picks the cache when no argument does.
    monkeypatch.setenv("ALFAMIX_JAX_TFDS_DIR", str(cache))
    env = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), max_train=5, seed=1)
    assert np.array_equal(env.x_train, first.x_train)


def test_fashion_mnist_recovers_from_a_killed_run(tmp_path):
    from alfamix_jax.experiment.data.fashion_mnist import idx_digest
    from alfamix_jax.experiment.data.idx import find_idx_files

    written = write_fashion_idx(tmp_path / "idx")
    root = tmp_path / "cache" / f"fashion_mnist_idx-{idx_digest(find_idx_files(str(tmp_path / 'idx')))}"
    stale = root / "fashion_mnist_idx" / "incomplete.ABC123_1.0.0"  # what a killed preparation leaves
    stale.mkdir(parents=True)
    (stale / "fashion_mnist_idx-train.array_record-00000-of-00001").write_bytes(b"half written")
    d = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), cache_dir=str(tmp_path / "cache"))
    assert not stale.exists()
    assert np.array_equal(d.y_train, written["train"][1])


def test_fashion_mnist_finished_by_another_process_meanwhile(tmp_path, monkeypatch):
    """The interleaving the two-process test below hits now and then, made certain: this
    process makes its builder, then another process completes the cache before this one
    asks whether it is prepared. TFDS reads the splits' info when a builder is made, so the
    builder returned must be made after that (a stale one opened no split: KeyError 'train')."""
    import tensorflow_datasets as tfds

    from alfamix_jax.experiment.data.fashion_mnist_builder import FashionMnistIdx

    written = write_fashion_idx(tmp_path / "idx")
    is_prepared = FashionMnistIdx.is_prepared
    finished = []

    def other_process_finishes_first(self):
        if not finished:
            finished.append(True)
            other = FashionMnistIdx(data_dir=self.data_dir_root, file_format="array_record")
            other.download_and_prepare(download_dir=os.path.join(self.data_dir_root, "downloads"),
                                       download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "idx")))
        return is_prepared(self)

    monkeypatch.setattr(FashionMnistIdx, "is_prepared", other_process_finishes_first)
    d = load_dataset("fashion_mnist", data_dir=str(tmp_path / "idx"), cache_dir=str(tmp_path / "cache"))
    assert finished and np.array_equal(d.y_train, written["train"][1])


def test_fashion_mnist_two_processes_prepare_one_cache(tmp_path):
    write_fashion_idx(tmp_path / "idx")
    script = (
        "import sys, numpy as np\n"
        "from alfamix_jax.experiment.data import load_dataset\n"
        "d = load_dataset('fashion_mnist', data_dir=sys.argv[1], cache_dir=sys.argv[2])\n"
        "print('sum', float(np.abs(d.x_train).sum()), int(d.y_train.sum()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", script, str(tmp_path / "idx"), str(tmp_path / "cache")]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    sums = [next(line for line in out.splitlines() if line.startswith("sum")) for out, _ in outs]
    assert sums[0] == sums[1]
    versions = list((tmp_path / "cache").glob("*/fashion_mnist_idx/*"))
    assert [v.name for v in versions] == ["1.0.0"]  # one prepared copy, no incomplete.* left


def test_fashion_mnist_idx_dir_errors(tmp_path, monkeypatch):
    import alfamix_jax.experiment.data.fashion_mnist as fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEFAULT_IDX_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(ValueError, match=r"default .*not-installed is absent; `apt install dataset-fashion-mnist`"):
        load_dataset("fashion_mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"lacks the Fashion-MNIST IDX file\(s\) train-images-idx3-ubyte"):
        check_dataset_args("fashion_mnist", data_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not a directory"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "missing"), cache_dir=str(tmp_path / "c"))
    written = write_fashion_idx(tmp_path / "bad")
    write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte.gz", written["train"][1][:-1], gz=True)
    with pytest.raises(ValueError, match="30 images, 29 labels"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "bad"), cache_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------- public TFDS names


@pytest.mark.parametrize("name", sorted(PUBLIC_TFDS))
def test_public_tfds_from_prepared_array_record(tmp_path, name):
    spec = PUBLIC_TFDS[name]
    n = {"train": 24, "test": 8}
    splits = {
        s: (indexed_images(k, spec.image_shape, seed), np.arange(k) % spec.num_classes + spec.label_offset)
        for seed, (s, k) in enumerate(n.items())
    }
    write_fake_tfds(tmp_path, spec.tfds_name, splits)
    check_dataset_args(name, data_dir=str(tmp_path))
    d = load_dataset(name, data_dir=str(tmp_path))
    assert d.num_classes == spec.num_classes and d.input_shape == spec.image_shape
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        images, labels = splits[split]
        pixels = np.rint((x.astype(np.float64) * std + mean) * 255).astype(int)
        rows = pixels[:, 0, 0, 0]  # TFDS shuffles records: find each row by its index pixel
        assert sorted(rows) == list(range(n[split]))
        np.testing.assert_allclose(x, (images[rows] / 255 - mean) / std, atol=1e-5)
        assert np.array_equal(y, labels[rows] - spec.label_offset)  # emnist letters 1..26 -> 0..25
    sub = load_dataset(name, data_dir=str(tmp_path), max_train=5, max_test=3, seed=2)
    assert sub.x_train.shape[0] == 5 and sub.x_test.shape[0] == 3
    with pytest.raises(ValueError, match="max_train=25 is larger than the 24 train rows"):
        load_dataset(name, data_dir=str(tmp_path), max_train=25)


def test_emnist_letters_rejects_label_zero(tmp_path):
    images = indexed_images(4, (28, 28, 1), 0)
    write_fake_tfds(tmp_path, "emnist/letters", {s: (images, np.array([1, 2, 0, 26])) for s in ("train", "test")})
    with pytest.raises(ValueError, match=r"stored labels must lie in \[1, 27\), found 0"):
        load_dataset("emnist_letters", data_dir=str(tmp_path))


def test_public_tfds_data_dir_errors(tmp_path):
    with pytest.raises(ValueError, match=r"needs data_dir.*tfds build cifar10 --file_format=array_record"):
        check_dataset_args("cifar10")
    with pytest.raises(ValueError, match=r"needs data_dir.*tfds build svhn_cropped"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match=r"has no 'mnist' directory.*tfds build mnist"):
        check_dataset_args("mnist", data_dir=str(tmp_path))
    version_dir = tmp_path / "mnist" / "3.0.1"
    version_dir.mkdir(parents=True)
    for split in ("train", "test"):
        (version_dir / f"mnist-{split}.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(ValueError, match="only TFRecord files.*tfds convert_format"):
        check_dataset_args("mnist", data_dir=str(tmp_path))


def _bound_mock():
    """TFDS 4.9.10's mock data source assigns a plain function to `__getitems__`, which MagicMock does not
    bind (it is not a standard dunder), so batched reads fail under mock_data; bind it here."""
    from tensorflow_datasets.testing import mocking

    class BoundMock(mocking.PickableDataSourceMock):
        def __setattr__(self, name, value):
            if name == "__getitems__" and isinstance(value, functools.partial):
                value = functools.partial(value, self)
            super().__setattr__(name, value)

    return BoundMock()


@pytest.mark.parametrize("name", ["mnist", "svhn", "cifar10", "cifar100", "fashion_mnist_tfds"])
def test_public_tfds_with_mock_data(tmp_path, name):
    import tensorflow_datasets as tfds

    spec = PUBLIC_TFDS[name]
    base = spec.tfds_name.split("/")[0]
    version_dir = tmp_path / spec.tfds_name / "1.0.0"  # passes check_dataset_args; mock_data reads nothing
    version_dir.mkdir(parents=True)
    for split in ("train", "test"):
        (version_dir / f"{base}-{split}.array_record-00000-of-00001").write_bytes(b"")
    policy = tfds.testing.MockPolicy.USE_CODE
    with tfds.testing.mock_data(num_examples=9, policy=policy, mock_array_record_data_source=_bound_mock()):
        d = load_dataset(name, data_dir=str(tmp_path), max_test=4)
    assert d.x_train.shape == (9, *spec.image_shape) and d.x_test.shape == (4, *spec.image_shape)
    assert d.num_classes == spec.num_classes and d.y_train.max() < spec.num_classes


# ---------------------------------------------------------------- npz


def test_npz_loads_as_stored(tmp_path):
    arrays = make_npz(tmp_path / "d.npz")
    d = load_dataset("npz", path=str(tmp_path / "d.npz"))
    assert d.num_classes == 3 and d.input_shape == (5,)
    assert np.array_equal(d.x_train, arrays["x_train"]) and np.array_equal(d.y_test, arrays["y_test"])
    assert d.y_train.dtype == np.int32
    make_npz(tmp_path / "e.npz", num_classes=np.int64(7))
    assert load_dataset("npz", path=str(tmp_path / "e.npz"), max_train=4).num_classes == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(x_train=np.zeros(20, np.float32)), r"x_train must have shape \[N, \*input_shape\]"),
        (dict(x_train=np.zeros((19, 5), np.float32)), r"x_train must have shape .* N = len\(y_train\) = 20"),
        (dict(y_train=np.zeros((20, 1), int)), r"y_train must have shape \[N\]"),
        (dict(x_test=np.zeros((6, 4), np.float32)), "same input shape"),
        (dict(x_test=np.full((6, 5), np.nan, np.float32)), r"x_test contains 30 NaN/inf"),
        (dict(y_train=np.arange(20) - 1), "y_train has negative label -1"),
        (dict(y_test=np.arange(6), num_classes=np.int64(3)), r"y_test has label 5 but num_classes is 3"),
        (dict(y_train=np.zeros(20, np.float32)), "y_train must hold integer labels"),
        (dict(y_test=None), "missing key.*y_test"),
        (dict(x_train=np.array(["a"] * 20)), "x_train must be numeric"),
    ],
)
def test_npz_errors(tmp_path, overrides, message):
    make_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        load_dataset("npz", path=str(tmp_path / "bad.npz"))


def test_npz_path_errors(tmp_path):
    with pytest.raises(ValueError, match="'npz' needs path"):
        check_dataset_args("npz")
    with pytest.raises(ValueError, match="no such file"):
        check_dataset_args("npz", path=str(tmp_path / "none.npz"))
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset("npz", path=str(tmp_path / "x.npz"))
    np.savez(tmp_path / "obj.npz", x_train=np.array([None] * 3), y_train=[0], x_test=[[0.0]], y_test=[0])
    with pytest.raises(ValueError, match="object array"):
        load_dataset("npz", path=str(tmp_path / "obj.npz"))


# ---------------------------------------------------------------- folder


def test_folder_grey_and_rgb(tmp_path):
    write_png_folder(tmp_path / "g", ["cat", "ant", "bee"])
    d = load_dataset("folder", path=str(tmp_path / "g"))
    assert (d.num_classes, d.input_shape, d.x_train.shape[0], d.x_test.shape[0]) == (3, (5, 6, 1), 12, 6)
    assert np.array_equal(np.bincount(d.y_train), [4, 4, 4])  # classes sorted: ant=0, bee=1, cat=2
    from PIL import Image

    files = [tmp_path / "g" / "train" / c / f"{i}.png" for c in ("ant", "bee", "cat") for i in range(4)]
    raw = np.stack([np.asarray(Image.open(f)) for f in files])[..., None] / 255  # [12, 5, 6, 1], label order
    np.testing.assert_allclose(d.x_train, (raw - raw.mean()) / raw.std(), atol=1e-5)  # train-set standardised
    write_png_folder(tmp_path / "c", ["a", "b"], mode="RGB")
    rgb = load_dataset("folder", path=str(tmp_path / "c"), max_train=3, seed=1)
    assert rgb.input_shape == (5, 6, 3) and rgb.x_train.shape[0] == 3


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="'folder' needs path"):
        check_dataset_args("folder")
    (tmp_path / "a" / "train" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="no test/ sub-directory"):
        check_dataset_args("folder", path=str(tmp_path / "a"))
    write_png_folder(tmp_path / "b", ["x", "y"])
    (tmp_path / "b" / "test" / "z").mkdir()
    with pytest.raises(ValueError, match=r"class\(es\) \['z'\] that train/ lacks"):
        check_dataset_args("folder", path=str(tmp_path / "b"))
    write_png_folder(tmp_path / "c", ["x", "y"])
    write_png_folder(tmp_path / "c2", ["x"], size=(7, 7), per_class=(1, 0))
    os.replace(tmp_path / "c2" / "train" / "x" / "0.png", tmp_path / "c" / "train" / "y" / "9.png")
    with pytest.raises(ValueError, match=r"is 7x7, others 6x5"):
        load_dataset("folder", path=str(tmp_path / "c"))


# ---------------------------------------------------------------- the real Fashion-MNIST


def test_real_fashion_mnist(tmp_path_factory):
    if not os.path.isdir(REAL_FASHION_MNIST):
        pytest.skip(f"{REAL_FASHION_MNIST} absent (Debian package dataset-fashion-mnist not installed)")
    cache = os.environ.get("ALFAMIX_JAX_TFDS_DIR") or str(tmp_path_factory.mktemp("tfds"))
    d = load_dataset("fashion_mnist", cache_dir=cache)
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.num_classes == 10
    assert np.array_equal(np.bincount(d.y_train), [6000] * 10)
    assert np.array_equal(np.bincount(d.y_test), [1000] * 10)
    # Normalised with Fashion-MNIST's own statistics: train mean ~0, std ~1, pixels 0 and 255 both occur.
    assert abs(float(d.x_train.mean(dtype=np.float64))) < 1e-3
    assert abs(float(d.x_train.std(dtype=np.float64)) - 1) < 1e-3
    extremes = [-FASHION_MEAN / FASHION_STD, (1 - FASHION_MEAN) / FASHION_STD]  # about -0.810, 2.023
    np.testing.assert_allclose([d.x_train.min(), d.x_train.max()], extremes, rtol=1e-6)
    # Record order is the IDX order (as torchvision reads it).
    images = read_idx(os.path.join(REAL_FASHION_MNIST, "t10k-images-idx3-ubyte.gz"))
    np.testing.assert_allclose(d.x_test[:500, ..., 0], (images[:500] / 255 - FASHION_MEAN) / FASHION_STD, atol=1e-5)
