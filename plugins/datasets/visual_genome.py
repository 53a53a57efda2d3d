"""``visual-genome``: Visual Genome images with their objects and relationships as per-image extras in the
layout the relation module (``plugins/grounding/``) reads, and "subject predicate object" captions.

File layouts (JSON lists; other keys are ignored)::

    image_data.json:     [{"image_id": 1, "url": ".../VG_100K_2/1.jpg", "width": 800, "height": 600}, …]
    relationships.json:  [{"image_id": 1, "relationships": [{"predicate": "ON",
                            "subject": {"object_id": 5045, "x": 119, "y": 338, "w": 274, "h": 192,
                                        "name": "shade"},           # or "names": ["shade"]
                            "object": {"object_id": 5046, …, "names": ["street"]}}, …]}, …]
    objects.json:        [{"image_id": 1, "objects": [{"object_id": 1058498, "x": 421, "y": 91,
                            "w": 79, "h": 339, "names": ["clock"]}, …]}, …]

Each file is parsed one list item at a time (:func:`iter_json_list`), and of each relationship and
object only what the loader uses is kept (predicate, object id, box, name): the full
``relationships.json`` (~700 MB of text) is never held whole, parsed or unparsed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from harness import hookimpl
from harness.data import DatasetInfo
from harness.errors import ConfigError
from harness.sources import square_geometry
from harness_plugins.datasets.common import (SPLITS, FileDataset, GazeIndex, ImageRecords, caption_vocab,
                                             check_images_exist, existing_dir, expect, image_split,
                                             iter_json_list, malformed, positive, typed_params)

DEFAULT_TOP_K = 50


class VisualGenome(FileDataset):
    """Visual Genome images, objects and relationships; captions are the kept relationships as
    "subject predicate object" ("shade on street").

    ``image_data``, ``relationships`` and (optional) ``objects``: the JSON files; ``images``: the folder
    holding ``VG_100K/`` and ``VG_100K_2/`` (an image is ``images/<the url's last two parts>``).
    ``predicates``: the predicate names to keep (relation id = list index), or ``top_k`` (default 50):
    the most frequent ones; predicates are lower-cased. Per image, up to ``max_objects`` objects — those
    in kept relationships first (in order of appearance), then those of ``objects`` — and up to
    ``captions_per_image`` distinct captions; images without a kept relationship are left out. Splits:
    ``test_size`` and ``val_size`` images drawn with ``seed``, the rest train.

    Extras (first axis N, M = ``max_objects``): ``n_objects``; ``obj_bbox`` int16 [N, M, 4] (x0, y0,
    x1, y1, pixel edges in the ``image_size`` crop, clipped; -1 padding); ``obj_name`` int32 [N, M]
    (index into ``info.object_names``; -1 padding); ``relations`` int16 [N, M, M] (predicate id of
    object s with respect to object o, -1 none); ``image_id``. ``info.predicates`` names the ids."""

    source_field = "relationships"

    @typed_params
    def __init__(self, image_data: str, images: str, relationships: str, objects: str | None = None,
                 predicates: list[str] | None = None, top_k: int | None = None, max_objects: int = 10,
                 captions_per_image: int = 5, val_size: int = 1000, test_size: int = 1000, seed: int = 0,
                 image_size: int = 224, gaze_maps: str | None = None, gaze_size: int = 64):
        super().__init__()
        for name, value in (("image_size", image_size), ("max_objects", max_objects),
                            ("captions_per_image", captions_per_image), ("top_k", top_k)):
            positive(name, value)
        if predicates is not None and top_k is not None:
            raise ConfigError("give predicates (a list) or top_k (the most frequent), not both", field="top_k")
        meta = read_image_data(image_data, os.path.expanduser(images))
        related = read_grouped(relationships, "relationships", "relationships", meta)
        extra_objects = read_grouped(objects, "objects", "objects", meta) if objects else {}
        root = existing_dir(images, "images")
        names = self._predicates(predicates, top_k or DEFAULT_TOP_K, related, relationships)
        self.max_objects, self.captions_per_image, self.image_size = max_objects, captions_per_image, image_size
        self._object_names: dict[str, int] = {}
        scenes = {}
        for image_id in meta:
            scene = self._scene(related.get(image_id, []), extra_objects.get(image_id, []), names,
                                meta[image_id], relationships, image_id)
            if scene is not None:
                scenes[image_id] = scene
        splits = {}
        for split, ids in assign_splits(list(scenes), val_size, test_size, seed).items():
            records = ImageRecords()
            for image_id in ids:
                records.add(meta[image_id][0], scenes[image_id].pop("captions"), **scenes[image_id])
            check_images_exist(records.paths, "images", image_data)
            splits[split] = image_split(split, records, image_size, root, self._extras(records))
            if not records:
                self.empty_reason[split] = "no image with a kept relationship is assigned to it"
        self.info = DatasetInfo(name="visual-genome", image_shape=(3, image_size, image_size),
                                text_kind="caption", vocab=caption_vocab(splits["train"].texts),
                                predicates=list(names), object_names=list(self._object_names))
        self.set_splits(splits, GazeIndex(gaze_maps) if gaze_maps is not None else None, gaze_size)

    @staticmethod
    def _predicates(predicates: list[str] | None, top_k: int, related: dict, file: str) -> list[str]:
        if predicates is not None:
            names = [normalise(p) for p in predicates]
            if not names or len(set(names)) != len(names) or not all(names):
                raise ConfigError(f"expected distinct non-empty names, got {predicates!r}", field="predicates")
            return names
        counts = Counter(normalise(r["predicate"]) for rels in related.values() for r in rels)
        counts.pop("", None)
        if not counts:
            raise ConfigError(f"{file} has no relationships", field="relationships")
        return sorted(counts, key=lambda p: (-counts[p], p))[:top_k]

    def _scene(self, relations: list[dict], objects: list[dict], predicates: list[str], meta: tuple,
               file: str, image_id: int) -> dict | None:
        """One image's objects, relation matrix and captions, or None without a kept relationship."""
        ids = {p: i for i, p in enumerate(predicates)}
        slots: dict[int, int] = {}
        found: list[dict] = []
        kept = []
        for rel in relations:
            predicate = ids.get(normalise(rel["predicate"]))
            s, o = rel["subject"], rel["object"]
            if predicate is None or s["object_id"] == o["object_id"]:
                continue
            for obj in (s, o):
                if obj["object_id"] not in slots and len(found) < self.max_objects:
                    slots[obj["object_id"]] = len(found)
                    found.append(obj)
            if s["object_id"] in slots and o["object_id"] in slots:
                kept.append((slots[s["object_id"]], predicate, slots[o["object_id"]], rel))
        if not kept:
            return None
        for obj in objects:
            if obj["object_id"] not in slots and len(found) < self.max_objects:
                slots[obj["object_id"]] = len(found)
                found.append(obj)
        M, (_, width, height) = self.max_objects, meta
        relation = np.full((M, M), -1, dtype=np.int16)
        captions: list[str] = []
        for s, p, o, rel in kept:
            if relation[s, o] < 0:  # the first predicate of a pair wins
                relation[s, o] = p
            caption = f"{object_name(found[s])} {predicates[p]} {object_name(found[o])}"
            if caption not in captions and len(captions) < self.captions_per_image:
                captions.append(caption)
        boxes = np.full((M, 4), -1, dtype=np.int16)
        names = np.full(M, -1, dtype=np.int32)
        sx, sy, left, top = square_geometry(width, height, self.image_size)
        for k, obj in enumerate(found):
            x0, y0 = obj["x"] * sx - left, obj["y"] * sy - top
            x1, y1 = (obj["x"] + obj["w"]) * sx - left, (obj["y"] + obj["h"]) * sy - top
            boxes[k] = np.clip(np.round([x0, y0, x1, y1]), 0, self.image_size)
            names[k] = self._object_names.setdefault(object_name(obj), len(self._object_names))
        return {"captions": captions, "n_objects": len(found), "obj_bbox": boxes, "obj_name": names,
                "relations": relation, "image_id": image_id}

    def _extras(self, records: ImageRecords) -> dict[str, np.ndarray]:
        M = self.max_objects
        shapes = {"n_objects": (), "obj_bbox": (M, 4), "obj_name": (M,), "relations": (M, M), "image_id": ()}
        dtypes = {"n_objects": np.int64, "obj_bbox": np.int16, "obj_name": np.int32, "relations": np.int16,
                  "image_id": np.int64}
        return {key: np.asarray(records.extras.get(key, []), dtype=dtypes[key]).reshape(len(records), *shape)
                for key, shape in shapes.items()}


def normalise(predicate: str) -> str:
    """``"  On Top Of "`` → ``"on top of"``."""
    return re.sub(r"\s+", " ", predicate.strip().lower())


def object_name(obj: dict) -> str:
    """``name`` when it is a string, else the first of ``names`` (as :func:`_check_object` accepts)."""
    return normalise(obj["name"] if isinstance(obj.get("name"), str) else obj["names"][0])


def read_image_data(path: str, root: str) -> dict[int, tuple[str, int, int]]:
    """``{image_id: (file path, width, height)}`` from ``image_data.json``."""
    field = "image_data"
    meta = {}
    for i, entry in enumerate(iter_json_list(path, field)):
        where = f"[{i}]"
        expect(entry, dict, field, path, where)
        image_id = expect(entry.get("image_id", entry.get("id")), int, field, path, f"{where}.image_id")
        width = expect(entry.get("width"), int, field, path, f"{where}.width")
        height = expect(entry.get("height"), int, field, path, f"{where}.height")
        url = entry.get("url")
        relative = "/".join(Path(url).parts[-2:]) if isinstance(url, str) and url else f"{image_id}.jpg"
        meta[image_id] = (os.path.join(root, relative), width, height)
    return meta


def read_grouped(path: str, field: str, key: str, meta: dict) -> dict[int, list[dict]]:
    """``{image_id: [entries]}`` from ``relationships.json`` (``key`` relationships) or ``objects.json``
    (``key`` objects), each entry checked for the fields the loader uses."""
    grouped: dict[int, list[dict]] = {}
    for i, item in enumerate(iter_json_list(path, field)):
        where = f"[{i}]"
        expect(item, dict, field, path, where)
        image_id = expect(item.get("image_id", item.get("id")), int, field, path, f"{where}.image_id")
        if image_id not in meta:
            raise malformed(field, path, f"{where}.image_id", f"image {image_id} is not in image_data")
        entries = expect(item.get(key), list, field, path, f"{where}.{key}")
        kept = []
        for j, entry in enumerate(entries):
            at = f"{where}.{key}[{j}]"
            expect(entry, dict, field, path, at)
            if key == "relationships":
                expect(entry.get("predicate"), str, field, path, f"{at}.predicate")
                for side in ("subject", "object"):
                    _check_object(expect(entry.get(side), dict, field, path, f"{at}.{side}"), field, path,
                                  f"{at}.{side}")
                kept.append({"predicate": entry["predicate"], "subject": _compact(entry["subject"]),
                             "object": _compact(entry["object"])})
            else:
                _check_object(entry, field, path, at)
                kept.append(_compact(entry))
        grouped.setdefault(image_id, []).extend(kept)
    return grouped


def _compact(obj: dict) -> dict:
    """What the loader uses of an object (synsets, attributes and the rest of the file are dropped)."""
    return {"object_id": obj["object_id"], "x": obj["x"], "y": obj["y"], "w": obj["w"], "h": obj["h"],
            "name": object_name(obj)}


def _check_object(obj: dict, field: str, path: str, where: str) -> None:
    for key in ("object_id", "x", "y", "w", "h"):
        expect(obj.get(key), (int, float) if key != "object_id" else int, field, path, f"{where}.{key}")
    names = obj.get("names")
    if not isinstance(obj.get("name"), str) and not (isinstance(names, list) and names
                                                     and isinstance(names[0], str)):
        raise malformed(field, path, where, "no 'name' or 'names'")


def assign_splits(ids: list[int], val_size: int, test_size: int, seed: int) -> dict[str, list[int]]:
    """Test and val images drawn with ``seed``, the rest train; each split keeps the input order."""
    if val_size < 0 or test_size < 0:
        raise ConfigError("val_size and test_size must be >= 0", field="val_size" if val_size < 0 else "test_size")
    order = np.random.default_rng(seed).permutation(len(ids))
    part = np.zeros(len(ids), dtype=np.int8)  # 0 train, 1 val, 2 test
    part[order[:test_size]] = 2
    part[order[test_size:test_size + val_size]] = 1
    return {name: [ids[i] for i in np.flatnonzero(part == k)] for k, name in enumerate(SPLITS)}


@hookimpl
def register_datasets(register):
    register("visual-genome", VisualGenome)
