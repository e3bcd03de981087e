"""Public TFDS datasets read with `tfds.data_source` from a prepared array_record directory.

Random access without TensorFlow: TFDS's array_record data sources decode `Image`/`ClassLabel`
features with NumPy and Pillow. Preparing such a directory is a one-off that does need
TensorFlow for these builders (see `prepare_hint`). We never download.
"""
import dataclasses
import glob
import os

import numpy as np

CHUNK = 8192  # records per __getitems__ call: batched reads are ~30x faster than one at a time


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    tfds_name: str  # name (with config) in the TFDS catalogue
    num_classes: int
    image_shape: tuple[int, int, int]  # [H, W, C]
    mean: tuple[float, ...]  # per channel, of x / 255, as in the original's transforms.Normalize
    std: tuple[float, ...]
    label_offset: int = 0  # subtracted from the stored labels


MNIST_MEAN_STD = ((0.1307,), (0.3081,))
# Fashion-MNIST's own statistics (computed on its 60000 training images: mean 0.28604, std 0.35302).
FASHION_MNIST_MEAN_STD = ((0.2860,), (0.3530,))
_SVHN_MEAN_STD = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
_CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

PUBLIC_TFDS = {
    "mnist": TfdsSpec("mnist", 10, (28, 28, 1), *MNIST_MEAN_STD),
    # TFDS stores the 26 letters as 1..26 (ClassLabel of 37); the original also shifts to 0..25.
    # Images stay transposed, as in TFDS and torchvision (the original does not transpose either).
    "emnist_letters": TfdsSpec("emnist/letters", 26, (28, 28, 1), *MNIST_MEAN_STD, label_offset=1),
    "svhn": TfdsSpec("svhn_cropped", 10, (32, 32, 3), *_SVHN_MEAN_STD),
    "cifar10": TfdsSpec("cifar10", 10, (32, 32, 3), *_CIFAR_MEAN_STD),
    "cifar100": TfdsSpec("cifar100", 100, (32, 32, 3), *_CIFAR_MEAN_STD),
    "fashion_mnist_tfds": TfdsSpec("fashion_mnist", 10, (28, 28, 1), *FASHION_MNIST_MEAN_STD),
}


def prepare_hint(tfds_name: str) -> str:
    return (
        f"prepare it once with `pip install 'alfamix-jax[prepare]'` (TensorFlow, only for this step) and "
        f"`tfds build {tfds_name} --file_format=array_record --data_dir=DIR` (an existing TFRecord copy converts with "
        f"`tfds convert_format --root_data_dir=DIR --out_file_format=array_record`), then pass data_dir=DIR"
    )


def check_prepared(name: str, data_dir: str | None) -> None:
    """Cheap check that data_dir holds array_record train and test files for dataset `name`."""
    spec = PUBLIC_TFDS[name]
    if data_dir is None:
        raise ValueError(
            f"dataset {name!r} (TFDS {spec.tfds_name!r}) needs data_dir, a TFDS data directory with the dataset "
            f"prepared as array_record; {prepare_hint(spec.tfds_name)}"
        )
    dataset_dir = os.path.join(data_dir, *spec.tfds_name.split("/"))
    if not os.path.isdir(dataset_dir):
        raise ValueError(
            f"data_dir {data_dir!r} has no {spec.tfds_name!r} directory ({dataset_dir} is missing); "
            f"{prepare_hint(spec.tfds_name)}"
        )
    base = spec.tfds_name.split("/")[0]
    for split in ("train", "test"):
        if not glob.glob(os.path.join(dataset_dir, "*", f"{base}-{split}.array_record*")):
            tfrecords = glob.glob(os.path.join(dataset_dir, "*", f"{base}-{split}.tfrecord*"))
            kind = "only TFRecord files, which have no random access" if tfrecords else "no array_record files"
            raise ValueError(
                f"data_dir {data_dir!r}: {dataset_dir} has {kind} for the {split!r} split; "
                f"{prepare_hint(spec.tfds_name)}"
            )


def read_records(source, indices: np.ndarray, *, image_shape: tuple, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Read records `indices` of a TFDS data source in batches.

    -> images [n, *image_shape] uint8, labels [n] int64 (as stored).
    """
    images = np.empty((len(indices), *image_shape), np.uint8)
    labels = np.empty((len(indices),), np.int64)
    for start in range(0, len(indices), CHUNK):
        keys = [int(i) for i in indices[start : start + CHUNK]]
        for j, record in enumerate(source.__getitems__(keys), start):
            image = np.asarray(record["image"])
            if image.shape != image_shape or image.dtype != np.uint8:
                raise ValueError(
                    f"{what}: record {keys[j - start]} has a {image.dtype} image of shape {image.shape}; "
                    f"expected uint8 {image_shape}"
                )
            images[j] = image
            labels[j] = record["label"]
    return images, labels


def shift_labels(name: str, split: str, labels: np.ndarray) -> np.ndarray:
    """Stored labels [n] -> int32 [n] in [0, num_classes), with a clear error for any other value."""
    spec = PUBLIC_TFDS[name]
    lo, hi = spec.label_offset, spec.label_offset + spec.num_classes
    bad = (labels < lo) | (labels >= hi)
    if bad.any():
        raise ValueError(
            f"dataset {name!r} ({spec.tfds_name}) {split} split: stored labels must lie in [{lo}, {hi}), "
            f"found {int(labels[bad][0])} ({int(bad.sum())} value(s) outside); is data_dir the right dataset?"
        )
    return (labels - lo).astype(np.int32)


def open_split(name: str, split: str, data_dir: str):
    """tfds.data_source for one split, TFDS errors turned into a ValueError with the fix."""
    import tensorflow_datasets as tfds

    spec = PUBLIC_TFDS[name]
    try:
        return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types (NotImplementedError, AssertionError, ...)
        raise ValueError(
            f"dataset {name!r}: cannot open TFDS {spec.tfds_name!r} split {split!r} in data_dir {data_dir!r} "
            f"({type(e).__name__}: {e}); {prepare_hint(spec.tfds_name)}"
        ) from e


def load_public_split(name: str, split: str, data_dir: str, select) -> tuple[np.ndarray, np.ndarray]:
    """-> uint8 images [n, H, W, C] and int32 labels [n] of `split`, rows chosen by `select(num_rows)`."""
    spec = PUBLIC_TFDS[name]
    source = open_split(name, split, data_dir)
    indices = select(len(source))
    images, labels = read_records(
        source, indices, image_shape=spec.image_shape, what=f"dataset {name!r} ({spec.tfds_name}) {split}"
    )
    return images, shift_labels(name, split, labels)
