"""``karpathy``: the Karpathy splits of COCO, Flickr30k and Flickr8k (``dataset_coco.json``,
``dataset_flickr30k.json``, ``dataset_flickr8k.json``) — the retrieval protocol behind published R@K
numbers (5k COCO test images, 1k Flickr test images, 5 captions each).

File layout (one JSON object)::

    {"images": [{"filepath": "val2014",            # COCO only; absent for Flickr
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "A man riding a bike.", "tokens": ["a", "man", …]}, …],
                 "imgid": 0, "cocoid": 391895}, …],
     "dataset": "coco"}
"""

from __future__ import annotations

import os

import numpy as np

from harness import hookimpl
from harness.data import DatasetInfo
from harness_plugins.datasets.common import (SPLITS, FileDataset, GazeIndex, ImageRecords, caption_vocab,
                                             check_images_exist, existing_dir, expect, image_split, malformed,
                                             positive, read_json, typed_params)

KARPATHY_SPLITS = ("train", "val", "test", "restval")


class Karpathy(FileDataset):
    """Image–caption retrieval on a Karpathy split file, images decoded from local files on demand.

    ``annotations``: the ``dataset_*.json`` file; ``images``: the image root (an image is
    ``images/filepath/filename``, or ``images/filename`` without ``filepath``: the COCO root holding
    ``train2014/`` and ``val2014/``, or Flickr's image folder). ``restval`` adds the ``restval`` images
    to train (the usual 113k COCO training images). ``train_size``/``val_size``/``test_size`` keep the
    first N images of a split (file order). ``image_size``: images are resized (shorter side) and
    centre-cropped to this many pixels. ``gaze_maps``: a folder of SALICON-style PNG saliency maps
    matched by file stem (extra ``gaze``, ``gaze_size`` px; images without one get a uniform map).
    ``captions_per_image`` (default 5) keeps each image's first N sentences, as the published R@K
    protocol does (some COCO images have 6 or 7); null keeps them all. Extras: ``image_id``
    (``cocoid``, else ``imgid``)."""

    @typed_params
    def __init__(self, annotations: str, images: str, restval: bool = True, image_size: int = 224,
                 train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
                 gaze_maps: str | None = None, gaze_size: int = 64, captions_per_image: int | None = 5):
        super().__init__()
        positive("image_size", image_size)
        positive("captions_per_image", captions_per_image)
        caps = {"train": positive("train_size", train_size), "val": positive("val_size", val_size),
                "test": positive("test_size", test_size)}
        records = read_karpathy(annotations, os.path.expanduser(images), restval,  # annotations first
                                captions_per_image)
        root = existing_dir(images, "images")
        gaze = GazeIndex(gaze_maps) if gaze_maps is not None else None
        splits = {}
        for name in SPLITS:
            kept = records[name].head(caps[name])
            check_images_exist(kept.paths, "images", annotations)
            ids = np.asarray(kept.extras.get("image_id", []), dtype=np.int64)
            splits[name] = image_split(name, kept, image_size, root, {"image_id": ids})
            if not kept:
                self.empty_reason[name] = f"no image of {annotations} has split {name!r}"
        self.info = DatasetInfo(name="karpathy", image_shape=(3, image_size, image_size), text_kind="caption",
                                vocab=caption_vocab(splits["train"].texts))
        self.set_splits(splits, gaze, gaze_size)


def read_karpathy(annotations: str, root: str, restval: bool, captions_per_image: int | None = None
                  ) -> dict[str, ImageRecords]:
    """The images of a Karpathy split file, per harness split (restval in train when ``restval``), each
    with its first ``captions_per_image`` sentences (None: all)."""
    data = read_json(annotations, "annotations")
    field = "annotations"
    entries = expect(data, dict, field, annotations, "top level").get("images")
    if entries is None:
        raise malformed(field, annotations, "top level", "no 'images' list (is this a Karpathy split file?)")
    expect(entries, list, field, annotations, "images")
    records = {name: ImageRecords() for name in SPLITS}
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        expect(entry, dict, field, annotations, where)
        filename = expect(_required(entry, "filename", annotations, where), str, field, annotations,
                          f"{where}.filename")
        folder = expect(entry.get("filepath", ""), str, field, annotations, f"{where}.filepath")
        split = _required(entry, "split", annotations, where)
        if split not in KARPATHY_SPLITS:
            raise malformed(field, annotations, f"{where}.split",
                            f"expected one of {', '.join(KARPATHY_SPLITS)}, got {split!r}")
        if split == "restval":
            if not restval:
                continue
            split = "train"
        sentences = expect(_required(entry, "sentences", annotations, where), list, field, annotations,
                           f"{where}.sentences")
        captions = []
        for j, sentence in enumerate(sentences):
            at = f"{where}.sentences[{j}]"
            raw = expect(_required(expect(sentence, dict, field, annotations, at), "raw", annotations, at),
                         str, field, annotations, f"{at}.raw")
            captions.append(raw.strip())
        image_id = entry.get("cocoid", entry.get("imgid", i))
        records[split].add(os.path.join(root, folder, filename), captions[:captions_per_image],
                           image_id=expect(image_id, int, field, annotations, f"{where}.cocoid/imgid"))
    return records


def _required(entry: dict, key: str, file: str, where: str):
    if key not in entry:
        raise malformed("annotations", file, where, f"no {key!r}")
    return entry[key]


@hookimpl
def register_datasets(register):
    register("karpathy", Karpathy)

