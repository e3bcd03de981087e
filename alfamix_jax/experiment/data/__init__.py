"""Datasets for the active-learning runs: one `load_dataset(name, ...)` -> `Dataset`.

`check_dataset_args` validates a name and its data_dir/path without loading anything, so the
runner can fail fast. Names and what data_dir / path mean for each are in `DATASETS`.
"""
import os

from alfamix_jax.experiment.data import embedded, local, tfds_source
from alfamix_jax.experiment.data.dataset import Dataset, check_max_rows, normalise_images, subset_indices

DATASETS = {
    "digits": "scikit-learn's 8x8 handwritten digits, shipped with it (1437 train / 360 test); no data_dir",
    "fashion_mnist": "Fashion-MNIST from its IDX files in data_dir (default /usr/share/datasets/fashion-mnist), "
    "prepared once into a TFDS array_record cache",
    "mnist": "TFDS 'mnist'; data_dir: a TFDS data dir with it prepared as array_record",
    "emnist_letters": "TFDS 'emnist/letters' (26 classes, labels 1..26 shifted to 0..25); data_dir as for mnist",
    "svhn": "TFDS 'svhn_cropped'; data_dir as for mnist",
    "cifar10": "TFDS 'cifar10'; data_dir as for mnist",
    "cifar100": "TFDS 'cifar100'; data_dir as for mnist",
    "fashion_mnist_tfds": "TFDS 'fashion_mnist'; data_dir as for mnist",
    "npz": "path: an .npz with x_train, y_train, x_test, y_test (optional num_classes)",
    "folder": "path: a directory train/<class>/*.png|jpg and test/<class>/*.png|jpg",
}
_USES_DATA_DIR = ("fashion_mnist", *tfds_source.PUBLIC_TFDS)
# How image pixels are standardised: (x / 255 - mean) / std with the dataset's own per-channel
# statistics, or with MNIST's (mean 0.1307, std 0.3081) whatever the dataset: the original code
# ran Fashion-MNIST through its MNIST handler, so reproducing its curves needs MNIST's.
NORMALISATIONS = {"dataset": None, "mnist": tfds_source.MNIST_MEAN_STD}
_NORMALISED = _USES_DATA_DIR  # the datasets read as raw uint8 images with known statistics
_USES_PATH = ("npz", "folder")

__all__ = ["DATASETS", "Dataset", "check_dataset_args", "load_dataset"]


def check_dataset_args(name: str, *, data_dir: str | None = None, path: str | None = None,
                       normalisation: str = "dataset", files: bool = True) -> None:
    """Validate a dataset name with its data_dir / path cheaply (no loading, no TFDS import).

    Raises ValueError for an unknown name, a data_dir or path the dataset does not take, a missing
    one it needs, or (files=True) a directory/file without the expected contents.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if data_dir is not None and name not in _USES_DATA_DIR:
        raise ValueError(f"dataset {name!r} takes no data_dir (got {data_dir!r}); only {', '.join(_USES_DATA_DIR)} do")
    if path is not None and name not in _USES_PATH:
        raise ValueError(f"dataset {name!r} takes no path (got {path!r}); only {', '.join(_USES_PATH)} do")
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r} is unknown; choose from {', '.join(NORMALISATIONS)}")
    if normalisation != "dataset" and name not in _NORMALISED:
        raise ValueError(f"normalisation {normalisation!r}: dataset {name!r} is not standardised with image "
                         f"statistics; only {', '.join(_NORMALISED)} take another normalisation than 'dataset'")
    if not files:
        return
    if name == "fashion_mnist":
        from alfamix_jax.experiment.data.fashion_mnist import DEFAULT_IDX_DIR
        from alfamix_jax.experiment.data.idx import find_idx_files

        if data_dir is None and not os.path.isdir(DEFAULT_IDX_DIR):
            raise ValueError(
                f"dataset 'fashion_mnist' reads the four Fashion-MNIST IDX files from data_dir, and the default "
                f"{DEFAULT_IDX_DIR} is absent; `apt install dataset-fashion-mnist` (Debian/Ubuntu) creates it, or "
                "pass data_dir=DIR holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
            )
        find_idx_files(data_dir or DEFAULT_IDX_DIR)
    elif name in tfds_source.PUBLIC_TFDS:
        tfds_source.check_prepared(name, data_dir)
    elif name == "npz":
        local.check_npz_path(path)
    elif name == "folder":
        local.list_folder(path)


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    path: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    normalisation: str = "dataset",
) -> Dataset:
    """Load dataset `name` as a validated `Dataset` (see DATASETS for the names).

    max_train / max_test keep a seeded random subset of that many rows (source order kept), for
    quick runs; a value above the split's size is an error. normalisation: "dataset" (its own
    statistics) or "mnist" (MNIST's, as the original's handler did; see NORMALISATIONS).
    cache_dir (fashion_mnist only): where the prepared array_record files go (default
    $ALFAMIX_JAX_TFDS_DIR or ~/.cache/alfamix-jax/tfds).
    """
    check_dataset_args(name, data_dir=data_dir, path=path, normalisation=normalisation)
    check_max_rows(max_train, max_test)
    if cache_dir is not None and name != "fashion_mnist":
        raise ValueError(f"cache_dir is only used by dataset 'fashion_mnist', not {name!r} (got {cache_dir!r})")

    def select(split: str, max_rows: int | None):
        return lambda num_rows: subset_indices(num_rows, max_rows, seed=seed, split=split, dataset=name)

    select_train, select_test = select("train", max_train), select("test", max_test)

    if name == "digits":
        x_train, y_train, x_test, y_test = embedded.load_digits_arrays()
        num_classes = embedded.NUM_CLASSES
    elif name == "fashion_mnist":
        from alfamix_jax.experiment.data import fashion_mnist
        from alfamix_jax.experiment.data.fashion_mnist_builder import NUM_CLASSES

        builder = fashion_mnist.prepare_fashion_mnist(data_dir or fashion_mnist.DEFAULT_IDX_DIR, cache_dir)
        images_train, y_train = fashion_mnist.load_fashion_mnist_split(builder, "train", select_train)
        images_test, y_test = fashion_mnist.load_fashion_mnist_split(builder, "test", select_test)
        mean, std = NORMALISATIONS[normalisation] or (fashion_mnist.MEAN, fashion_mnist.STD)
        x_train, x_test = normalise_images(images_train, mean, std), normalise_images(images_test, mean, std)
        return Dataset(name, x_train, y_train, x_test, y_test, NUM_CLASSES)
    elif name in tfds_source.PUBLIC_TFDS:
        spec = tfds_source.PUBLIC_TFDS[name]
        images_train, y_train = tfds_source.load_public_split(name, "train", data_dir, select_train)
        images_test, y_test = tfds_source.load_public_split(name, "test", data_dir, select_test)
        mean, std = NORMALISATIONS[normalisation] or (spec.mean, spec.std)
        x_train, x_test = normalise_images(images_train, mean, std), normalise_images(images_test, mean, std)
        return Dataset(name, x_train, y_train, x_test, y_test, spec.num_classes)
    elif name == "npz":
        x_train, y_train, x_test, y_test, num_classes = local.load_npz(path)
    else:  # folder
        classes, files = local.list_folder(path)
        train_rows = [files["train"][i] for i in select_train(len(files["train"]))]
        test_rows = [files["test"][i] for i in select_test(len(files["test"]))]
        mode = local.folder_mode(train_rows + test_rows)
        images_train, y_train, size = local.read_images(train_rows, mode, None)
        images_test, y_test, _ = local.read_images(test_rows, mode, size)
        x_train, x_test = local.standardise(images_train, images_test)
        return Dataset(name, x_train, y_train, x_test, y_test, len(classes))

    keep_train, keep_test = select_train(len(y_train)), select_test(len(y_test))
    return Dataset(name, x_train[keep_train], y_train[keep_train], x_test[keep_test], y_test[keep_test], num_classes)
