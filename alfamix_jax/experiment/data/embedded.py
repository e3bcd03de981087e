"""scikit-learn's handwritten digits: 1797 8x8 images in 10 classes, shipped inside scikit-learn.

The default dataset: no download, no data_dir, loads in well under a second. Pixels are
integers 0..16; we divide by 16 so inputs lie in [0, 1] and do not standardise further
(the set is too small for a per-set mean/std to matter, and [0, 1] is easy to reason about).
The 80/20 train/test split is stratified and fixed (random_state=0), independent of `seed`,
so runs with different seeds are scored on the same 360 test images.
"""
import numpy as np

NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> x_train [1437, 8, 8, 1] float32 in [0, 1], y_train [1437] int32, x_test [360, 8, 8, 1], y_test [360]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16))[..., None]  # [1797, 8, 8, 1]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return x_train, y_train, x_test, y_test
