"""Per-item data read on demand: what a split holds instead of an in-memory array when its images (or
per-image extras such as gaze maps) should not all live in memory.

A :class:`LazySource` is a sequence: ``len(source)``, ``source[i]`` (one item) and ``source[index]``
(an integer array: the items stacked on a new first axis), plus ``fingerprint()``. ``harness.model.take``
and the DataLoader glue (:mod:`harness.loader`) index it like an array, so batches are decoded in the
data workers and peak memory grows with the batch, not with the dataset.

Images become ``uint8 [3, S, S]``: decoded with PIL, the shorter side resized to S (bilinear,
antialiased: torchvision's ``resize``), then the centre S × S cropped — the standard evaluation
geometry; random crops and flips are training transforms (``train.transforms``).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


class LazySource:
    """A sequence whose items are produced when indexed (subclasses define ``__len__``, ``load`` and
    ``fingerprint``)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def load_many(self, index: np.ndarray) -> list[torch.Tensor]:
        """Items ``index`` (subclasses may read them faster together)."""
        return [self.load(int(i)) for i in index]

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self.load(int(index))
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"index out of range for {type(self).__name__} of length {n}")
        items = self.load_many(np.where(index < 0, index + n, index).reshape(-1))
        if not items:
            return torch.empty((0, *self.load(0).shape) if n else (0,), dtype=torch.uint8)
        return torch.stack(items)


class SourceRows(LazySource):
    """Rows ``[start, stop)`` of another source, still read on demand (a DDP rank's shard)."""

    def __init__(self, source: LazySource, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, i: int) -> torch.Tensor:
        return self.source.load(self.start + i)

    def load_many(self, index: np.ndarray) -> list[torch.Tensor]:
        return self.source.load_many(np.asarray(index) + self.start)

    def fingerprint(self) -> str:
        return f"{self.source.fingerprint()}[{self.start}:{self.stop}]"


# --- geometry: shorter side to S, centre crop (torchvision's resize + center_crop) ----------------------

def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` after resizing the shorter side to ``size`` (torchvision's rule: the longer
    side becomes ``int(size · long / short)``)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def square_geometry(width: int, height: int, size: int) -> tuple[float, float, int, int]:
    """How a point of the original image moves into the S × S crop: ``(scale_x, scale_y, left, top)``
    with ``x' = x · scale_x − left`` (torchvision's centre-crop offsets)."""
    new_w, new_h = resized_size(width, height, size)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return new_w / width, new_h / height, left, top


def fit_square(image: Any, size: int) -> Any:
    """A PIL image resized (shorter side to ``size``, antialiased bilinear) and centre-cropped to
    ``size`` × ``size``. JPEGs are first decoded at the smallest power-of-two reduction that still covers
    the target size (PIL's ``draft``: several times faster on large photos, same geometry)."""
    from torchvision.transforms.v2 import functional as F

    new_w, new_h = resized_size(*image.size, size)
    if getattr(image, "format", None) == "JPEG":
        image.draft(None, (new_w, new_h))
    image = F.resize(image, [new_h, new_w], antialias=True)
    return F.center_crop(image, [size, size])


def decode_image(source: Any, size: int, mode: str = "RGB") -> torch.Tensor:
    """An image file (a path, bytes, or an open PIL image) as ``uint8 [C, S, S]`` (``mode`` "RGB": C = 3,
    "L": C = 1)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    image = source if isinstance(source, Image.Image) else Image.open(source)
    with image:
        square = fit_square(image, size)
        return F.pil_to_tensor(square.convert(mode))


def _file_stamp(path: str) -> str:
    try:
        return str(os.stat(path).st_size)
    except OSError:
        return "missing"


class ImageFiles(LazySource):
    """Image files (JPEG, PNG, … anything PIL reads) decoded on demand to ``uint8 [3, size, size]``.

    ``paths`` are the files in split order; ``root`` (where they live) is left out of the fingerprint,
    which hashes each path relative to it with the file's size: moving the image folder keeps it."""

    def __init__(self, paths: Sequence[str | os.PathLike], size: int, root: str | os.PathLike | None = None):
        self.paths = [os.fspath(p) for p in paths]
        self.size = int(size)
        self.root = os.fspath(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            return decode_image(path, self.size)
        except Exception as exc:  # a corrupt or truncated file: say which
            raise ValueError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from None

    def fingerprint(self) -> str:
        h = hashlib.blake2b(f"image-files/{self.size}".encode(), digest_size=16)
        for path in self.paths:
            name = os.path.relpath(path, self.root) if self.root else path
            h.update(f"{name}\x1f{_file_stamp(path)}\x1e".encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, size={self.size})"


class GazeMaps(LazySource):
    """Greyscale saliency maps (SALICON-style PNGs) as ``float32 [size, size]`` in [0, 1], with the
    same resize and centre crop as their images, so that they stay aligned with them; an image without
    a map (``None``) gets a uniform map of ones (the ``gaze`` transform then leaves it unchanged)."""

    def __init__(self, paths: Sequence[str | None], size: int):
        self.paths = [None if p is None else os.fspath(p) for p in paths]
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def missing(self) -> int:
        """How many images have no map."""
        return sum(p is None for p in self.paths)

    def load(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        if path is None:
            return torch.ones(self.size, self.size)
        try:
            return decode_image(path, self.size, mode="L")[0].float().div_(255.0)
        except Exception as exc:
            raise ValueError(f"cannot decode gaze map {path}: {type(exc).__name__}: {exc}") from None

    def fingerprint(self) -> str:
        h = hashlib.blake2b(f"gaze/{self.size}".encode(), digest_size=16)
        for path in self.paths:
            h.update(f"{'' if path is None else Path(path).name}\x1f{_file_stamp(path) if path else ''}\x1e"
                     .encode())
        return h.hexdigest()


class ResizedImages(LazySource):
    """An in-memory ``uint8 [N, C, h, w]`` array whose images are resized to ``size`` × ``size``
    (antialiased bilinear) when read: small images (28-px idx files) shown to a network that wants more
    pixels, without holding the enlarged copies."""

    def __init__(self, images: np.ndarray | torch.Tensor, size: int):
        self.images = torch.as_tensor(images)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        return self.load_many(np.array([i]))[0]

    def load_many(self, index: np.ndarray) -> list[torch.Tensor]:
        from torchvision.transforms.v2 import functional as F

        batch = self.images[torch.as_tensor(index, dtype=torch.long)]
        return list(F.resize(batch, [self.size, self.size], antialias=True))

    def fingerprint(self) -> str:
        h = hashlib.blake2b(f"resized/{self.size}".encode(), digest_size=16)
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        return h.hexdigest()


class HFImages(LazySource):
    """The image column of a Hugging Face ``datasets.Dataset`` (an ``Image`` feature, or a dict with
    ``bytes``/``path``, or a path string), decoded on demand to ``uint8 [3, size, size]``."""

    def __init__(self, table: Any, column: str, size: int, root: str | None = None):
        self.table, self.column, self.size, self.root = table, column, int(size), root

    def __len__(self) -> int:
        return len(self.table)

    def load(self, i: int) -> torch.Tensor:
        return self.load_many(np.array([i]))[0]

    def load_many(self, index: np.ndarray) -> list[torch.Tensor]:
        values = self.table[[int(i) for i in index]][self.column]
        return [self._decode(value) for value in values]

    def _decode(self, value: Any) -> torch.Tensor:
        if isinstance(value, dict):  # an undecoded Image feature
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str) and self.root and not os.path.isabs(value):
            value = os.path.join(self.root, value)
        return decode_image(value, self.size)

    def fingerprint(self) -> str:
        h = hashlib.blake2b(f"hf/{self.column}/{self.size}/{len(self)}".encode(), digest_size=16)
        h.update(str(getattr(self.table, "_fingerprint", "")).encode())
        return h.hexdigest()
