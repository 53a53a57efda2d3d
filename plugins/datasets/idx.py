"""``idx-images``: MNIST-format idx files (``train-images-idx3-ubyte.gz`` …) as an image–caption dataset,
each image captioned with its class name through templates ("a photo of a sneaker.").

Fashion-MNIST, real offline image data, is Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``), which puts the four files in
``/usr/share/datasets/fashion-mnist``. The idx format (LeCun et al.): a big-endian header — two zero
bytes, a type byte (``0x08``: unsigned bytes), the number of dimensions, then each dimension as a
4-byte integer — followed by the values in row-major order; files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from harness import hookimpl
from harness.data import Dataset, DatasetInfo, Split
from harness.errors import ConfigError, EmptySplitError, MissingDataError
from harness.sources import ResizedImages
from harness_plugins.datasets.common import caption_vocab, positive, typed_params

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("Fashion-MNIST: `apt-get install dataset-fashion-mnist` puts the four idx files in "
                f"{FASHION_MNIST_DIR}")
#: class names of the two usual idx datasets, in label order, as captions use them
CLASS_SETS = {
    "fashion-mnist": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"],
    "mnist": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path, field: str = "directory") -> np.ndarray:
    """The array in an idx file (gzip-compressed or not); a malformed file is a :class:`ConfigError`
    naming it."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", field=field) from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] == 0:
        raise ConfigError(f"{path} is not an idx file of unsigned bytes (bad header)", field=field)
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise ConfigError(f"{path}: the header says {shape} = {int(np.prod(shape))} values, the file holds "
                          f"{max(0, len(raw) - header)}", field=field)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    hint = f" ({INSTALL_HINT})" if str(directory) == FASHION_MNIST_DIR else ""
    raise ConfigError(f"no {stem}[.gz] in {directory}{hint}", field="directory")


class IdxImages(Dataset):
    """Images and labels from MNIST-format idx files, captioned from class names.

    ``directory`` holds ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` (default: where Debian's
    ``dataset-fashion-mnist`` installs them). ``classes``: ``fashion-mnist``, ``mnist`` or a list of names
    in label order; ``templates``: each image gets one caption per template (``{}`` = its class name).
    ``val_size`` training images (drawn with ``seed``) become val; ``train_size``/``test_size`` keep the
    first N. ``holdout``: class names left out of train (not val or test), for zero-shot evaluation on
    unseen classes (extra ``is_holdout``). ``image_size`` other than the files' own resizes when read
    (antialiased bilinear). Images are ``uint8 [1, S, S]``; extras ``labels``."""

    @typed_params
    def __init__(self, directory: str = FASHION_MNIST_DIR, classes: str | list[str] = "fashion-mnist",
                 templates: list[str] = ["a photo of a {}."], image_size: int | None = None,
                 val_size: int = 5000, train_size: int | None = None, test_size: int | None = None,
                 holdout: list[str] = [], seed: int = 0):
        names = self._class_names(classes)
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError(f"each template needs a {{}} for the class name, got {templates!r}",
                              field="templates")
        unknown = [h for h in holdout if h not in names]
        if unknown:
            raise ConfigError(f"unknown class(es) {unknown}; classes: {', '.join(names)}", field="holdout")
        if val_size < 0:
            raise ConfigError(f"must be >= 0, got {val_size}", field="val_size")
        folder = Path(directory).expanduser()
        if not folder.is_dir():
            hint = f" ({INSTALL_HINT})" if directory == FASHION_MNIST_DIR else ""
            raise MissingDataError(f"folder not found: {folder}{hint}", field="directory")
        data = {}
        for part, (images_stem, labels_stem) in FILES.items():
            images = read_idx(find_idx(folder, images_stem))
            labels = read_idx(find_idx(folder, labels_stem))
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ConfigError(f"{folder}: {images_stem} holds {images.shape} and {labels_stem} "
                                  f"{labels.shape}; expected [N, H, W] images and N labels", field="directory")
            if labels.max(initial=0) >= len(names):
                raise ConfigError(f"{folder}: label {int(labels.max())} but only {len(names)} classes",
                                  field="classes")
            data[part] = (images, labels.astype(np.int64))
        self.names, self.templates, self.holdout = names, list(templates), set(holdout)
        native = data["train"][0].shape[1]
        self.image_size = positive("image_size", image_size) or native
        self.info = DatasetInfo(name="idx-images", image_shape=(1, self.image_size, self.image_size),
                                text_kind="caption", class_names=list(names),
                                vocab=caption_vocab(t.format(n) for t in templates for n in names))
        self._splits = self._build(data, val_size, train_size, test_size, seed)

    @staticmethod
    def _class_names(classes: str | list[str]) -> list[str]:
        if isinstance(classes, str):
            if classes not in CLASS_SETS:
                raise ConfigError(f"expected {' or '.join(CLASS_SETS)} or a list of names, got {classes!r}",
                                  field="classes")
            return list(CLASS_SETS[classes])
        if not classes or len(set(classes)) != len(classes):
            raise ConfigError(f"expected distinct class names, got {classes!r}", field="classes")
        return list(classes)

    def _build(self, data: dict, val_size: int, train_size: int | None, test_size: int | None,
               seed: int) -> dict[str, Split]:
        train_images, train_labels = data["train"]
        if val_size >= len(train_images):
            raise ConfigError(f"val_size {val_size} leaves no training image (the file has "
                              f"{len(train_images)})", field="val_size")
        is_val = np.zeros(len(train_images), dtype=bool)
        is_val[np.random.default_rng(seed).permutation(len(train_images))[:val_size]] = True
        train_rows = np.flatnonzero(~is_val & ~np.isin(train_labels, self._held_ids()))
        parts = {"train": (train_images, train_labels, train_rows[:positive("train_size", train_size)]),
                 "val": (train_images, train_labels, np.flatnonzero(is_val)),
                 "test": (*data["test"], np.arange(len(data["test"][0]))[:positive("test_size", test_size)])}
        return {name: self._split(name, images[rows], labels[rows]) for name, (images, labels, rows)
                in parts.items()}

    def _held_ids(self) -> np.ndarray:
        return np.array([i for i, n in enumerate(self.names) if n in self.holdout], dtype=np.int64)

    def _split(self, name: str, images: np.ndarray, labels: np.ndarray) -> Split:
        array = np.ascontiguousarray(images[:, None])  # [N, 1, H, W]
        source = array if self.image_size == array.shape[-1] else ResizedImages(array, self.image_size)
        texts = [t.format(self.names[c]) for c in labels for t in self.templates]
        owner = np.repeat(np.arange(len(labels)), len(self.templates))
        return Split(name, source, texts, owner,
                     extras={"labels": labels, "is_holdout": np.isin(labels, self._held_ids())})

    def split(self, name: str) -> Split:
        if name not in self._splits:
            raise ValueError(f"dataset 'idx-images' has splits {', '.join(self._splits)}; not {name!r}")
        if len(self._splits[name]) == 0:
            raise EmptySplitError(f"split {name!r} is empty", field=f"{name}_size")
        return self._splits[name]


@hookimpl
def register_datasets(register):
    register("idx-images", IdxImages)
