"""Checks on loaded arrays, shared by every loader (and by `Dataset` itself).

Each error names the dataset, the split array, what was seen and what was
expected, so a bad file is found from the message alone.
"""
import numpy as np


def check_split(dataset: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Validate one split: x [N, *input_shape] float32, finite, N >= 1; y [N] int32 in [0, num_classes).

    `split` is "train" or "test"; the arrays are named x_<split> / y_<split> in messages.
    """
    xname, yname = f"x_{split}", f"y_{split}"
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise ValueError(
            f"dataset {dataset!r}: {xname}/{yname} must be NumPy arrays, got {type(x).__name__}/{type(y).__name__}"
        )
    if x.dtype != np.float32:
        raise ValueError(f"dataset {dataset!r}: {xname} must be float32, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(
            f"dataset {dataset!r}: {xname} must have shape [N, *input_shape] with N >= 1 and no empty axis, "
            f"got {x.shape}"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"dataset {dataset!r}: {yname} must have shape ({x.shape[0]},) to match {xname} {x.shape}, got {y.shape}"
        )
    if y.dtype != np.int32:
        raise ValueError(f"dataset {dataset!r}: {yname} must be int32, got dtype {y.dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError(
            f"dataset {dataset!r}: {xname} contains {int(finite.size - finite.sum())} NaN/inf value(s); "
            "remove or impute them"
        )
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(
            f"dataset {dataset!r}: {yname} must lie in [0, {num_classes}); {int(bad.sum())} value(s) outside, "
            f"e.g. {int(y[bad][0])}"
        )


def check_dataset(dataset: str, x_train, y_train, x_test, y_test, num_classes) -> None:
    """Validate both splits and that they agree on the input shape."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"dataset {dataset!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    check_split(dataset, "train", x_train, y_train, num_classes)
    check_split(dataset, "test", x_test, y_test, num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"dataset {dataset!r}: x_train rows have shape {x_train.shape[1:]} but x_test rows {x_test.shape[1:]}; "
            "both splits need the same input shape"
        )
