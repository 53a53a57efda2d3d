"""The embedded default dataset ``shapes``: generated scenes of coloured shapes with captions.

Every image holds 1–3 objects (a shape × colour × size) in distinct cells of a 3×3 grid, with integer
jitter, on a dark, slightly noisy background. Each image gets five captions from a small grammar with
paraphrases ("a small red circle left of a blue square", "there is a blue square to the right of a red
circle", "a red circle with a blue square and a green cross"), plus the objects, their pairwise spatial
relations, a gaze map and a class label. Everything is vectorized with numpy, deterministic per seed, and
cached in memory and on disk.

Coordinates: a bounding box ``(x0, y0, x1, y1)`` uses pixel-edge coordinates, so ``image[:, y0:y1, x0:x1]``
crops the object and its centre ``((x0 + x1) / 2, (y0 + y1) / 2)`` lies in the object's centre pixel.
Relation ``r`` of object a w.r.t. object b compares the two centres along the axis with the larger
difference (ties go to the horizontal axis): "a left of b" means a's centre has the smaller x.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from harness import hookimpl
from harness.data import Dataset, DatasetInfo, Split
from harness_plugins.datasets.shapes_relevance import caption_relevance

# the scene generator's public names are this module's too (re-exported)
from harness_plugins.datasets.shapes_scenes import (  # noqa: F401
    CAPTIONS_PER_IMAGE, CLASS_NAMES, COLOR_RGB, COLORS, GENERATOR_VERSION, MAX_OBJECTS,
    MIN_IMAGE_SIZE, RELATIONS, SHAPES, SIZES, VOCAB, WORD_CATEGORIES, _MEMO_SIZE, _check_int,
    _check_split, _generate, _to_split, generate_split, parse_holdout)

# --- caching ------------------------------------------------------------------------------------------

_MEMO: OrderedDict[str, dict[str, Any]] = OrderedDict()
_MEMO_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Forget every split generated or loaded in this process."""
    with _MEMO_LOCK:
        _MEMO.clear()


def cache_root() -> Path:
    """``$HARNESS_CACHE_DIR`` if set, else ``~/.cache/multimodal-harness``; shapes files go in ``shapes/``."""
    root = os.environ.get("HARNESS_CACHE_DIR")
    return Path(root).expanduser().resolve() if root else Path.home() / ".cache" / "multimodal-harness"


def _save(path: Path, data: dict[str, Any], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": data["images"], "captions": np.array(data["captions"], dtype=np.str_),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    arrays |= {f"extras.{key}": value for key, value in data["extras"].items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache directory must stay readable
        os.replace(tmp, path)  # readers see the old file or the complete new one, never a partial one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) != meta:
                return None
            extras = {key[len("extras."):]: z[key] for key in z.files if key.startswith("extras.")}
            return {"images": z["images"], "captions": z["captions"].tolist(), "extras": extras}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        warnings.warn(f"ignoring unreadable shapes cache file {path}: {err}", stacklevel=3)
        return None


# --- the dataset --------------------------------------------------------------------------------------


class ShapesDataset(Dataset):
    """Generated coloured-shape scenes with five compositional captions each; no download, deterministic.

    Parameters: split sizes, ``image_size`` (pixels, >= 32), ``seed``, ``holdout`` (``"<color> <shape>"``
    combinations removed from the train split only, for compositional zero-shot tests), ``max_objects``
    (1–3 per image) and ``cache`` (``False`` disables the disk cache under ``$HARNESS_CACHE_DIR`` or
    ``~/.cache/multimodal-harness``; an in-process memo is always used).

    Split extras (first axis N): ``labels`` (class of the primary, first-mentioned object), ``gaze``
    (float16 [N,S,S], sums to 1), ``n_objects``, ``obj_shape``/``obj_color``/``obj_size`` (int8 [N,3],
    -1 padded), ``obj_bbox`` (int16 [N,3,4] x0,y0,x1,y1 pixel edges), ``relations`` (int8 [N,3,3], id in
    ``RELATIONS`` of a w.r.t. b, -1 none), ``mentions`` (bool [N,5,3]) and ``is_holdout`` (bool [N]).
    """

    def __init__(self, train_size: int = 4000, val_size: int = 500, test_size: int = 1000,
                 image_size: int = 64, seed: int = 0, holdout: Iterable[str] = (),
                 max_objects: int = MAX_OBJECTS, cache: bool = True):
        _check_int("train_size", train_size, 1)
        _check_int("val_size", val_size, 0)
        _check_int("test_size", test_size, 1)
        _check_int("image_size", image_size, MIN_IMAGE_SIZE)
        _check_int("seed", seed, 0)
        _check_int("max_objects", max_objects, 1, MAX_OBJECTS)
        if not isinstance(cache, bool):
            raise ValueError(f"cache must be true or false, got {cache!r}")
        self._held = parse_holdout(holdout)
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        self.image_size, self.seed, self.max_objects, self.cache = int(image_size), int(seed), int(max_objects), cache
        self.holdout = tuple(CLASS_NAMES[i] for i in self._held)
        self.info = DatasetInfo(name="shapes", image_shape=(3, self.image_size, self.image_size),
                                text_kind="caption", vocab=list(VOCAB), word_categories=dict(WORD_CATEGORIES),
                                class_names=list(CLASS_NAMES), predicates=list(RELATIONS))
        self._splits: dict[str, Split] = {}

    def _meta(self, name: str) -> dict[str, Any]:
        # Held-out combinations change only the train split's content; is_holdout is derived on load.
        return {"generator_version": GENERATOR_VERSION, "split": name, "size": self.sizes[name],
                "image_size": self.image_size, "seed": self.seed, "max_objects": self.max_objects,
                "holdout": list(self._held) if name == "train" else []}

    def cache_key(self, name: str) -> str:
        """File stem of a split's cache entry: the split name plus a hash of what determines its content."""
        _check_split(name)
        digest = hashlib.blake2b(json.dumps(self._meta(name), sort_keys=True).encode(), digest_size=8)
        return f"{name}-{digest.hexdigest()}"

    def cache_path(self, name: str) -> Path:
        return cache_root() / "shapes" / f"{self.cache_key(name)}.npz"

    def split(self, name: str) -> Split:
        _check_split(name)
        if name not in self._splits:
            self._splits[name] = _to_split(name, self._data(name), self._held)
        return self._splits[name]

    def relevance(self, split_name: str):
        """Exact relevance: a boolean scipy.sparse CSR ``[n_texts, n_images]``, true where a caption is
        true of an image (every object it mentions is there, every stated relation holds; see
        :func:`harness_plugins.datasets.shapes_relevance.caption_relevance`)."""
        split = self.split(split_name)
        return caption_relevance(split.texts, split.extras)

    def _data(self, name: str) -> dict[str, Any]:
        key = self.cache_key(name)
        with _MEMO_LOCK:
            if key in _MEMO:
                _MEMO.move_to_end(key)
                return _MEMO[key]
        meta = self._meta(name)
        data = _load(self.cache_path(name), meta) if self.cache else None
        if data is None:
            data = _generate(name, self.sizes[name], self.image_size, self.seed, self._held, self.max_objects)
            if self.cache:
                try:
                    _save(self.cache_path(name), data, meta)
                except OSError as err:  # a read-only home must not stop a benchmark
                    warnings.warn(f"could not write shapes cache {self.cache_path(name)}: {err}", stacklevel=3)
        with _MEMO_LOCK:
            _MEMO[key] = data
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
        return data

    def __repr__(self) -> str:
        return (f"ShapesDataset(train_size={self.sizes['train']}, val_size={self.sizes['val']}, "
                f"test_size={self.sizes['test']}, image_size={self.image_size}, seed={self.seed}, "
                f"holdout={list(self.holdout)}, max_objects={self.max_objects}, cache={self.cache})")


@hookimpl
def register_datasets(register):
    register("shapes", ShapesDataset)
