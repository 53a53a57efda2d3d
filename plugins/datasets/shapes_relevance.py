"""Exact relevance for ``shapes``: which images each caption is true of, decided from the scene annotations.

A caption is true of an image when every object it mentions exists in the image with the stated colour,
shape and (if said) size, the objects it mentions being distinct objects of the image, and its relation
(if any) holds between such objects. Relations are the generator's (:mod:`shapes_scenes`): relation
``r`` of object a w.r.t. object b compares their bounding-box centres along the axis with the larger
difference (ties go to the horizontal axis), so every ordered pair of objects stands in exactly one of
"left of", "right of", "above", "below" — "a above b" is false when a is higher but further to the side.

Captions follow the generator's grammar, every paraphrase included::

    [there is | a picture of | an image with] NP
    [there is | a picture of | an image with] NP (and | with) NP [(and | with) NP]
    [there is | a picture of | an image with] NP [is] (left of | to the left of | right of |
        to the right of | above | over | below | beneath) NP
    NP = (a | an) [small | large] <colour> <shape>

(case, repeated spaces and a final full stop are ignored; the generator itself never combines the
``relation`` form with a prefix other than "there is"). Anything else raises ``ValueError``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from harness_plugins.datasets.shapes_scenes import (
    _LIST_JOINERS, _LIST_PREFIXES, _REL_PHRASES, _REL_STRUCTS, _SINGLE_PREFIXES, COLORS, SHAPES, SIZES)

__all__ = ["CaptionMeaning", "parse_caption", "caption_relevance", "relations_from_bboxes"]

# Booleans per chunk of captions x images x object slots: ~16 MB of work arrays.
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class CaptionMeaning:
    """What a caption asserts: its objects, each ``(color, shape, size)`` as indices into ``COLORS``,
    ``SHAPES`` and ``SIZES`` (size -1: not said), and ``relation``, the index into ``RELATIONS`` of
    ``objects[0]`` w.r.t. ``objects[1]``, or -1 when the caption states no relation."""

    objects: tuple[tuple[int, int, int], ...]
    relation: int = -1


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


def _build_parser() -> tuple[re.Pattern, dict[str, int]]:
    phrase_relation = {phrase: r for r, variants in enumerate(_REL_PHRASES) for phrase in variants}
    prefixes = {p.strip() for p in (*_SINGLE_PREFIXES, *_LIST_PREFIXES, *(s[0] for s in _REL_STRUCTS))} - {""}
    verbs = {s[1].strip() for s in _REL_STRUCTS} - {""}  # "is"
    joiners = {j.strip() for j in _LIST_JOINERS}

    def noun_phrase(i: int) -> str:
        return (rf"an? (?:(?P<size{i}>{_alternatives(SIZES)}) )?(?P<color{i}>{_alternatives(COLORS)}) "
                rf"(?P<shape{i}>{_alternatives(SHAPES)})")

    join = rf" (?:{_alternatives(joiners)}) "
    relation = rf"(?: (?:{_alternatives(verbs)}))? (?P<relation>{_alternatives(phrase_relation)}) "
    # a relation joins exactly two noun phrases (checked after matching)
    pattern = (rf"(?:(?:{_alternatives(prefixes)}) )?{noun_phrase(0)}"
               rf"(?:(?:{relation}|{join}){noun_phrase(1)}(?:{join}{noun_phrase(2)})?)?")
    return re.compile(pattern), phrase_relation


_PARSER, _PHRASE_RELATION = _build_parser()


def parse_caption(caption: str) -> CaptionMeaning:
    """The :class:`CaptionMeaning` of a caption of the ``shapes`` grammar; ``ValueError`` otherwise."""
    if not isinstance(caption, str):
        raise ValueError(f"a shapes caption must be a string, got {caption!r}")
    text = " ".join(caption.lower().split()).removesuffix(".").rstrip()
    m = _PARSER.fullmatch(text)
    if m is None or (m.group("relation") and m.group("color2")):
        raise ValueError(f"not a caption of the shapes grammar: {caption!r}")
    objects = []
    for i in range(3):
        if m.group(f"color{i}") is None:
            break
        size = m.group(f"size{i}")
        objects.append((COLORS.index(m.group(f"color{i}")), SHAPES.index(m.group(f"shape{i}")),
                        SIZES.index(size) if size else -1))
    relation = _PHRASE_RELATION[m.group("relation")] if m.group("relation") else -1
    return CaptionMeaning(tuple(objects), relation)


def relations_from_bboxes(obj_bbox: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The generator's relation ids ``[N, M, M]`` (a w.r.t. b, -1 when a == b or either is absent) from
    bounding boxes ``[N, M, 4]`` (x0, y0, x1, y1) and a presence mask ``[N, M]``."""
    box = np.asarray(obj_bbox, dtype=np.int64)
    cx, cy = box[..., 0] + box[..., 2], box[..., 1] + box[..., 3]  # doubled centres: integers
    dx = cx[:, :, None] - cx[:, None, :]
    dy = cy[:, :, None] - cy[:, None, :]
    rel = np.where(np.abs(dx) >= np.abs(dy), np.where(dx < 0, 0, 1), np.where(dy < 0, 2, 3))
    m = box.shape[1]
    ok = present[:, :, None] & present[:, None, :] & ~np.eye(m, dtype=bool)
    return np.where(ok, rel, -1).astype(np.int8)


def caption_relevance(captions: Sequence[str], extras: Mapping[str, Any]) -> sp.csr_array:
    """Which images each caption is true of: a boolean scipy.sparse CSR ``[len(captions), n_images]``.

    ``extras`` are a split's scene annotations (first axis = image): ``obj_color``, ``obj_shape`` and
    ``obj_size`` (int ``[N, M]``, -1 for no object), optionally ``n_objects`` (``[N]``: slots from there
    on are empty), and ``relations`` (int ``[N, M, M]``, the id in ``RELATIONS`` of object a w.r.t.
    object b) or, without it, ``obj_bbox`` (``[N, M, 4]``, relations derived as the generator does).
    A caption is true of an image when its objects can be assigned to distinct objects of the image with
    the stated colour, shape and (if said) size, such that the stated relation holds from the first to
    the second. Vectorised over images and captions, one pass per caption form and assignment of
    mentioned objects to object slots.
    """
    color = np.asarray(extras["obj_color"], dtype=np.int64)
    shape = np.asarray(extras["obj_shape"], dtype=np.int64)
    size = np.asarray(extras["obj_size"], dtype=np.int64)
    n_images, n_slots = color.shape
    if shape.shape != color.shape or size.shape != color.shape:
        raise ValueError(f"obj_color, obj_shape and obj_size must have one shape, got {color.shape}, "
                         f"{shape.shape} and {size.shape}")
    present = (color >= 0) & (shape >= 0)
    if "n_objects" in extras:
        present &= np.arange(n_slots)[None, :] < np.asarray(extras["n_objects"], dtype=np.int64)[:, None]
    if "relations" in extras:
        relations = np.asarray(extras["relations"], dtype=np.int64)
    elif "obj_bbox" in extras:
        relations = relations_from_bboxes(extras["obj_bbox"], present)
    else:
        relations = None
    if relations is not None and relations.shape != (n_images, n_slots, n_slots):
        raise ValueError(f"relations must be [N, M, M] = {(n_images, n_slots, n_slots)}, got {relations.shape}")

    # Parse each distinct caption once; encode its objects as descriptors (colour, shape, size or any).
    n_sizes = len(SIZES) + 1
    n_desc = len(COLORS) * len(SHAPES) * n_sizes
    meaning: dict[str, CaptionMeaning] = {}
    n_texts = len(captions)
    n_obj = np.zeros(n_texts, dtype=np.int64)
    desc = np.zeros((n_texts, 3), dtype=np.int64)
    rel = np.full(n_texts, -1, dtype=np.int64)
    for j, caption in enumerate(captions):
        mc = meaning.get(caption)
        if mc is None:
            mc = meaning[caption] = parse_caption(caption)
        n_obj[j], rel[j] = len(mc.objects), mc.relation
        for i, (c, s, z) in enumerate(mc.objects):
            desc[j, i] = (c * len(SHAPES) + s) * n_sizes + z + 1
    if relations is None and (rel >= 0).any():
        raise ValueError("captions state relations, but extras has neither 'relations' nor 'obj_bbox'")

    # match[d, slot, image]: object `slot` of the image fits descriptor d.
    d = np.arange(n_desc)
    d_color, d_shape, d_size = d // (len(SHAPES) * n_sizes), (d // n_sizes) % len(SHAPES), d % n_sizes - 1
    match = (present[None] & (color[None] == d_color[:, None, None]) & (shape[None] == d_shape[:, None, None])
             & ((d_size[:, None, None] < 0) | (size[None] == d_size[:, None, None])))
    match = np.ascontiguousarray(match.transpose(0, 2, 1))  # [desc, slot, image]

    rows, cols = [], []
    step = max(1, _CHUNK_ELEMENTS // max(1, n_images * n_slots))
    for k in np.unique(n_obj):
        for with_relation in (False, True):
            group = np.flatnonzero((n_obj == k) & ((rel >= 0) == with_relation))
            for c0 in range(0, len(group), step):
                idx = group[c0:c0 + step]
                truth = np.zeros((len(idx), n_images), dtype=bool)
                # every assignment of the caption's objects to distinct object slots
                for slots in itertools.permutations(range(n_slots), int(k)):
                    t = match[desc[idx, 0], slots[0]].copy()
                    for i in range(1, int(k)):
                        t &= match[desc[idx, i], slots[i]]
                    if with_relation:
                        t &= relations[None, :, slots[0], slots[1]] == rel[idx, None]
                    truth |= t
                r, c = np.nonzero(truth)
                rows.append(idx[r])
                cols.append(c)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return sp.csr_array((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n_texts, n_images))
