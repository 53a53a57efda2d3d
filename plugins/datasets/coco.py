"""``coco-captions``: COCO's official caption files (``captions_train2014.json``,
``captions_val2014.json``, or the 2017 ones), train from the train file, val from the val file, and a
test split carved out of val (``test_size``) or named by an ids file (``test_ids``).

File layout (one JSON object per file; other keys such as ``info`` and ``licenses`` are ignored)::

    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", …}, …],
     "annotations": [{"image_id": 391895, "id": 770337, "caption": "A man riding a bike."}, …]}
"""

from __future__ import annotations

import os
import re

import numpy as np

from harness import hookimpl
from harness.data import DatasetInfo
from harness.errors import ConfigError
from harness_plugins.datasets.common import (FileDataset, GazeIndex, ImageRecords, caption_vocab,
                                             check_images_exist, existing_dir, existing_file, expect,
                                             image_split, malformed, positive, read_json, typed_params)


class CocoCaptions(FileDataset):
    """Image–caption pairs from COCO's official caption files, images decoded on demand.

    ``train_annotations``/``val_annotations``: ``captions_{train,val}{2014,2017}.json``;
    ``train_images``/``val_images``: the folders holding their images (``…/train2014``). Images are
    ordered by id; captions keep the file's order. Test: ``test_size`` images drawn from val with
    ``seed`` (the rest stay val), or ``test_ids``, a file of COCO image ids of val images (a JSON list,
    or ids separated by whitespace or commas) — not both; without either there is no test split.
    ``train_size``/``val_size`` keep the first N images (by id). ``image_size``, ``gaze_maps`` and
    ``gaze_size`` as in ``karpathy``. Extras: ``image_id``."""

    source_field = "val_annotations"

    @typed_params
    def __init__(self, train_annotations: str, val_annotations: str, train_images: str, val_images: str,
                 test_size: int | None = None, test_ids: str | None = None, seed: int = 0,
                 image_size: int = 224, train_size: int | None = None, val_size: int | None = None,
                 gaze_maps: str | None = None, gaze_size: int = 64):
        super().__init__()
        positive("image_size", image_size)
        positive("test_size", test_size)
        if test_size is not None and test_ids is not None:
            raise ConfigError("give test_size or test_ids, not both", field="test_ids")
        train = read_coco(train_annotations, "train_annotations", train_images)
        val = read_coco(val_annotations, "val_annotations", val_images)
        train_root, val_root = existing_dir(train_images, "train_images"), existing_dir(val_images, "val_images")
        val, test = carve_test(val, test_size, test_ids, seed)
        if test_size is None and test_ids is None:
            self.empty_reason["test"] = "set test_size (images drawn from val) or test_ids (a file of ids)"
        parts = {"train": (train.head(positive("train_size", train_size)), train_root, train_annotations),
                 "val": (val.head(positive("val_size", val_size)), val_root, val_annotations),
                 "test": (test, val_root, val_annotations)}
        splits = {}
        for name, (records, root, named_in) in parts.items():
            check_images_exist(records.paths, f"{'train' if name == 'train' else 'val'}_images", named_in)
            ids = np.asarray(records.extras.get("image_id", []), dtype=np.int64)
            splits[name] = image_split(name, records, image_size, root, {"image_id": ids})
        self.info = DatasetInfo(name="coco-captions", image_shape=(3, image_size, image_size),
                                text_kind="caption", vocab=caption_vocab(splits["train"].texts))
        self.set_splits(splits, GazeIndex(gaze_maps) if gaze_maps is not None else None, gaze_size)


def read_coco(path: str, field: str, images: str) -> ImageRecords:
    """The images of one COCO caption file, by id, each with its captions in file order."""
    data = expect(read_json(path, field), dict, field, path, "top level")
    for key in ("images", "annotations"):
        if key not in data:
            raise malformed(field, path, "top level", f"no {key!r} list (is this a COCO captions file?)")
        expect(data[key], list, field, path, key)
    files: dict[int, str] = {}
    for i, image in enumerate(data["images"]):
        where = f"images[{i}]"
        expect(image, dict, field, path, where)
        image_id = expect(image.get("id"), int, field, path, f"{where}.id")
        files[image_id] = expect(image.get("file_name"), str, field, path, f"{where}.file_name")
    captions: dict[int, list[str]] = {image_id: [] for image_id in files}
    absent = []
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        expect(ann, dict, field, path, where)
        image_id = expect(ann.get("image_id"), int, field, path, f"{where}.image_id")
        caption = expect(ann.get("caption"), str, field, path, f"{where}.caption")
        if image_id not in captions:
            absent.append((where, image_id))
            continue
        captions[image_id].append(caption.strip())
    if absent:
        where, image_id = absent[0]
        raise malformed(field, path, where, f"image_id {image_id} is not in the file's images list "
                        f"({len(absent)} caption(s) name absent images)")
    records = ImageRecords()
    root = os.path.expanduser(images)
    for image_id in sorted(files):
        records.add(os.path.join(root, files[image_id]), captions[image_id], image_id=image_id)
    return records


def carve_test(val: ImageRecords, test_size: int | None, test_ids: str | None, seed: int
               ) -> tuple[ImageRecords, ImageRecords]:
    """``(val, test)``: ``test_size`` val images drawn with ``seed``, or the images ``test_ids`` names
    (both keep the id order); neither: an empty test split."""
    ids = val.extras.get("image_id", [])
    if test_ids is not None:
        wanted = read_ids(test_ids)
        known = set(ids)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ConfigError(f"{len(unknown)} id(s) in {test_ids} are not val images, e.g. {unknown[:3]}",
                              field="test_ids")
        chosen = np.isin(np.asarray(ids, dtype=np.int64), np.asarray(sorted(wanted), dtype=np.int64))
    elif test_size is not None:
        if test_size >= len(val):
            raise ConfigError(f"test_size {test_size} leaves no val image (val has {len(val)})",
                              field="test_size")
        chosen = np.zeros(len(val), dtype=bool)
        chosen[np.random.default_rng(seed).permutation(len(val))[:test_size]] = True
    else:
        chosen = np.zeros(len(val), dtype=bool)
    return _select(val, ~chosen), _select(val, chosen)


def read_ids(path: str) -> list[int]:
    """Image ids from a file: a JSON list, or integers separated by whitespace or commas."""
    try:
        text = existing_file(path, "test_ids").read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file of image ids ({exc.reason} at byte {exc.start})",
                          field="test_ids") from None
    tokens = [t for t in re.split(r"[\s,\[\]]+", text) if t]
    try:
        return [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise ConfigError(f"{path}: expected image ids (integers), found {bad!r}", field="test_ids") from None


def _select(records: ImageRecords, keep: np.ndarray) -> ImageRecords:
    rows = np.flatnonzero(keep)
    return ImageRecords([records.paths[i] for i in rows], [records.captions[i] for i in rows],
                        {k: [v[i] for i in rows] for k, v in records.extras.items()})


@hookimpl
def register_datasets(register):
    register("coco-captions", CocoCaptions)
