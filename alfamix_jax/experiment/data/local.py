"""User data: an .npz of arrays, or a folder of images, one sub-folder per class.

npz: keys x_train, y_train, x_test, y_test (optional scalar num_classes, else max label + 1),
  read without pickle. x is used as stored (cast to float32): normalise before saving.
folder: path/{train,test}/<class name>/*.png|*.jpg|*.jpeg; classes are the train sub-folders
  sorted by name (label i = i-th name). Images must share one size; they are read as grey (1
  channel) when every image is grey, else RGB, scaled to [0, 1] and standardised per channel
  with the mean and std of the training images loaded.
"""
import os
import zipfile

import numpy as np

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def check_npz_path(path: str | None) -> None:
    """Cheap: the file exists, is an .npz and has the four keys (reads only the zip directory)."""
    if path is None:
        raise ValueError(f"dataset 'npz' needs path, an .npz file with keys {', '.join(NPZ_KEYS)}")
    if not os.path.isfile(path):
        raise ValueError(f"path {path!r}: no such file (dataset 'npz' needs an .npz with keys {', '.join(NPZ_KEYS)})")
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"path {path!r}: not a readable .npz archive ({e})") from e
    missing = [k for k in NPZ_KEYS if k not in names]
    if missing:
        raise ValueError(f"path {path!r}: missing key(s) {', '.join(missing)}; expected {', '.join(NPZ_KEYS)}")


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """-> x_train [N, ...] float32, y_train [N] int32, x_test [M, ...] float32, y_test [M] int32, num_classes."""
    check_npz_path(path)
    with np.load(path, allow_pickle=False) as npz:
        try:
            arrays = {k: npz[k] for k in NPZ_KEYS}
            num_classes = npz["num_classes"] if "num_classes" in npz.files else None
        except ValueError as e:  # object arrays need pickle
            raise ValueError(f"path {path!r}: holds an object array ({e}); store numeric arrays") from e
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "iuf":
            raise ValueError(f"path {path!r}: x_{split} must be numeric (int/uint/float), got dtype {x.dtype}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"path {path!r}: y_{split} must hold integer labels, got dtype {y.dtype}")
        if y.ndim != 1:
            raise ValueError(f"path {path!r}: y_{split} must have shape [N], got {y.shape}")
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"path {path!r}: x_{split} must have shape [N, *input_shape] with N = len(y_{split}) = {y.shape[0]}, "
                f"got {x.shape}"
            )
        if y.size and y.min() < 0:
            raise ValueError(f"path {path!r}: y_{split} has negative label {int(y.min())}; labels are 0..C-1")
    if num_classes is None:
        num_classes = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
    else:
        if num_classes.shape != () or num_classes.dtype.kind not in "iu":
            raise ValueError(f"path {path!r}: num_classes must be a scalar integer, got {num_classes!r}")
        num_classes = int(num_classes)
    for split in ("train", "test"):
        y = arrays[f"y_{split}"]
        if y.size and y.max() >= num_classes:
            raise ValueError(
                f"path {path!r}: y_{split} has label {int(y.max())} but num_classes is {num_classes}; "
                "labels must lie in [0, num_classes)"
            )
    cast = {k: v.astype(np.float32 if k.startswith("x") else np.int32) for k, v in arrays.items()}
    return cast["x_train"], cast["y_train"], cast["x_test"], cast["y_test"], num_classes


def list_folder(path: str | None) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Cheap listing: -> class names, {"train": [(file, label)], "test": [...]}; raises ValueError if unusable."""
    if path is None:
        raise ValueError("dataset 'folder' needs path, a directory with train/<class>/*.png and test/<class>/*.png")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(path, split)):
            raise ValueError(
                f"path {path!r}: no {split}/ sub-directory; expected {path}/train/<class>/*.png and "
                f"{path}/test/<class>/*.png (.png, .jpg or .jpeg)"
            )
    train_dir = os.path.join(path, "train")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if len(classes) < 2:
        raise ValueError(f"path {path!r}: train/ must hold at least 2 class sub-directories, found {classes}")
    files = {}
    for split in ("train", "test"):
        split_dir = os.path.join(path, split)
        names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(f"path {path!r}: test/ has class(es) {unknown} that train/ lacks; classes are {classes}")
        rows = []
        for label, name in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            if not os.path.isdir(class_dir):
                continue
            images = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not images and split == "train":
                raise ValueError(f"path {path!r}: train/{name}/ holds no .png/.jpg/.jpeg image")
            rows += [(os.path.join(class_dir, f), label) for f in images]
        if not rows:
            raise ValueError(f"path {path!r}: {split}/ holds no .png/.jpg/.jpeg image")
        files[split] = rows
    return classes, files


def read_images(rows: list[tuple[str, int]], mode: str, size: tuple[int, int] | None):
    """-> images [n, H, W, C] uint8, labels [n] int32, size (W, H); every image must have `size`."""
    from PIL import Image

    images, labels = [], []
    for file, label in rows:
        try:
            with Image.open(file) as img:
                if size is None:
                    size = img.size
                if img.size != size:
                    raise ValueError(
                        f"image {file!r} is {img.size[0]}x{img.size[1]}, others {size[0]}x{size[1]}; resize them"
                    )
                images.append(np.asarray(img.convert(mode), np.uint8))
        except OSError as e:
            raise ValueError(f"image {file!r}: cannot be read ({e})") from e
        labels.append(label)
    x = np.stack(images)
    return (x[..., None] if x.ndim == 3 else x), np.asarray(labels, np.int32), size


def folder_mode(rows: list[tuple[str, int]]) -> str:
    """"L" when every image is grey, else "RGB" (reads only the headers)."""
    from PIL import Image

    for file, _ in rows:
        try:
            with Image.open(file) as img:
                if img.mode not in _GREY_MODES:
                    return "RGB"
        except OSError as e:
            raise ValueError(f"image {file!r}: cannot be read ({e})") from e
    return "L"


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, H, W, C] pair -> float32 (x / 255 - mean) / std with the train split's per-channel stats."""
    train = x_train.astype(np.float32) / np.float32(255)
    test = x_test.astype(np.float32) / np.float32(255)
    mean = train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = train.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = np.where(std > 0, std, np.float32(1))  # a constant channel stays constant (0), not NaN
    return (train - mean) / std, (test - mean) / std
