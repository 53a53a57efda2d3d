"""Small files in the exact published formats of the real-data loaders, written by the tests themselves:
random JPEGs/PNGs (PIL), Karpathy split files, COCO caption files, Visual Genome JSON, idx files, JSONL
and CSV caption lists, saliency maps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

WORDS = ["dog", "cat", "red", "blue", "ball", "sofa", "park", "car", "man", "tree"]


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 30),
                mode: str = "RGB") -> Path:
    """A random image of ``size`` (width, height); the suffix picks JPEG or PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


def sentence(rng: np.random.Generator, n: int = 5) -> str:
    return "A " + " ".join(rng.choice(WORDS, n)) + "."


def karpathy_file(root: Path, splits: dict[str, int], *, coco: bool = True, captions: int = 5,
                  seed: int = 0, write_images: bool = True, size: tuple[int, int] = (40, 30)) -> Path:
    """``dataset_coco.json`` (with ``filepath`` and ``cocoid``) or ``dataset_flickr30k.json`` (neither),
    with ``splits`` images per split name, and the images under ``root/images``."""
    rng = np.random.default_rng(seed)
    images, imgid = [], 0
    for split, n in splits.items():
        for _ in range(n):
            folder = "val2014" if split != "train" else "train2014"
            entry = {"filename": f"COCO_{folder}_{imgid:012d}.jpg" if coco else f"{1000 + imgid}.jpg",
                     "split": split, "imgid": imgid,
                     "sentences": [_karpathy_sentence(rng, imgid) for _ in range(captions)],
                     "sentids": list(range(imgid * captions, (imgid + 1) * captions))}
            if coco:
                entry.update(filepath=folder, cocoid=100000 + imgid)
            images.append(entry)
            if write_images:
                write_image(root / "images" / entry.get("filepath", "") / entry["filename"], rng, size)
            imgid += 1
    path = root / ("dataset_coco.json" if coco else "dataset_flickr30k.json")
    path.write_text(json.dumps({"images": images, "dataset": "coco" if coco else "flickr30k"}))
    return path


def _karpathy_sentence(rng: np.random.Generator, imgid: int) -> dict:
    raw = sentence(rng)
    return {"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": imgid, "sentid": 0}


def coco_files(root: Path, train: int, val: int, seed: int = 0) -> dict[str, Path]:
    """``annotations/captions_{train,val}2014.json`` and their images in ``train2014/``/``val2014/``."""
    rng = np.random.default_rng(seed)
    out, ann_id = {}, 1
    for part, n, first in (("train", train, 9), ("val", val, 100_000)):
        images, annotations = [], []
        for k in range(n):
            image_id = first + 7 * k
            name = f"COCO_{part}2014_{image_id:012d}.jpg"
            images.append({"license": 3, "file_name": name, "coco_url": "http://example/" + name,
                           "height": 30, "width": 40, "date_captured": "2013-11-14 17:02:52", "id": image_id})
            write_image(root / f"{part}2014" / name, rng)
            for _ in range(5):
                annotations.append({"image_id": image_id, "id": ann_id, "caption": sentence(rng)})
                ann_id += 1
        path = root / "annotations" / f"captions_{part}2014.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": {"year": 2014}, "licenses": [], "images": images,
                                    "annotations": annotations}))
        out[part] = path
    return out


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An idx file of unsigned bytes (MNIST's format), gzip-compressed when ``compress``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def idx_folder(root: Path, train: int = 60, test: int = 20, classes: int = 10, seed: int = 0) -> Path:
    """The four Fashion-MNIST files (28×28 images, labels 0–9) with random content."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % classes)
    return root


def rows(n_images: int, seed: int = 0, captions: int = 2) -> list[dict]:
    """(image, caption, split) rows: 60 % train, 20 % val, 20 % test, ``captions`` rows per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        split = "train" if i % 5 < 3 else "val" if i % 5 == 3 else "test"
        out += [{"image": f"photos/{i:05d}.jpg", "caption": sentence(rng), "split": split}
                for _ in range(captions)]
    return out


def image_text_folder(root: Path, n_images: int, fmt: str = "jsonl", seed: int = 0,
                      size: tuple[int, int] = (40, 30)) -> Path:
    """``root/pairs.{jsonl,csv}`` and the images under ``root/images``."""
    import csv

    rng = np.random.default_rng(seed)
    table = rows(n_images, seed)
    for image in dict.fromkeys(r["image"] for r in table):
        write_image(root / "images" / image, rng, size)
    path = root / f"pairs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in table))
    else:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["image", "caption", "split"])
            writer.writeheader()
            writer.writerows(table)
    return path


def visual_genome_files(root: Path, n_images: int = 12, seed: int = 0) -> dict[str, Path]:
    """``image_data.json``, ``objects.json`` and ``relationships.json`` (v1.2 layout) and the images in
    ``VG_100K/`` and ``VG_100K_2/``."""
    rng = np.random.default_rng(seed)
    names = ["man", "horse", "shirt", "street", "tree", "car"]
    predicates = ["on", "wearing", "next to", "ON", "has"]
    image_data, objects, relationships = [], [], []
    object_id = 1000
    for k in range(n_images):
        image_id = k + 1
        folder = "VG_100K" if k % 2 else "VG_100K_2"
        width, height = 80, 60
        write_image(root / folder / f"{image_id}.jpg", rng, (width, height))
        image_data.append({"image_id": image_id, "url": f"https://cs.stanford.edu/people/rak248/{folder}/"
                           f"{image_id}.jpg", "width": width, "height": height, "coco_id": None,
                           "flickr_id": None})
        objs = []
        for j in range(4):
            objs.append({"object_id": object_id, "x": int(rng.integers(0, 40)), "y": int(rng.integers(0, 30)),
                         "w": int(rng.integers(5, 40)), "h": int(rng.integers(5, 30)),
                         "names": [names[(k + j) % len(names)]], "synsets": []})
            object_id += 1
        objects.append({"image_id": image_id, "objects": objs})
        rels = []
        for j in range(3):
            s, o = objs[j], objs[j + 1]
            subject = {key: s[key] for key in ("object_id", "x", "y", "w", "h")} | {"name": s["names"][0]}
            rels.append({"relationship_id": 10 * image_id + j, "predicate": predicates[(k + j) % len(predicates)],
                         "synsets": [], "subject": subject, "object": dict(o)})
        relationships.append({"image_id": image_id, "relationships": rels})
    out = {}
    for name, data in (("image_data", image_data), ("objects", objects), ("relationships", relationships)):
        out[name] = root / f"{name}.json"
        out[name].write_text(json.dumps(data))
    return out
