"""Tests of the embedded ``shapes`` dataset: layout, determinism, caption/geometry agreement, caching."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest
import torch

from harness.data import Dataset, Split
from harness_plugins.datasets import shapes
from harness_plugins.datasets.shapes import (COLOR_RGB, COLORS, RELATIONS, SHAPES, SIZES, ShapesDataset,
                                    clear_memory_cache, generate_split)

N = 600  # spans more than two generator chunks
S = 64
NP_RE = re.compile(r"\b(a|an) (?:(small|large) )?(%s) (%s)\b" % ("|".join(COLORS), "|".join(SHAPES)))
REL_WORDS = {"left": 0, "right": 1, "above": 2, "over": 2, "below": 3, "beneath": 3}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache, and never let one test see another's memoised splits."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture(scope="module")
def split() -> Split:
    return generate_split("test", N, image_size=S, seed=0)


def _centres(bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (bbox[..., 0] + bbox[..., 2]) / 2.0, (bbox[..., 1] + bbox[..., 3]) / 2.0


def _relation(bbox: np.ndarray, a: int, b: int) -> int:
    """Reference rule: compare centres on the axis with the larger difference (ties: horizontal)."""
    cx, cy = _centres(bbox)
    dx, dy = cx[a] - cx[b], cy[a] - cy[b]
    if abs(dx) >= abs(dy):
        return 0 if dx < 0 else 1
    return 2 if dy < 0 else 3


def _assert_splits_equal(x: Split, y: Split) -> None:
    assert torch.equal(x.images, y.images)
    assert list(x.texts) == list(y.texts)
    np.testing.assert_array_equal(x.text_to_image, y.text_to_image)
    assert x.extras.keys() == y.extras.keys()
    for key in x.extras:
        assert x.extras[key].dtype == y.extras[key].dtype, key
        np.testing.assert_array_equal(x.extras[key], y.extras[key], err_msg=key)


# --- layout -------------------------------------------------------------------------------------------


def test_split_layout_shapes_and_dtypes(split):
    assert isinstance(split.images, torch.Tensor)
    assert split.images.dtype == torch.uint8 and tuple(split.images.shape) == (N, 3, S, S)
    assert isinstance(split.texts, list) and len(split.texts) == 5 * N
    assert all(isinstance(t, str) and t for t in split.texts)
    np.testing.assert_array_equal(split.text_to_image, np.repeat(np.arange(N), 5))
    expected = {"labels": (np.int64, (N,)), "gaze": (np.float16, (N, S, S)), "n_objects": (np.int8, (N,)),
                "obj_shape": (np.int8, (N, 3)), "obj_color": (np.int8, (N, 3)), "obj_size": (np.int8, (N, 3)),
                "obj_bbox": (np.int16, (N, 3, 4)), "relations": (np.int8, (N, 3, 3)),
                "mentions": (np.bool_, (N, 5, 3)), "is_holdout": (np.bool_, (N,))}
    assert set(split.extras) == set(expected)
    for key, (dtype, shape) in expected.items():
        assert split.extras[key].dtype == dtype and split.extras[key].shape == shape, key


def test_objects_are_padded_and_valid(split):
    e = split.extras
    n = e["n_objects"].astype(int)
    assert set(np.unique(n)) == {1, 2, 3}
    present = np.arange(3)[None, :] < n[:, None]
    for key, high in (("obj_shape", len(SHAPES)), ("obj_color", len(COLORS)), ("obj_size", len(SIZES))):
        assert (e[key][~present] == -1).all() and (e[key][present] >= 0).all() and (e[key][present] < high).all()
    assert (e["obj_bbox"][~present] == -1).all()
    combos = e["obj_color"].astype(int) * len(SHAPES) + e["obj_shape"]
    for i in range(N):  # colour+shape combinations are unique within an image, so captions are unambiguous
        assert len(set(combos[i, : n[i]])) == n[i]
    # The label is the class of the primary object, named "<color> <shape>" in class_names order.
    names = ShapesDataset(cache=False).info.class_names
    assert [names[label] for label in e["labels"]] == [
        f"{COLORS[c]} {SHAPES[s]}" for c, s in zip(e["obj_color"][:, 0], e["obj_shape"][:, 0])]


def test_bboxes_inside_image_disjoint_and_cover_all_drawn_pixels(split):
    e = split.extras
    box = e["obj_bbox"].astype(int)
    present = e["obj_shape"] >= 0
    pb = box[present]
    assert (pb[:, :2] >= 0).all() and (pb[:, 2:] <= S).all() and (pb[:, 2:] > pb[:, :2]).all()
    for a in range(3):
        for b in range(a + 1, 3):
            both = present[:, a] & present[:, b]
            overlap_x = np.minimum(box[:, a, 2], box[:, b, 2]) > np.maximum(box[:, a, 0], box[:, b, 0])
            overlap_y = np.minimum(box[:, a, 3], box[:, b, 3]) > np.maximum(box[:, a, 1], box[:, b, 1])
            assert not (both & overlap_x & overlap_y).any()
    # Background stays dark; every bright pixel lies inside some object's box.
    ys, xs = np.arange(S)[:, None], np.arange(S)[None, :]
    inside = np.zeros((N, S, S), dtype=bool)
    for k in range(3):
        b = box[:, k, :, None, None]
        inside |= present[:, k, None, None] & (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])
    bright = split.images.numpy().max(axis=1) > 40
    assert not (bright & ~inside).any()


@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_pixel_at_bbox_centre_has_object_colour(image_size):
    s = generate_split("val", 120, image_size=image_size, seed=3)
    e = s.extras
    images = s.images.numpy()
    idx, slot = np.nonzero(e["obj_shape"] >= 0)
    box = e["obj_bbox"][idx, slot].astype(int)
    cx, cy = (box[:, 0] + box[:, 2]) // 2, (box[:, 1] + box[:, 3]) // 2
    pixels = images[idx, :, cy, cx]  # [objects, 3]
    np.testing.assert_array_equal(pixels, COLOR_RGB[e["obj_color"][idx, slot]])
    # Large objects are bigger than small ones of the same shape.
    width = box[:, 2] - box[:, 0]
    sizes, kinds = e["obj_size"][idx, slot], e["obj_shape"][idx, slot]
    for k in range(len(SHAPES)):
        small, large = width[(kinds == k) & (sizes == 0)], width[(kinds == k) & (sizes == 1)]
        if len(small) and len(large):
            assert small.max() < large.min()


# --- determinism --------------------------------------------------------------------------------------


def test_same_seed_is_identical_and_other_seed_differs():
    a = generate_split("train", 300, seed=7)
    b = generate_split("train", 300, seed=7)
    _assert_splits_equal(a, b)
    c = generate_split("train", 300, seed=8)
    assert not torch.equal(a.images, c.images)
    assert a.texts != c.texts
    assert not np.array_equal(a.extras["obj_bbox"], c.extras["obj_bbox"])


def test_splits_are_independent_streams():
    a, b = generate_split("val", 100, seed=0), generate_split("test", 100, seed=0)
    assert not torch.equal(a.images, b.images)


def test_changing_train_size_leaves_val_and_test_identical():
    small = ShapesDataset(train_size=100, val_size=50, test_size=300, cache=False)
    test_small, val_small = small.split("test"), small.split("val")
    clear_memory_cache()  # force a fresh generation, not a memo hit
    large = ShapesDataset(train_size=700, val_size=50, test_size=300, cache=False)
    _assert_splits_equal(test_small, large.split("test"))
    _assert_splits_equal(val_small, large.split("val"))
    assert len(small.split("train")) == 100 and len(large.split("train")) == 700


def test_smaller_split_is_a_prefix_of_a_larger_one():
    short, long = generate_split("test", 300, seed=1), generate_split("test", 600, seed=1)
    assert torch.equal(short.images, long.images[:300])
    assert short.texts == long.texts[:1500]
    for key in short.extras:
        np.testing.assert_array_equal(short.extras[key], long.extras[key][:300], err_msg=key)


def test_dataset_fingerprint_is_stable():
    kwargs = dict(train_size=30, val_size=10, test_size=20, cache=False)
    first = ShapesDataset(**kwargs).fingerprint()
    clear_memory_cache()
    assert ShapesDataset(**kwargs).fingerprint() == first
    assert ShapesDataset(**kwargs, seed=1).fingerprint() != first


# --- captions, relations, gaze --------------------------------------------------------------------------


def test_captions_agree_with_objects_relations_and_mentions(split):
    e = split.extras
    kinds = set()
    for i in range(N):
        objects = {(COLORS[e["obj_color"][i, k]], SHAPES[e["obj_shape"][i, k]]): k
                   for k in range(e["n_objects"][i])}
        box = e["obj_bbox"][i].astype(float)
        for j in range(5):
            caption = split.texts[5 * i + j]
            found = NP_RE.findall(caption)
            assert found, caption
            slots = []
            for article, size, color, shape in found:
                assert (color, shape) in objects, (caption, objects)
                k = objects[(color, shape)]
                slots.append(k)
                first_word = size or color
                assert article == ("an" if first_word[0] in "aeiou" else "a"), caption
                if size:
                    assert SIZES[e["obj_size"][i, k]] == size, caption
            assert set(slots) == set(np.flatnonzero(e["mentions"][i, j])), caption
            relation_words = [w for w in caption.split() if w in REL_WORDS]
            if relation_words:
                assert len(found) == 2 and len(relation_words) == 1, caption
                expected = _relation(box, slots[0], slots[1])
                assert REL_WORDS[relation_words[0]] == expected, (caption, box)
                assert e["relations"][i, slots[0], slots[1]] == expected
                kinds.add("relation")
            else:
                kinds.add("single" if len(found) == 1 else "list")
                if len(found) > 1:  # a list names every object once
                    assert sorted(slots) == list(range(e["n_objects"][i])), caption
        # Caption 0 names the primary (labelled) object first.
        first = NP_RE.search(split.texts[5 * i])
        assert objects[(first.group(3), first.group(4))] == 0
    assert kinds == {"single", "relation", "list"}
    assert any(re.search(r"\b(small|large)\b", t) for t in split.texts)
    assert any(not re.search(r"\b(small|large)\b", t) for t in split.texts)


def test_captions_paraphrase_each_relation():
    texts = " | ".join(generate_split("test", 200, seed=0).texts)
    for phrase in ("left of", "to the left of", "right of", "to the right of", "above", "over", "below",
                   "beneath", "there is", " is ", " and ", " with "):
        assert phrase in texts, phrase


def test_relations_match_bbox_centres(split):
    e = split.extras
    for i in range(N):
        n = e["n_objects"][i]
        for a in range(3):
            for b in range(3):
                rel = e["relations"][i, a, b]
                if a < n and b < n and a != b:
                    assert rel == _relation(e["obj_bbox"][i].astype(float), a, b)
                    assert e["relations"][i, b, a] == rel ^ 1  # left<->right, above<->below
                else:
                    assert rel == -1
    assert set(np.unique(e["relations"])) == {-1, 0, 1, 2, 3}
    assert len(RELATIONS) == 4


def test_gaze_is_a_distribution_peaking_on_a_mentioned_object(split):
    e = split.extras
    gaze = e["gaze"].astype(np.float32)
    assert (gaze > 0).all() and np.isfinite(gaze).all()
    np.testing.assert_allclose(gaze.sum(axis=(1, 2)), 1.0, atol=1e-2)
    peak = gaze.reshape(N, -1).argmax(axis=1)
    py, px = peak // S, peak % S
    mentioned = e["mentions"].any(axis=1)
    box = e["obj_bbox"].astype(int)
    hit = (mentioned & (px[:, None] >= box[..., 0]) & (px[:, None] < box[..., 2])
           & (py[:, None] >= box[..., 1]) & (py[:, None] < box[..., 3]))
    assert hit.any(axis=1).all()
    # The most-mentioned object draws the most gaze.
    counts = e["mentions"].sum(axis=1)
    idx = np.flatnonzero(e["n_objects"] >= 2)
    cx, cy = _centres(box)
    top = counts[idx].argmax(axis=1)
    at = gaze[idx, cy[idx, top].astype(int), cx[idx, top].astype(int)]
    assert (at >= gaze[idx].max(axis=(1, 2)) * 0.9).mean() > 0.95


# --- holdout ------------------------------------------------------------------------------------------


def test_holdout_combos_absent_from_train_present_in_test():
    held = ["red circle", "blue square", "green cross"]
    ds = ShapesDataset(train_size=600, val_size=20, test_size=600, holdout=held, cache=False)
    assert ds.holdout == ("red circle", "green cross", "blue square")  # in class order

    def combos(s):
        e = s.extras
        return {f"{COLORS[c]} {SHAPES[k]}" for c, k in zip(e["obj_color"][e["obj_color"] >= 0],
                                                           e["obj_shape"][e["obj_shape"] >= 0])}

    def flags(s):
        e = s.extras
        names = np.array([[f"{COLORS[c]} {SHAPES[k]}" if c >= 0 else "" for c, k in zip(cr, kr)]
                          for cr, kr in zip(e["obj_color"], e["obj_shape"])])
        return np.isin(names, held).any(axis=1)

    train, test = ds.split("train"), ds.split("test")
    assert not combos(train) & set(held)
    assert not train.extras["is_holdout"].any()
    assert set(held) <= combos(test)
    np.testing.assert_array_equal(test.extras["is_holdout"], flags(test))
    assert test.extras["is_holdout"].any()
    # Holdout removes combinations from train only: test content equals the no-holdout test split.
    clear_memory_cache()
    plain = ShapesDataset(train_size=600, val_size=20, test_size=600, cache=False).split("test")
    assert torch.equal(plain.images, test.images) and plain.texts == test.texts
    assert not plain.extras["is_holdout"].any()


# --- caching ------------------------------------------------------------------------------------------


def test_disk_cache_round_trip_without_pickle(tmp_path, monkeypatch):
    root = tmp_path / "disk"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(root))
    kwargs = dict(train_size=40, val_size=10, test_size=30, holdout=["red circle"])
    ds = ShapesDataset(**kwargs)
    fresh = {name: ds.split(name) for name in ("train", "test")}
    for name in ("train", "test"):
        path = ds.cache_path(name)
        assert path.parent == root / "shapes" and path.is_file()
        assert path.stem == ds.cache_key(name)
        with np.load(path, allow_pickle=False) as z:  # would raise on any object array
            assert all(z[key].dtype != object for key in z.files)
        with zipfile.ZipFile(path) as zf:
            assert all(info.filename.endswith(".npy") for info in zf.infolist())
    assert not list((root / "shapes").glob("*.tmp"))

    clear_memory_cache()

    def no_generation(*args, **kwargs):
        raise AssertionError("should have loaded from the disk cache")

    monkeypatch.setattr(shapes, "_generate", no_generation)
    again = ShapesDataset(**kwargs)
    for name in ("train", "test"):
        _assert_splits_equal(fresh[name], again.split(name))


def test_cache_key_depends_on_parameters_and_version(monkeypatch):
    base = ShapesDataset(cache=False)
    assert base.cache_key("test") == ShapesDataset(train_size=10, holdout=["red circle"]).cache_key("test")
    assert base.cache_key("train") != ShapesDataset(holdout=["red circle"]).cache_key("train")
    assert base.cache_key("test") != ShapesDataset(seed=1).cache_key("test")
    assert base.cache_key("test") != ShapesDataset(image_size=48).cache_key("test")
    old = base.cache_key("test")
    monkeypatch.setattr(shapes, "GENERATOR_VERSION", shapes.GENERATOR_VERSION + 1)
    assert base.cache_key("test") != old


def test_cache_false_writes_nothing_and_corrupt_file_is_regenerated(tmp_path, monkeypatch):
    root = tmp_path / "c"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(root))
    ShapesDataset(train_size=10, val_size=5, test_size=10, cache=False).split("test")
    assert not root.exists()
    clear_memory_cache()
    ds = ShapesDataset(train_size=10, val_size=5, test_size=10)
    good = ds.split("test")
    ds.cache_path("test").write_bytes(b"not a zip file")
    clear_memory_cache()
    with pytest.warns(UserWarning, match="unreadable"):
        again = ShapesDataset(train_size=10, val_size=5, test_size=10).split("test")
    _assert_splits_equal(good, again)
    with np.load(ds.cache_path("test"), allow_pickle=False) as z:  # rewritten with valid content
        assert z["images"].shape == (10, 3, 64, 64)


# --- info, vocabulary, registration, parameters ---------------------------------------------------------


def test_dataset_info_and_vocabulary(split):
    ds = ShapesDataset(cache=False)
    info = ds.info
    assert isinstance(ds, Dataset)
    assert info.name == "shapes" and info.image_shape == (3, 64, 64) and info.text_kind == "caption"
    assert info.vocab == sorted(set(info.vocab))
    assert set(info.word_categories) == set(info.vocab)
    assert set(info.word_categories.values()) == {"color", "shape", "size", "relation", "function"}
    for words, category in ((COLORS, "color"), (SHAPES, "shape"), (SIZES, "size")):
        assert all(info.word_categories[w] == category for w in words)
    assert {w for w, c in info.word_categories.items() if c == "relation"} == set(REL_WORDS)
    emitted = {w for t in split.texts for w in t.split()}
    assert emitted == set(info.vocab)  # every vocab word is used, and nothing outside it
    assert info.class_names == [f"{c} {s}" for c in COLORS for s in SHAPES]
    assert split.extras["labels"].min() >= 0 and split.extras["labels"].max() < len(info.class_names)


def test_registered_through_the_hook():
    registered = {}
    shapes.register_datasets(lambda name, factory: registered.setdefault(name, factory))
    assert registered == {"shapes": ShapesDataset}
    assert ShapesDataset.__doc__.strip().splitlines()[0]


def test_max_objects_and_small_images():
    ds = ShapesDataset(train_size=50, val_size=0, test_size=50, image_size=32, max_objects=1, cache=False)
    s = ds.split("train")
    assert tuple(s.images.shape) == (50, 3, 32, 32) and ds.info.image_shape == (3, 32, 32)
    assert (s.extras["n_objects"] == 1).all() and (s.extras["relations"] == -1).all()
    val = ds.split("val")
    assert len(val) == 0 and val.texts == [] and val.extras["gaze"].shape == (0, 32, 32)


@pytest.mark.parametrize("kwargs, param", [
    ({"train_size": 0}, "train_size"), ({"train_size": 2.5}, "train_size"), ({"val_size": -1}, "val_size"),
    ({"test_size": 0}, "test_size"), ({"image_size": 16}, "image_size"), ({"image_size": "64"}, "image_size"),
    ({"seed": -1}, "seed"), ({"seed": True}, "seed"), ({"max_objects": 0}, "max_objects"),
    ({"max_objects": 4}, "max_objects"), ({"cache": "yes"}, "cache"), ({"holdout": "red circle"}, "holdout"),
    ({"holdout": ["red"]}, "holdout"), ({"holdout": ["pink circle"]}, "holdout"),
    ({"holdout": ["red star"]}, "holdout"),
    ({"holdout": [f"{c} {s}" for c in COLORS for s in SHAPES][:-2]}, "holdout"),
])
def test_bad_parameters_raise_value_error_naming_them(kwargs, param):
    with pytest.raises(ValueError, match=param):
        ShapesDataset(**kwargs)


def test_bad_holdout_entry_lists_valid_words_and_unknown_split_is_rejected():
    with pytest.raises(ValueError) as err:
        ShapesDataset(holdout=["pink circle"])
    assert all(c in str(err.value) for c in COLORS) and all(s in str(err.value) for s in SHAPES)
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(cache=False).split("validation")
