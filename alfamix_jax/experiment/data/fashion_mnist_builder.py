"""A TFDS builder that turns the four Fashion-MNIST IDX files into array_record files.

TensorFlow is not needed: the features are plain `Tensor`s (uint8 image, int64 label), the
files are array_record, and the generator reads the IDX files with NumPy. Records keep the
IDX order (shuffling disabled), so record i is row i of the IDX files, as torchvision (and so
the original ALFA-Mix code) orders them. The builder skips TFDS's global registry: it is only
ever constructed directly by `alfamix_jax.experiment.data.fashion_mnist`.
"""
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from alfamix_jax.experiment.data.idx import find_idx_files, read_image_label_pair

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST (60000 train / 10000 test, 28x28 grey, 10 classes) from local IDX files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "IDX files -> array_record, IDX order kept."}
    # TFDS 4.9.10 derives code_path through `importlib_resources`, a backport it only installs on
    # Python < 3.9; naming the file here avoids that import (no checksums file sits next to it).
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (gzip or raw) in the manual_dir. On Debian/Ubuntu, "
        "`apt install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST read from its IDX files (Xiao, Rasul and Vollgraf, 2017).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        files = find_idx_files(str(dl_manager.manual_dir))
        return {split: self._generate_examples(*paths) for split, paths in files.items()}

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_image_label_pair(images_path, labels_path)
        if images.shape[1:] != IMAGE_SHAPE[:2]:
            raise ValueError(f"IDX file {images_path!r}: expected 28x28 images, got {images.shape[1:]}")
        if labels.max(initial=0) >= NUM_CLASSES:
            raise ValueError(f"IDX file {labels_path!r}: labels must be in [0, 10), found {int(labels.max())}")
        images = images[..., None]  # [N, 28, 28, 1]
        for i in range(labels.shape[0]):
            yield i, {"image": images[i], "label": int(labels[i])}
