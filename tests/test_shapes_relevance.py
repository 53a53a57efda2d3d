"""Tests of exact caption relevance on ``shapes``: hand-built scenes for every caption form, paraphrase,
relation word, size and absent object, and generated splits (every caption true of its own image,
agreement with a slow per-pair reference written here)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import scipy.sparse as sp

from harness.data import Dataset
from harness_plugins.datasets.shapes import COLORS, RELATIONS, SHAPES, SIZES, ShapesDataset, generate_split
from harness_plugins.datasets.shapes_relevance import (CaptionMeaning, caption_relevance, parse_caption,
                                                       relations_from_bboxes)

# --- hand-built scenes ------------------------------------------------------------------------------

# (colour, shape, size, centre x, centre y); y grows downwards
SCENES = [
    [("red", "circle", "small", 10, 30), ("blue", "square", "large", 50, 30)],  # 0: circle left of square
    [("red", "circle", "large", 30, 10), ("green", "triangle", "small", 30, 50)],  # 1: circle above triangle
    # 2: the circle is right of the square (dx 30 beats dy 15, though it is also lower); the cross is
    # below both
    [("blue", "square", "large", 10, 10), ("red", "circle", "small", 40, 25), ("orange", "cross", "small", 40, 55)],
    [("orange", "cross", "large", 30, 30)],  # 3: a single object
    [],  # 4: no object at all
    [("red", "circle", "small", 10, 30), ("red", "circle", "large", 50, 30)],  # 5: two red circles
]


def _relation(a, b) -> int:
    """The spec, written here: the axis with the larger centre difference decides, ties horizontal."""
    dx, dy = a[3] - b[3], a[4] - b[4]
    if abs(dx) >= abs(dy):
        return RELATIONS.index("left of" if dx < 0 else "right of")
    return RELATIONS.index("above" if dy < 0 else "below")


def scene_extras(scenes=SCENES, slots=3):
    n = len(scenes)
    ex = {"obj_color": np.full((n, slots), -1, np.int8), "obj_shape": np.full((n, slots), -1, np.int8),
          "obj_size": np.full((n, slots), -1, np.int8), "obj_bbox": np.full((n, slots, 4), -1, np.int16),
          "relations": np.full((n, slots, slots), -1, np.int8),
          "n_objects": np.array([len(s) for s in scenes], np.int8)}
    for i, objects in enumerate(scenes):
        for k, (color, shape, size, x, y) in enumerate(objects):
            ex["obj_color"][i, k], ex["obj_shape"][i, k] = COLORS.index(color), SHAPES.index(shape)
            ex["obj_size"][i, k] = SIZES.index(size)
            ex["obj_bbox"][i, k] = (x - 3, y - 3, x + 4, y + 4)  # pixel edges around the centre pixel
            for j, other in enumerate(objects):
                if j != k:
                    ex["relations"][i, k, j] = _relation(objects[k], other)
    return ex


ALL_RED_CIRCLES = {0, 1, 2, 5}
CASES = [
    # single objects, every prefix; sizes; absent objects; case and a full stop
    ("a red circle", ALL_RED_CIRCLES),
    ("there is a red circle", ALL_RED_CIRCLES),
    ("a picture of a red circle", ALL_RED_CIRCLES),
    ("an image with a red circle", ALL_RED_CIRCLES),
    ("A Red  Circle.", ALL_RED_CIRCLES),
    ("a small red circle", {0, 2, 5}),
    ("a large red circle", {1, 5}),
    ("a blue square", {0, 2}),
    ("a small blue square", set()),
    ("a purple diamond", set()),
    ("an orange cross", {2, 3}),
    ("there is a large orange cross", {3}),
    # relations, every phrase and paraphrase
    ("a red circle left of a blue square", {0}),
    ("a red circle to the left of a blue square", {0}),
    ("there is a red circle left of a blue square", {0}),
    ("a red circle is left of a blue square", {0}),
    ("a red circle is to the left of a blue square", {0}),
    ("a blue square right of a red circle", {0}),
    ("a blue square to the right of a red circle", {0}),
    ("there is a blue square to the right of a red circle", {0}),
    ("a blue square is right of a red circle", {0}),
    ("a blue square left of a red circle", {2}),
    ("a red circle is to the right of a blue square", {2}),
    ("a red circle above a green triangle", {1}),
    ("a red circle over a green triangle", {1}),
    ("a red circle is over a green triangle", {1}),
    ("a green triangle below a red circle", {1}),
    ("a green triangle beneath a red circle", {1}),
    ("there is a green triangle beneath a red circle", {1}),
    ("a green triangle above a red circle", set()),
    ("an orange cross below a red circle", {2}),
    ("an orange cross is beneath a blue square", {2}),
    ("a red circle below a blue square", set()),  # lower, but the horizontal offset dominates
    ("a red circle over an orange cross", {2}),
    # sizes inside relations
    ("a small red circle left of a large blue square", {0}),
    ("a large red circle left of a blue square", set()),
    ("a red circle left of a small blue square", set()),
    ("a small red circle left of a large red circle", {5}),
    ("a large red circle left of a small red circle", set()),
    ("a red circle left of a red circle", {5}),  # two distinct red circles
    ("a red circle right of a red circle", {5}),
    # lists, both joiners, any order
    ("a red circle and a blue square", {0, 2}),
    ("a red circle with a blue square", {0, 2}),
    ("a blue square and a red circle", {0, 2}),
    ("there is a red circle with a blue square", {0, 2}),
    ("a picture of a red circle and a green triangle", {1}),
    ("a red circle and a blue square and an orange cross", {2}),
    ("a red circle with a blue square and an orange cross", {2}),
    ("a picture of an orange cross with a red circle and a blue square", {2}),
    ("there is a small orange cross and a large blue square and a small red circle", {2}),
    ("a large orange cross and a blue square and a red circle", set()),
    ("a red circle and a purple diamond", set()),
    ("a red circle and a red circle", {5}),  # two distinct objects
    ("a red circle and a red circle and a red circle", set()),
]


@pytest.mark.parametrize("caption, expected", CASES, ids=[c for c, _ in CASES])
def test_hand_built_scenes(caption, expected):
    rel = caption_relevance([caption], scene_extras())
    assert isinstance(rel, sp.csr_array) and rel.dtype == bool and rel.shape == (1, len(SCENES))
    assert set(np.flatnonzero(rel.toarray()[0])) == expected


def test_many_captions_at_once_in_any_order():
    captions = [c for c, _ in CASES] * 3
    rel = caption_relevance(captions, scene_extras()).toarray()
    for row, (_, expected) in zip(rel, CASES * 3):
        assert set(np.flatnonzero(row)) == expected


def test_relations_are_derived_from_boxes_when_missing():
    ex = scene_extras()
    captions = [c for c, _ in CASES]
    want = caption_relevance(captions, ex)
    assert np.array_equal(relations_from_bboxes(ex["obj_bbox"], ex["obj_color"] >= 0), ex["relations"])
    without = {k: v for k, v in ex.items() if k != "relations"}
    assert (caption_relevance(captions, without) != want).nnz == 0
    del without["obj_bbox"]
    assert caption_relevance(["a red circle and a blue square"], without).toarray()[0].tolist() == \
        [True, False, True, False, False, False]
    with pytest.raises(ValueError, match="relations"):
        caption_relevance(["a red circle left of a blue square"], without)


def test_n_objects_hides_slots_beyond_it():
    ex = scene_extras()
    ex["n_objects"] = np.array([1, 2, 3, 1, 0, 2], np.int8)  # image 0 keeps only its red circle
    assert caption_relevance(["a blue square"], ex).toarray()[0].tolist() == [False, False, True] + [False] * 3


def test_parse_caption():
    red, blue = COLORS.index("red"), COLORS.index("blue")
    circle, square = SHAPES.index("circle"), SHAPES.index("square")
    small = SIZES.index("small")
    assert parse_caption("there is a small red circle to the right of a blue square") == CaptionMeaning(
        ((red, circle, small), (blue, square, -1)), RELATIONS.index("right of"))
    assert parse_caption("an image with a red circle") == CaptionMeaning(((red, circle, -1),), -1)
    assert parse_caption("a red circle with a blue square").relation == -1
    assert len(parse_caption("a red circle and a blue square with a red square").objects) == 3
    for paraphrase, name in (("over", "above"), ("beneath", "below"), ("to the left of", "left of")):
        assert parse_caption(f"a red circle {paraphrase} a blue square").relation == RELATIONS.index(name)


@pytest.mark.parametrize("caption", [
    "", "a red", "red circle", "a red circle and", "a circle", "two red circles", "a red circle near a blue square",
    "a red circle left of a blue square and a green cross", "a red circle left a blue square",
    "a red circle is a blue square", "a red circle to the above a blue square", "a huge red circle",
])
def test_captions_outside_the_grammar_raise(caption):
    with pytest.raises(ValueError, match="shapes grammar"):
        caption_relevance([caption], scene_extras())


# --- generated splits -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split():
    return generate_split("test", 1000, image_size=32, seed=0)


def test_every_caption_is_true_of_its_own_image(split):
    rel = caption_relevance(split.texts, split.extras)
    assert rel.shape == (len(split.texts), len(split))
    assert rel[np.arange(len(split.texts)), split.text_to_image].all()
    per_caption = np.asarray(rel.sum(axis=1)).ravel()
    assert (per_caption > 1).mean() > 0.3  # many captions are true of several images
    assert (per_caption == 1).any()  # and some of exactly one


@pytest.mark.parametrize("max_objects, seed", [(1, 1), (2, 2), (3, 3)])
def test_own_image_on_other_splits_and_object_counts(max_objects, seed):
    other = generate_split("train", 300, image_size=32, seed=seed, max_objects=max_objects,
                           holdout=["red circle"])
    rel = caption_relevance(other.texts, other.extras)
    assert rel[np.arange(len(other.texts)), other.text_to_image].all()


def test_generated_captions_use_every_paraphrase(split):
    """So the test above exercises the parser on every template of the generator."""
    text = "\n".join(split.texts)
    for part in ("to the left of", " left of", "to the right of", " right of", " above ", " over ",
                 " below ", " beneath ", " is ", " with ", " and ", "there is ", "a picture of ",
                 "an image with ", "small ", "large ", "an orange", "a red"):
        assert part in text, part


def test_generator_relations_equal_the_ones_from_boxes(split):
    ex = split.extras
    assert np.array_equal(relations_from_bboxes(ex["obj_bbox"], ex["obj_shape"] >= 0), ex["relations"])


def _slow_reference(caption, ex, i):
    """Word scan + loops over the objects of image i: true iff the caption holds."""
    words = caption.split()
    objects, relation = [], None
    words_rel = {"left": "left of", "right": "right of", "above": "above", "over": "above",
                 "below": "below", "beneath": "below"}
    for p, w in enumerate(words):
        if w in COLORS:
            size = words[p - 1] if words[p - 1] in SIZES else None
            objects.append((w, words[p + 1], size))
        if w in words_rel:
            relation = RELATIONS.index(words_rel[w])
    n = int(ex["n_objects"][i])
    have = [(COLORS[ex["obj_color"][i, k]], SHAPES[ex["obj_shape"][i, k]], SIZES[ex["obj_size"][i, k]])
            for k in range(n)]
    for assignment in itertools.permutations(range(n), len(objects)):
        fits = all(c == have[k][0] and s == have[k][1] and z in (None, have[k][2])
                   for (c, s, z), k in zip(objects, assignment))
        if fits and (relation is None or ex["relations"][i, assignment[0], assignment[1]] == relation):
            return True
    return False


def test_matches_a_slow_per_pair_reference(split):
    rng = np.random.default_rng(0)
    captions = [split.texts[j] for j in rng.choice(len(split.texts), 150, replace=False)]
    images = rng.choice(len(split), 60, replace=False)
    rel = caption_relevance(captions, split.extras).toarray()[:, images]
    want = np.array([[_slow_reference(c, split.extras, i) for i in images] for c in captions])
    assert want.any() and not want.all()
    assert np.array_equal(rel, want)


def test_5000_captions_by_1000_images_is_fast(split):
    t0 = time.perf_counter()
    caption_relevance(split.texts, split.extras)
    assert len(split.texts) == 5000 and time.perf_counter() - t0 < 10.0  # ~0.05 s measured


def test_dataset_relevance_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    assert Dataset().relevance("test") is None  # no exact relevance: evaluators use text_to_image
    ds = ShapesDataset(train_size=10, val_size=0, test_size=40, cache=False)
    rel = ds.relevance("test")
    test = ds.split("test")
    assert sp.issparse(rel) and rel.dtype == bool and rel.shape == (len(test.texts), len(test))
    assert rel[np.arange(len(test.texts)), test.text_to_image].all()
    assert (rel != caption_relevance(test.texts, test.extras)).nnz == 0
