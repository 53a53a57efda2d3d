"""Dataset shapes shared by every dataset plugin: a split of aligned samples and the dataset's info."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from harness.sources import LazySource


@dataclass
class DatasetInfo:
    """What encoders and evaluators may know about a dataset before seeing its samples."""

    name: str
    image_shape: tuple[int, ...] = ()  # e.g. (3, 64, 64), or (d,) for feature vectors
    text_kind: str = "caption"  # "caption" (strings) or "vector" (a second numeric view)
    text_dim: int | None = None  # feature size when text_kind == "vector"
    vocab: list[str] = field(default_factory=list)
    word_categories: dict[str, str] = field(default_factory=dict)  # word -> color/shape/size/relation/function
    class_names: list[str] = field(default_factory=list)
    predicates: list[str] = field(default_factory=list)  # relation names, for relation heads
    object_names: list[str] = field(default_factory=list)  # object categories (Visual Genome's obj_name ids)


@dataclass
class Split:
    """Aligned samples of one split.

    ``images[i]`` is image i (a ``uint8 [N, C, H, W]`` tensor or array, an ``[N, d]`` feature view, or
    a :class:`harness.sources.LazySource` such as image files decoded on demand);
    ``texts[j]`` is text j (a caption string, or a row of a second view) and ``text_to_image[j]`` the
    image it describes — an image may have any number of texts. ``extras`` holds per-image arrays
    (``labels``, ``gaze``, ``objects``...) whose first axis is N (large ones, such as gaze maps read
    from files, may be lazy sources too).
    """

    name: str
    images: Any
    texts: Sequence[Any]
    text_to_image: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.text_to_image = np.asarray(self.text_to_image, dtype=np.int64)
        if len(self.texts) != len(self.text_to_image):
            raise ValueError(f"split {self.name!r}: {len(self.texts)} texts but "
                             f"{len(self.text_to_image)} text_to_image entries")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray | None:
        return self.extras.get("labels")

    def texts_of_image(self) -> list[np.ndarray]:
        """For each image, the indices of its texts (possibly empty)."""
        order = np.argsort(self.text_to_image, kind="stable")
        bounds = np.searchsorted(self.text_to_image[order], np.arange(len(self) + 1))
        return [order[bounds[i]:bounds[i + 1]] for i in range(len(self))]

    def take_texts(self, index: np.ndarray) -> Any:
        if isinstance(self.texts, (list, tuple)):
            return [self.texts[j] for j in index]
        return self.texts[index]

    def fingerprint(self) -> str:
        """A content hash of the split (images, texts and alignment), stable across processes."""
        h = hashlib.blake2b(digest_size=16)
        if isinstance(self.images, LazySource):  # read from files: their names and sizes, not pixels
            h.update(self.images.fingerprint().encode())
        else:
            h.update(np.ascontiguousarray(np.asarray(self.images)).tobytes())
        if isinstance(self.texts, (list, tuple)):
            h.update("\x1f".join(map(str, self.texts)).encode())
        else:
            h.update(np.ascontiguousarray(np.asarray(self.texts)).tobytes())
        h.update(self.text_to_image.tobytes())
        return h.hexdigest()


class Dataset:
    """Base for dataset plugins: ``split(name)`` returns a :class:`Split`; ``info`` a :class:`DatasetInfo`.

    Splits are ``train``, ``val`` and ``test``; they must be deterministic functions of the dataset's
    parameters so that every method and seed sees the same data.
    """

    splits: tuple[str, ...] = ("train", "val", "test")
    info: DatasetInfo

    def split(self, name: str) -> Split:
        raise NotImplementedError

    def relevance(self, split_name: str) -> Any:
        """Which images each text of a split is true of: a boolean ``[n_texts, n_images]`` matrix (dense
        or scipy.sparse), or ``None`` when the dataset has no exact relevance — evaluators then fall back
        to each text's own image (``Split.text_to_image``)."""
        return None

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for name in self.splits:
            h.update(self.split(name).fingerprint().encode())
        return h.hexdigest()


class PairRelevance:
    """Which texts of a split are true of which of its images, as an element-wise lookup on index tensors:
    ``relevance(text_ids, image_ids)`` broadcasts the two long tensors and returns a bool tensor of their
    shape (on their device). Built from ``Dataset.relevance(split)`` (dense or scipy.sparse
    ``[n_texts, n_images]``), or, when that is ``None``, from each text's own image.

    The true pairs are kept as sorted keys ``text · n_images + image``: a lookup is one binary search per
    pair, so masking a batch (or a queue) never needs the dense matrix."""

    def __init__(self, split: Split, relevance: Any = None):
        n_texts, n_images = len(split.texts), len(split)
        if relevance is None:  # no exact relevance: a text is true of the image it was written for
            rows, cols = np.arange(n_texts), split.text_to_image
        else:
            matrix = sp.coo_array(relevance)
            if matrix.shape != (n_texts, n_images):
                raise ValueError(f"split {split.name!r}: relevance has shape {matrix.shape}, expected "
                                 f"({n_texts}, {n_images}) = (texts, images)")
            keep = matrix.data.astype(bool)
            rows, cols = matrix.row[keep], matrix.col[keep]
        self.n_images = n_images
        self._keys = {torch.device("cpu"): torch.from_numpy(
            np.unique(rows.astype(np.int64) * n_images + cols.astype(np.int64)))}

    def __len__(self) -> int:
        """The number of true (text, image) pairs."""
        return len(self._keys[torch.device("cpu")])

    def __call__(self, text_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        text_ids, image_ids = torch.broadcast_tensors(torch.as_tensor(text_ids), torch.as_tensor(image_ids))
        keys = self._keys.get(text_ids.device)
        if keys is None:
            keys = self._keys[text_ids.device] = self._keys[torch.device("cpu")].to(text_ids.device)
        if len(keys) == 0:
            return torch.zeros(text_ids.shape, dtype=torch.bool, device=text_ids.device)
        query = (text_ids.long() * self.n_images + image_ids.long()).reshape(-1)
        # sorted queries walk the keys in order: several times faster than scattered binary searches
        query, order = query.sort()
        found = torch.searchsorted(keys, query).clamp_(max=len(keys) - 1)
        hit = torch.empty_like(order, dtype=torch.bool)
        hit[order] = keys[found] == query
        return hit.reshape(text_ids.shape)
