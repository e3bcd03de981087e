"""The `Dataset` every loader returns, and the two steps loaders share:
a seeded subset of rows and image normalisation."""
import dataclasses

import numpy as np

from alfamix_jax.experiment.data.validate import check_dataset


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare by identity, not elementwise
class Dataset:
    """A labelled train/test pair ready for training: normalised float32 inputs, int32 labels.

    Constructing one validates it (finite inputs, labels in [0, num_classes), non-empty splits,
    the same input shape in both splits), so a Dataset in hand is always usable.
    """

    name: str
    x_train: np.ndarray  # [N, *input_shape] float32, normalised
    y_train: np.ndarray  # [N] int32 in [0, num_classes)
    x_test: np.ndarray  # [M, *input_shape] float32
    y_test: np.ndarray  # [M] int32
    num_classes: int

    def __post_init__(self):
        check_dataset(self.name, self.x_train, self.y_train, self.x_test, self.y_test, self.num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def check_max_rows(max_train, max_test) -> None:
    """max_train / max_test must be None or an integer >= 1 (checked before any loading)."""
    for argname, value in (("max_train", max_train), ("max_test", max_test)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{argname} must be None or an integer >= 1, got {value!r}")


def subset_indices(num_rows: int, max_rows: int | None, *, seed: int, split: str, dataset: str) -> np.ndarray:
    """Row indices to keep from a split of `num_rows`: all of them when max_rows is None, else a
    seeded sample of max_rows without replacement, sorted so the source order is kept.

    Train and test draw from separate streams of the seed, so changing max_test never changes
    which training rows are picked.
    """
    if max_rows is None:
        return np.arange(num_rows)
    if max_rows > num_rows:
        raise ValueError(
            f"max_{split}={max_rows} is larger than the {num_rows} {split} rows of dataset {dataset!r}; "
            f"use at most {num_rows} or None for all"
        )
    stream = 0 if split == "train" else 1
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(num_rows, size=max_rows, replace=False))


def normalise_images(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 images [N, H, W, C] -> float32 (x / 255 - mean) / std, per channel (mean, std: length C)."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    x = images.astype(np.float32)
    x /= np.float32(255)  # as torchvision's ToTensor
    x -= mean
    x /= std
    return x
