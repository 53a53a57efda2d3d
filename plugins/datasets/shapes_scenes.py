"""The ``shapes`` scene generator: colours, shapes, sizes and relations, the caption grammar, rendering,
gaze maps and per-image annotations, vectorized with numpy and deterministic per seed (the dataset
plugin, its parameters and caches are in :mod:`harness_plugins.datasets.shapes`)."""


from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import torch

from harness.data import Split

# Bump whenever the output for given parameters changes, so stale disk caches are never read.
GENERATOR_VERSION = 1

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")  # relation id = index; inverse id = id ^ 1
COLOR_RGB = np.array([(220, 40, 40), (40, 190, 70), (50, 100, 235), (235, 215, 40), (160, 70, 210),
                      (245, 140, 30)], dtype=np.uint8)
SPLITS = ("train", "val", "test")
MAX_OBJECTS = 3
CAPTIONS_PER_IMAGE = 5
MIN_IMAGE_SIZE = 32

_GRID = 3
_N_COMBOS = len(COLORS) * len(SHAPES)
_BACKGROUND = np.array([16, 16, 22], dtype=np.uint8)  # plus uniform noise in [0, 16)
_RADIUS = (0.20, 0.34)  # object radius per size, as a fraction of a grid cell
_GAZE_SIGMA = 0.6  # blob sigma as a fraction of the object radius
_GAZE_FLOOR = 0.02  # mass spread uniformly, so no pixel has zero gaze
_GAZE_UNMENTIONED = 0.25  # blob weight of an object no caption mentions; mentioned ones get 1 + count
_N_OBJECT_WEIGHTS = (1.0, 2.0, 2.0)  # relative frequency of 1, 2, 3 objects
_KIND_P = (0.2, 0.6, 0.2)  # captions 1-4 of multi-object images: single, relation, list
_CHUNK = 256  # samples drawn per seed stream; makes a smaller split a prefix of a larger one
_MEMO_SIZE = 8

# Caption grammar. A caption is PREFIX + NP(a) + MID1 + NP(b) + MID2 + NP(c), unused parts empty.
_SINGLE_PREFIXES = ("", "there is ", "a picture of ", "an image with ")
_LIST_PREFIXES = ("", "there is ", "a picture of ")
_LIST_JOINERS = (" and ", " with ")
_REL_PHRASES = (("left of", "to the left of"), ("right of", "to the right of"), ("above", "over"),
                ("below", "beneath"))
_REL_STRUCTS = (("", " "), ("there is ", " "), ("", " is "))  # (prefix, text between NP(a) and the phrase)
_RELATION_WORDS = frozenset({"left", "right", "above", "below", "over", "beneath"})


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(color: str, shape: str, size: str | None) -> str:
    words = ([size] if size else []) + [color, shape]
    return " ".join([_article(words[0])] + words)


def _build_grammar() -> tuple[np.ndarray, np.ndarray, dict[tuple, int]]:
    """Noun-phrase table (index ((combo*2 + size)*2 + with_size), last entry "") and the small parts."""
    phrases = [_noun_phrase(COLORS[combo // len(SHAPES)], SHAPES[combo % len(SHAPES)],
                            SIZES[size] if with_size else None)
               for combo in range(_N_COMBOS) for size in range(2) for with_size in range(2)]
    phrases.append("")
    parts: dict[tuple, int] = {}
    texts: list[str] = []

    def add(key: tuple, text: str) -> None:
        parts[key] = len(texts)
        texts.append(text)

    add(("empty",), "")
    for i, p in enumerate(_SINGLE_PREFIXES):
        add(("single", i), p)
    for i, p in enumerate(_LIST_PREFIXES):
        add(("list", i), p)
    for i, j in enumerate(_LIST_JOINERS):
        add(("join", i), j)
    for i, (prefix, _) in enumerate(_REL_STRUCTS):
        add(("relpfx", i), prefix)
    for s, (_, verb) in enumerate(_REL_STRUCTS):
        for r, variants in enumerate(_REL_PHRASES):
            for v, phrase in enumerate(variants):
                add(("relmid", s, r, v), f"{verb}{phrase} ")
    string = np.dtypes.StringDType()
    return np.array(phrases, dtype=string), np.array(texts, dtype=string), parts


_NP_TABLE, _PART_TABLE, _PART = _build_grammar()
_NP_EMPTY = len(_NP_TABLE) - 1
_SINGLE_PFX = np.array([_PART[("single", i)] for i in range(len(_SINGLE_PREFIXES))])
_LIST_PFX = np.array([_PART[("list", i)] for i in range(len(_LIST_PREFIXES))])
_REL_PFX = np.array([_PART[("relpfx", i)] for i in range(len(_REL_STRUCTS))])
_JOIN = np.array([_PART[("join", i)] for i in range(len(_LIST_JOINERS))])
_REL_MID = np.array([[[_PART[("relmid", s, r, v)] for v in range(2)] for r in range(len(RELATIONS))]
                     for s in range(len(_REL_STRUCTS))])
_PERMS = np.array([(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])


def _vocabulary() -> tuple[list[str], dict[str, str]]:
    words = {w for text in list(_NP_TABLE) + list(_PART_TABLE) for w in str(text).split()}
    category = {**{c: "color" for c in COLORS}, **{s: "shape" for s in SHAPES},
                **{s: "size" for s in SIZES}, **{r: "relation" for r in _RELATION_WORDS}}
    vocab = sorted(words)
    return vocab, {w: category.get(w, "function") for w in vocab}


VOCAB, WORD_CATEGORIES = _vocabulary()
CLASS_NAMES = [f"{c} {s}" for c in COLORS for s in SHAPES]  # label = color_index * len(SHAPES) + shape


# --- geometry -----------------------------------------------------------------------------------------


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "triangle":  # apex up; dy grows downwards
        return (ay <= r) & (ax <= (dy + r) / 2)
    if shape == "diamond":
        return ax + ay <= r
    if shape == "cross":
        arm = r / 3
        return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    raise AssertionError(shape)


@lru_cache(maxsize=16)
def _geometry(image_size: int) -> dict[str, np.ndarray]:
    """Per-size stamps and extents, cell bounds and gaze profiles for one image size."""
    cell = image_size / _GRID
    radii = [f * cell for f in _RADIUS]
    half = int(np.floor(radii[-1])) + 1
    d = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    masks = np.zeros((len(SHAPES), len(SIZES), 2 * half + 1, 2 * half + 1), dtype=bool)
    for s, name in enumerate(SHAPES):
        for z, r in enumerate(radii):
            masks[s, z] = _shape_mask(name, dx, dy, r)
    # Masks are symmetric about the centre pixel in x and (by construction) span -e..e in y too.
    ext_x = np.array([[np.abs(dx[m]).max() for m in row] for row in masks])
    ext_y = np.array([[np.abs(dy[m]).max() for m in row] for row in masks])
    extent = np.floor(radii).astype(np.int64)  # worst case over shapes, used for placement
    assert (ext_x <= extent).all() and (ext_y <= extent).all()
    bounds = (np.arange(_GRID + 1) * image_size) // _GRID
    lo, hi = bounds[:-1], bounds[1:]
    # Object pixels stay in [lo + 1, hi - 2], leaving at least two background pixels between objects.
    room = (hi - lo)[:, None] - 2 - 2 * extent[None, :]  # [cell, size] number of centre positions
    assert (room >= 1).all()
    offsets = np.arange(-(image_size - 1), image_size)
    sigma = _GAZE_SIGMA * np.asarray(radii)
    profile = np.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))  # [size, 2S-1]
    return {"masks": masks, "half": half, "ext_x": ext_x, "ext_y": ext_y, "extent": extent,
            "cell_lo": lo, "room": room, "profile": profile}


# --- generation ---------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator, n: int, image_size: int, max_objects: int,
          allowed: np.ndarray) -> dict[str, np.ndarray]:
    """All random choices for n samples, in a fixed order (so a chunk is a pure function of its seed)."""
    p = np.asarray(_N_OBJECT_WEIGHTS[:max_objects])
    m = len(allowed)
    k = CAPTIONS_PER_IMAGE
    draws = {
        "n_objects": rng.choice(max_objects, size=n, p=p / p.sum()) + 1,
        "cells": rng.random((n, _GRID * _GRID)).argsort(axis=1)[:, :MAX_OBJECTS],
        # Three distinct positions in `allowed`: draw from shrinking ranges, then skip taken ones.
        "pick": np.stack([rng.integers(0, m - i, size=n) for i in range(MAX_OBJECTS)], axis=1),
        "size": rng.integers(0, len(SIZES), size=(n, MAX_OBJECTS)),
        "jitter": rng.random((n, MAX_OBJECTS, 2)),
        "kind": rng.random((n, k)),
        "a": rng.random((n, k)),
        "b": rng.random((n, k)),
        "perm": rng.integers(0, len(_PERMS), size=(n, k)),
        "variant": rng.integers(0, 12, size=(n, k)),  # lcm of the template counts, split below
        "with_size": rng.random((n, k, MAX_OBJECTS)) < 0.5,
    }
    # Raw 64-bit words are ~20x faster than rng.bytes for the per-pixel noise.
    words = -(-n * 3 * image_size * image_size // 8)
    draws["noise"] = rng.bit_generator.random_raw(words).astype("<u8", copy=False).view(np.uint8)
    return draws


def _distinct_combos(pick: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    p0, p1, p2 = pick[:, 0], pick[:, 1].copy(), pick[:, 2].copy()
    p1 += p1 >= p0
    lo, hi = np.minimum(p0, p1), np.maximum(p0, p1)
    p2 += p2 >= lo
    p2 += p2 >= hi
    return allowed[np.stack([p0, p1, p2], axis=1)]


def _render(d: dict[str, np.ndarray], image_size: int, images: np.ndarray, gaze: np.ndarray) -> dict[str, Any]:
    """Draw one chunk into the ``images`` and ``gaze`` slices; return its captions and object arrays."""
    S = image_size
    g = _geometry(S)
    n = len(d["n_objects"])
    slots = np.arange(MAX_OBJECTS)
    n_obj = d["n_objects"]
    present = slots[None, :] < n_obj[:, None]
    combo = d["combo"]
    shape, color, size = combo % len(SHAPES), combo // len(SHAPES), d["size"]
    col, row = d["cells"] % _GRID, d["cells"] // _GRID
    ext = g["extent"][size]
    cx = g["cell_lo"][col] + 1 + ext + (d["jitter"][..., 0] * g["room"][col, size]).astype(np.int64)
    cy = g["cell_lo"][row] + 1 + ext + (d["jitter"][..., 1] * g["room"][row, size]).astype(np.int64)
    ex, ey = g["ext_x"][shape, size], g["ext_y"][shape, size]
    bbox = np.stack([cx - ex, cy - ey, cx + ex + 1, cy + ey + 1], axis=-1)

    # Background, then stamp every present object's mask in one scatter per channel.
    noise = d["noise"][: n * 3 * S * S].reshape(n, 3, S, S)
    np.bitwise_and(noise, 15, out=images)
    images += _BACKGROUND[None, :, None, None]
    half = g["half"]
    stamp = g["masks"][shape, size] & present[:, :, None, None]  # [n, 3, P, P]
    span = np.arange(-half, half + 1)
    pix = (np.arange(n)[:, None, None, None] * (3 * S * S) + (cy[..., None, None] + span[:, None]) * S
           + (cx[..., None, None] + span[None, :]))
    where = pix[stamp]  # out-of-image patch pixels are never inside a mask
    rgb = np.repeat(COLOR_RGB[color.reshape(-1)], stamp.reshape(n * MAX_OBJECTS, -1).sum(axis=1), axis=0)
    flat = images.reshape(-1)
    for c in range(3):
        flat[where + c * S * S] = rgb[:, c]

    # Relation of a w.r.t. b from the (doubled, hence integer) bbox centres.
    ccx, ccy = bbox[..., 0] + bbox[..., 2], bbox[..., 1] + bbox[..., 3]
    dx = ccx[:, :, None] - ccx[:, None, :]
    dy = ccy[:, :, None] - ccy[:, None, :]
    rel = np.where(np.abs(dx) >= np.abs(dy), np.where(dx < 0, 0, 1), np.where(dy < 0, 2, 3))
    pair_ok = present[:, :, None] & present[:, None, :] & ~np.eye(MAX_OBJECTS, dtype=bool)
    relations = np.where(pair_ok, rel, -1)

    captions, mentions = _captions(d, n_obj, combo, size, relations)

    # Gaze: unit-peak Gaussian blobs weighted by mentions, each an outer product of two 1-D profiles.
    # Torch does the products (elementwise, so the result cannot depend on BLAS kernels or threads) and
    # the float16 cast, which numpy does ~50x slower for the many subnormal values.
    counts = mentions.sum(axis=1)
    weight = np.where(present, np.where(counts > 0, 1.0 + counts, _GAZE_UNMENTIONED), 0.0)
    axis = np.arange(S)
    prof = g["profile"]
    gx = prof[size[..., None], axis - cx[..., None] + S - 1]  # [n, 3, S]
    gy = prof[size[..., None], axis - cy[..., None] + S - 1]
    mass = (weight * gx.sum(-1) * gy.sum(-1)).sum(-1)
    gy *= (weight * ((1 - _GAZE_FLOOR) / mass)[:, None])[..., None]
    ty, tx = torch.from_numpy(gy.astype(np.float32)), torch.from_numpy(gx.astype(np.float32))
    blobs = torch.full((n, S, S), _GAZE_FLOOR / (S * S), dtype=torch.float32)
    for k in range(MAX_OBJECTS):
        blobs.addcmul_(ty[:, k, :, None], tx[:, k, None, :])
    torch.from_numpy(gaze).copy_(blobs)

    pad = lambda a: np.where(present, a, -1)  # noqa: E731
    extras = {
        "labels": combo[:, 0].astype(np.int64),
        "n_objects": n_obj.astype(np.int8),
        "obj_shape": pad(shape).astype(np.int8),
        "obj_color": pad(color).astype(np.int8),
        "obj_size": pad(size).astype(np.int8),
        "obj_bbox": np.where(present[..., None], bbox, -1).astype(np.int16),
        "relations": relations.astype(np.int8),
        "mentions": mentions,
    }
    return {"captions": captions, "extras": extras}


def _captions(d: dict[str, np.ndarray], n_obj: np.ndarray, combo: np.ndarray, size: np.ndarray,
              relations: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Five captions per image, vectorized over images and captions with numpy string ufuncs."""
    n, k = d["kind"].shape
    nn = n_obj[:, None]
    multi = nn >= 2
    kind = np.where(multi, np.searchsorted(np.cumsum(_KIND_P)[:-1], d["kind"], side="right"), 0)
    kind[:, 0] = np.where(multi[:, 0], 1, 0)  # caption 0 relates the primary object to another one
    a = np.minimum((d["a"] * nn).astype(np.int64), nn - 1)
    a[:, 0] = 0
    others = np.maximum(nn - 1, 1)
    b = (a + 1 + np.minimum((d["b"] * others).astype(np.int64), others - 1)) % nn
    # List order: a permutation of the present objects.
    order = _PERMS[d["perm"]]  # [n, k, 3]
    two = np.broadcast_to((n_obj == 2)[:, None], (n, k))
    flip = d["perm"] % 2
    order = np.where(two[..., None], np.stack([flip, 1 - flip, np.full_like(flip, -1)], -1), order)

    single, relation, listing = kind == 0, kind == 1, kind == 2
    first = np.where(listing, order[..., 0], a)
    second = np.where(relation, b, np.where(listing, order[..., 1], -1))
    third = np.where(listing & (nn == 3), order[..., 2], -1)
    v = d["variant"]
    rel = np.take_along_axis(relations.reshape(n, -1), (a * MAX_OBJECTS + np.maximum(b, 0)), axis=1)
    struct = (v // 2) % len(_REL_STRUCTS)
    prefix = np.select([single, relation], [_SINGLE_PFX[v % len(_SINGLE_PFX)], _REL_PFX[struct]],
                       _LIST_PFX[v % len(_LIST_PFX)])
    joiner = _JOIN[(v // 3) % len(_JOIN)]
    mid1 = np.select([single, relation], [_PART[("empty",)], _REL_MID[struct, np.maximum(rel, 0), v % 2]],
                     joiner)
    mid2 = np.where(third >= 0, _JOIN[0], _PART[("empty",)])

    def noun_phrases(obj: np.ndarray, position: int) -> np.ndarray:
        safe = np.maximum(obj, 0)
        c = np.take_along_axis(combo, safe, axis=1)
        z = np.take_along_axis(size, safe, axis=1)
        idx = (c * 2 + z) * 2 + d["with_size"][..., position]
        return np.where(obj >= 0, idx, _NP_EMPTY)

    text = _PART_TABLE[prefix]
    for part in (_NP_TABLE[noun_phrases(first, 0)], _PART_TABLE[mid1], _NP_TABLE[noun_phrases(second, 1)],
                 _PART_TABLE[mid2], _NP_TABLE[noun_phrases(third, 2)]):
        text = np.strings.add(text, part)

    mentions = np.zeros((n, k, MAX_OBJECTS), dtype=bool)
    for obj in (first, second, third):
        mentions |= obj[..., None] == np.arange(MAX_OBJECTS)
    return text.reshape(-1).tolist(), mentions


def _check_split(name: str) -> int:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; shapes has splits {list(SPLITS)}")
    return SPLITS.index(name)


def generate_split(name: str, size: int, *, image_size: int = 64, seed: int = 0,
                   holdout: Iterable[str] = (), max_objects: int = MAX_OBJECTS) -> Split:
    """Generate one split without any caching (``holdout`` combinations are excluded from train only)."""
    held = parse_holdout(holdout)
    _check_int("size", size, 0)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("seed", seed, 0)
    _check_int("max_objects", max_objects, 1, MAX_OBJECTS)
    data = _generate(name, size, image_size, seed, held, max_objects)
    return _to_split(name, data, held)


def _generate(name: str, size: int, image_size: int, seed: int, held: tuple[int, ...],
              max_objects: int) -> dict[str, Any]:
    split_index = _check_split(name)
    excluded = held if name == "train" else ()
    allowed = np.setdiff1d(np.arange(_N_COMBOS), np.asarray(excluded, dtype=np.int64))
    S = image_size
    images = np.empty((size, 3, S, S), dtype=np.uint8)
    captions: list[str] = []
    extras = {key: np.empty((size,) + shape, dtype=dtype) for key, (shape, dtype) in _layout(S).items()}
    for chunk, start in enumerate(range(0, size, _CHUNK)):
        # One independent stream per (seed, split, chunk): splits never share draws, and a smaller split
        # is a prefix of a larger one.
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, chunk]))
        d = _draw(rng, _CHUNK, S, max_objects, allowed)
        stop = min(start + _CHUNK, size)
        noise = d.pop("noise")  # the renderer reads only the first (stop - start) images' worth
        d = {key: value[: stop - start] for key, value in d.items()}
        d["noise"], d["combo"] = noise, _distinct_combos(d.pop("pick"), allowed)
        out = _render(d, S, images[start:stop], extras["gaze"][start:stop])
        captions.extend(out["captions"])
        for key, value in out["extras"].items():
            extras[key][start:stop] = value
    return {"images": images, "captions": captions, "extras": extras}


def _layout(S: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    k, m = CAPTIONS_PER_IMAGE, MAX_OBJECTS
    return {"labels": ((), np.int64), "gaze": ((S, S), np.float16), "n_objects": ((), np.int8),
            "obj_shape": ((m,), np.int8), "obj_color": ((m,), np.int8), "obj_size": ((m,), np.int8),
            "obj_bbox": ((m, 4), np.int16), "relations": ((m, m), np.int8), "mentions": ((k, m), bool)}


def _to_split(name: str, data: dict[str, Any], held: tuple[int, ...]) -> Split:
    extras = dict(data["extras"])
    combos = np.where(extras["obj_color"] >= 0,
                      extras["obj_color"].astype(np.int64) * len(SHAPES) + extras["obj_shape"], -1)
    extras["is_holdout"] = np.isin(combos, np.asarray(held, dtype=np.int64)).any(axis=1)
    n = len(data["images"])
    return Split(name=name, images=torch.from_numpy(data["images"]), texts=list(data["captions"]),
                 text_to_image=np.repeat(np.arange(n), CAPTIONS_PER_IMAGE), extras=extras)


# --- parameters ---------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        wanted = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {wanted}, got {value}")


def parse_holdout(holdout: Iterable[str]) -> tuple[int, ...]:
    """Turn ``["red circle", ...]`` into sorted class indices; raise ValueError naming ``holdout``."""
    if isinstance(holdout, str) or not isinstance(holdout, Iterable):
        raise ValueError(f"holdout must be a list of '<color> <shape>' strings, got {holdout!r}")
    found = set()
    for entry in holdout:
        words = entry.lower().split() if isinstance(entry, str) else []
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise ValueError(f"holdout entry {entry!r} is not '<color> <shape>'; colors: {', '.join(COLORS)}; "
                             f"shapes: {', '.join(SHAPES)}")
        found.add(COLORS.index(words[0]) * len(SHAPES) + SHAPES.index(words[1]))
    if _N_COMBOS - len(found) < MAX_OBJECTS:
        raise ValueError(f"holdout must leave at least {MAX_OBJECTS} of the {_N_COMBOS} color-shape "
                         f"combinations for the train split; it removes {len(found)}")
    return tuple(sorted(found))
