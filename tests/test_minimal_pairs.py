"""The minimal-pairs probe: every pair exact (true caption true, false caption false of its image), the
words of the swaps, hand-computed percentages with ties, the bag-of-words control at exactly 50, an
order-reading scorer above it, and a real run on tiny shapes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import harness
from harness.components import EvalContext, TokenFeatures
from harness.data import DatasetInfo, Split
from harness.runner import run
from harness_plugins.datasets.shapes import ShapesDataset
from harness_plugins.datasets.shapes_relevance import caption_relevance, parse_caption
from harness_plugins.datasets.shapes_scenes import COLORS, SHAPES, VOCAB, generate_split
from harness_plugins.encoders.small import BagOfWords, Pixels
from harness_plugins.evaluators import minimal_pairs as mp
from harness_plugins.evaluators.minimal_pairs import (KINDS, METRICS, MinimalPairs, edit_candidates,
                                                      generate_pairs, pair_accuracy)

SAME_WORDS = ("swap_objects", "swap_colors", "swap_shapes")


@pytest.fixture(scope="module")
def split():
    return generate_split("test", 160, image_size=32, seed=3)


@pytest.fixture(scope="module")
def pairs(split):
    return generate_pairs(split.texts, split.text_to_image, split.extras, seed=0)


def _info():
    return ShapesDataset(train_size=1, val_size=0, test_size=1, image_size=32, cache=False).info


def _context(model, split):
    return EvalContext(model=model, split=split, train_split=split, dataset_info=_info())


def _combo(c, s):
    return COLORS.index(c), SHAPES.index(s)


# --- the pairs ------------------------------------------------------------------------------------------


def test_every_false_caption_is_false_and_every_true_caption_true_of_its_image(split, pairs):
    assert {p.kind for p in pairs} == set(KINDS)
    truth = caption_relevance([p.true_caption for p in pairs], split.extras).toarray()
    falsity = caption_relevance([p.false_caption for p in pairs], split.extras).toarray()
    rows, images = np.arange(len(pairs)), np.array([p.image for p in pairs])
    assert truth[rows, images].all()
    assert not falsity[rows, images].any()
    for p in pairs:
        assert split.text_to_image[p.text] == p.image and split.texts[p.text] == p.true_caption
        assert p.false_caption != p.true_caption
        assert set(p.false_caption.split()) <= set(VOCAB)  # the dataset's own words and grammar
        parse_caption(p.false_caption)
    # at most one pair per (true caption, kind); every caption is a true caption
    assert len({(p.text, p.kind) for p in pairs}) == len(pairs)
    assert sorted(p.text for p in pairs if p.kind == "replace_object") == list(range(len(split.texts)))


def test_each_kind_makes_its_own_edit(split, pairs):
    for p in pairs:
        t, f = parse_caption(p.true_caption), parse_caption(p.false_caption)
        assert f.relation == t.relation and len(f.objects) == len(t.objects)
        changed = [i for i, (a, b) in enumerate(zip(t.objects, f.objects)) if a != b]
        if p.kind == "swap_objects":
            assert t.relation >= 0 and f.objects == t.objects[::-1]
        elif p.kind in ("swap_colors", "swap_shapes"):
            attr = 0 if p.kind == "swap_colors" else 1
            a, b = changed
            assert f.objects[a][attr] == t.objects[b][attr] and f.objects[b][attr] == t.objects[a][attr]
            assert all(f.objects[i][1 - attr] == t.objects[i][1 - attr] and f.objects[i][2] == t.objects[i][2]
                       for i in (a, b))
        elif p.kind == "change_size":
            (a,) = changed
            assert t.objects[a][2] >= 0 and f.objects[a][:2] == t.objects[a][:2]
            assert f.objects[a][2] == 1 - t.objects[a][2]
        else:  # replace_object: a colour-shape combination the image does not have
            (a,) = changed
            present = {(int(c), int(s)) for c, s in zip(split.extras["obj_color"][p.image],
                                                         split.extras["obj_shape"][p.image]) if c >= 0}
            assert f.objects[a][:2] not in present and f.objects[a][2] == t.objects[a][2]


def test_swaps_use_exactly_the_words_of_the_true_caption(pairs):
    for kind in SAME_WORDS:
        chosen = [p for p in pairs if p.kind == kind]
        assert len(chosen) > 20
        for p in chosen:
            assert Counter(p.false_caption.split()) == Counter(p.true_caption.split())
    assert any(Counter(p.false_caption.split()) != Counter(p.true_caption.split())
               for p in pairs if p.kind == "change_size")


def test_hand_written_edits():
    caption = "a small red circle left of an orange square"
    present = {_combo("red", "circle"), _combo("orange", "square")}
    assert edit_candidates(caption, "swap_objects", present) == ["an orange square left of a small red circle"]
    # "a small orange circle left of a red square" would drop the word "an": not a same-words swap
    assert edit_candidates(caption, "swap_colors", present) == []
    assert edit_candidates(caption, "swap_shapes", present) == ["a small red square left of an orange circle"]
    assert edit_candidates(caption, "change_size", present) == ["a large red circle left of an orange square"]
    replaced = edit_candidates(caption, "replace_object", present)
    assert len(replaced) == 2 * (len(COLORS) * len(SHAPES) - 2) and len(set(replaced)) == len(replaced)
    assert "a small blue circle left of an orange square" in replaced
    assert "a small red circle left of an orange cross" in replaced
    assert "a small red circle left of a green square" in replaced  # the article follows the colour
    lists = "there is a blue cross with a green circle and a red diamond"
    present = {_combo("blue", "cross"), _combo("green", "circle"), _combo("red", "diamond")}
    assert edit_candidates(lists, "swap_objects", present) == []  # a list states no order
    assert edit_candidates(lists, "swap_colors", present) == [
        "there is a green cross with a blue circle and a red diamond",
        "there is a red cross with a green circle and a blue diamond",
        "there is a blue cross with a red circle and a green diamond"]
    assert edit_candidates(lists, "change_size", present) == []  # no size stated: none added
    assert edit_candidates("An image with a large yellow triangle.", "change_size", set()) == [
        "an image with a small yellow triangle"]


def test_pairs_are_deterministic_and_depend_only_on_seed_and_image(split, pairs):
    again = generate_pairs(split.texts, split.text_to_image, split.extras, seed=0)
    assert again == pairs
    other = generate_pairs(split.texts, split.text_to_image, split.extras, seed=1)
    assert other != pairs and [(p.image, p.kind) for p in other] == [(p.image, p.kind) for p in pairs]
    # a shorter split (a prefix of this one) has the same pairs for its images
    short = generate_split("test", 40, image_size=32, seed=3)
    assert generate_pairs(short.texts, short.text_to_image, short.extras, seed=0) == \
        [p for p in pairs if p.image < 40]
    first = generate_pairs(split.texts, split.text_to_image, split.extras, seed=0, captions="first")
    firsts = {int(np.flatnonzero(split.text_to_image == i)[0]) for i in range(len(split))}
    assert first and all(p.text in firsts and split.texts[p.text] == p.true_caption for p in first)
    assert first == [p for p in pairs if p.text in firsts]  # a caption's draws do not depend on the others


# --- the metric -----------------------------------------------------------------------------------------


def test_pair_accuracy_by_hand_with_ties():
    true = [1.0, 2.0, 3.0, 0.5, 0.0, 7.0, float("nan")]
    false = [0.0, 2.0, 4.0, 0.5, 1.0, -1.0, 0.0]
    kinds = ["swap_objects", "swap_objects", "swap_colors", "swap_colors", "swap_colors", "change_size",
             "change_size"]
    got = pair_accuracy(true, false, kinds)
    # credits: 1, ½ | 0, ½, 0 | 1, 0 (NaN loses); kinds without pairs left out, their counts 0
    assert got == pytest.approx({"swap_objects": 75.0, "swap_colors": 100 / 6, "change_size": 50.0,
                                 "overall": 100 * 3 / 7, "n_swap_objects": 2.0, "n_swap_colors": 3.0,
                                 "n_swap_shapes": 0.0, "n_change_size": 2.0, "n_replace_object": 0.0,
                                 "n_overall": 7.0}, abs=1e-12)
    assert list(got) == ["swap_objects", "swap_colors", "change_size", "overall",
                         *(f"n_{k}" for k in METRICS)]
    assert all(isinstance(v, float) for v in got.values())
    assert pair_accuracy([], [], []) == {f"n_{k}": 0.0 for k in METRICS}
    with pytest.raises(ValueError, match="one kind per pair"):
        pair_accuracy([1.0], [0.0, 1.0], ["swap_objects"])


class IndexModel:
    """Embeds an image as its index and a caption as its index in a list; ``score`` is ``fn``."""

    cosine_scores = False

    def __init__(self, fn):
        self.fn, self.texts, self.calls = fn, [], 0

    def embed_images(self, images):
        return torch.as_tensor(np.asarray(images)[:, :1], dtype=torch.float64)

    def embed_texts(self, texts):
        self.texts = list(texts)
        return torch.arange(len(self.texts), dtype=torch.float64)[:, None]

    def score(self, image_emb, text_emb):
        self.calls += 1
        return torch.tensor([[self.fn(int(i), self.texts[int(t)]) for t in text_emb[:, 0]]
                             for i in image_emb[:, 0]], dtype=torch.float64)


def _indexed(split):
    """The split with each image replaced by its index (IndexModel reads it back)."""
    return Split(split.name, images=np.arange(len(split))[:, None], texts=split.texts,
                 text_to_image=split.text_to_image, extras=split.extras)


def test_evaluate_uses_the_method_pair_scores_of_each_pair(split, pairs, monkeypatch):
    def fn(image, text):  # many ties: words are few and their counts small
        return float((len(text.split()) + text.count("red") + image) % 4)

    monkeypatch.setattr(mp, "_SCORE_BLOCK_PAIRS", 500)  # many blocks of images
    model = IndexModel(fn)
    got = MinimalPairs().evaluate(_context(model, _indexed(split)))
    assert model.calls > 5
    want = {}
    for kind in METRICS:
        chosen = [p for p in pairs if kind in ("overall", p.kind)]
        credit = [(fn(p.image, p.true_caption) > fn(p.image, p.false_caption))
                  + 0.5 * (fn(p.image, p.true_caption) == fn(p.image, p.false_caption)) for p in chosen]
        want[kind] = 100 * sum(credit) / len(chosen)
        want[f"n_{kind}"] = float(len(chosen))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert 0 < got["overall"] < 100 and got["overall"] != 50


def test_an_order_reading_scorer_beats_bag_of_words(split):
    class Oracle(IndexModel):  # reads the whole caption, word order included: exact truth
        def score(self, image_emb, text_emb):
            truth = caption_relevance(self.texts, split.extras).toarray().T.astype(float)
            return torch.as_tensor(truth[image_emb[:, 0].long()][:, text_emb[:, 0].long()])

    def relation_reader(image, text):  # reads only "<first object> <relation> <second object>"
        meaning = parse_caption(text)
        if meaning.relation < 0:
            return 0.0
        combos = list(zip(split.extras["obj_color"][image].tolist(), split.extras["obj_shape"][image].tolist()))
        slots = [combos.index(o[:2]) if o[:2] in combos else -1 for o in meaning.objects]
        return float(min(slots) >= 0 and split.extras["relations"][image, slots[0], slots[1]] == meaning.relation)

    got = MinimalPairs().evaluate(_context(Oracle(None), _indexed(split)))
    assert all(got[k] == 100.0 for k in METRICS)
    order = MinimalPairs().evaluate(_context(IndexModel(relation_reader), _indexed(split)))
    assert order["swap_objects"] == 100.0  # where bag-of-words scores exactly 50
    assert 50.0 < order["swap_colors"] < 100.0  # swaps within lists tie
    assert order["change_size"] == 50.0  # it ignores sizes


class BagOfWordsModel:
    """A fixed image encoder (pixels, projected by a fixed random matrix) and bag-of-words texts: a model
    that cannot see word order. ``cosine_scores`` False scores by a plain dot product on the same
    embeddings, through ``score``; token features give every word as a location-free token."""

    def __init__(self, info, cosine=True, tokens=False):
        self.pixels, self.words = Pixels(size=4, dataset_info=info), BagOfWords(dataset_info=info)
        generator = torch.Generator().manual_seed(0)
        self.project = torch.randn(self.pixels.output_dim, self.words.output_dim, generator=generator)
        self.cosine_scores, self.tokens = cosine, tokens

    def embed_images(self, images):
        return self.pixels(self.pixels.prepare(images)) @ self.project

    def embed_texts(self, texts):
        emb = self.words(self.words.prepare(texts))
        return TokenFeatures(emb[:, None, :]) if self.tokens else emb

    def score(self, image_emb, text_emb):
        if isinstance(text_emb, TokenFeatures):
            text_emb = text_emb.features[:, 0]
        return image_emb @ text_emb.T


@pytest.mark.parametrize("cosine,tokens", [(True, False), (False, False), (False, True)])
def test_bag_of_words_scores_exactly_fifty_on_the_word_preserving_swaps(split, cosine, tokens):
    model = BagOfWordsModel(_info(), cosine, tokens)
    got = MinimalPairs().evaluate(_context(model, split))
    for kind in SAME_WORDS:
        assert got[kind] == 50.0, kind
        assert got[f"n_{kind}"] > 20
    assert got["change_size"] != 50.0 and got["replace_object"] != 50.0  # other words: scores differ


def test_cosine_path_agrees_with_the_method_scores(split):
    rng = np.random.default_rng(0)
    table = {}

    class Random(BagOfWordsModel):
        def embed_texts(self, texts):
            return torch.as_tensor(np.stack([table.setdefault(t, rng.normal(size=8)) for t in texts]),
                                   dtype=torch.float32)

        def embed_images(self, images):
            return torch.as_tensor(rng.normal(size=(len(images), 8)), dtype=torch.float32)

        def score(self, image_emb, text_emb):
            normalize = torch.nn.functional.normalize
            return normalize(image_emb, dim=-1) @ normalize(text_emb, dim=-1).T

    a = MinimalPairs().evaluate(_context(Random(_info(), cosine=True), split))
    rng = np.random.default_rng(0)
    table.clear()
    b = MinimalPairs().evaluate(_context(Random(_info(), cosine=False), split))
    assert a == b and 30 < a["overall"] < 70


# --- the evaluator --------------------------------------------------------------------------------------


def test_datasets_without_scene_annotations_are_refused_clearly():
    plain = Split("test", images=np.zeros((2, 3)), texts=["a red circle", "a blue square"],
                  text_to_image=[0, 1], extras={"labels": np.array([0, 1])})
    context = EvalContext(model=IndexModel(lambda i, t: 0.0), split=plain, train_split=plain,
                          dataset_info=DatasetInfo(name="plain"))
    with pytest.raises(ValueError, match="minimal-pairs needs a dataset with scene annotations.*plain"):
        MinimalPairs().evaluate(context)
    for bad in ({"seed": -1}, {"seed": 1.5}, {"seed": True}, {"captions": "some"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MinimalPairs(**bad)
        with pytest.raises(Exception, match=next(iter(bad))):
            harness.create("evaluator", "minimal-pairs", **bad)


def test_declared_metrics_units_and_chance(split):
    evaluator = harness.create("evaluator", "minimal-pairs")
    assert isinstance(evaluator, MinimalPairs)
    assert evaluator.metric_names() == [*METRICS, *(f"n_{k}" for k in METRICS)]
    assert all(evaluator.unit(k) == "%" for k in METRICS) and evaluator.unit("n_overall") is None
    assert evaluator.chance(None) == {k: 50.0 for k in METRICS}


def test_methods_on_tiny_shapes_report_the_probe(tmp_path):
    """A closed-form bag-of-words method (exactly 50 on the swaps), a pooled dual encoder and a match-map
    method (token features scored by its own pair scores) through the runner."""
    tiny = {"image": {"name": "small-cnn", "channels": [8, 8]}, "text": {"name": "gru", "word_dim": 8,
                                                                          "hidden_dim": 8}}
    config = {
        "name": "probe",
        "dataset": {"name": "shapes", "train_size": 128, "val_size": 0, "test_size": 48, "image_size": 32},
        "seeds": [0],
        "defaults": {"encoders": tiny, "embed_dim": 16, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}},
        "methods": [
            {"name": "cca", "estimator": {"name": "linear-cca", "k": 8, "reg": 0.1},
             "encoders": {"image": {"name": "pixels", "size": 4}, "text": {"name": "bag-of-words"}}},
            {"name": "infonce", "loss": {"name": "infonce"}},
            {"name": "matchmap", "loss": {"name": "matchmap"},
             "encoders": {"image": {**tiny["image"], "pool": "none"}, "text": {**tiny["text"], "pool": "none"}}},
        ],
        "evaluators": [{"name": "minimal-pairs"}],
        "report": {"metrics": ["minimal-pairs/overall", "minimal-pairs/swap_objects"]},
    }
    outcome = run(config, tmp_path, progress=False)
    results = {r.method: r for r in outcome.results}
    for result in results.values():
        assert result.status == "ok", result.error
        assert set(result.metrics) == {f"minimal-pairs/{m}" for m in MinimalPairs().metric_names()}
        assert 0 <= result.metrics["minimal-pairs/overall"] <= 100
        assert result.metrics["minimal-pairs/n_overall"] == sum(
            result.metrics[f"minimal-pairs/n_{k}"] for k in KINDS) > 100
        assert result.chance["minimal-pairs/overall"] == 50.0
        assert result.units["minimal-pairs/overall"] == "%"
    assert {r.metrics["minimal-pairs/n_overall"] for r in results.values()} == \
        {results["cca"].metrics["minimal-pairs/n_overall"]}  # the same pairs for every method
    assert results["cca"].metrics["minimal-pairs/swap_objects"] == 50.0
    assert results["cca"].metrics["minimal-pairs/swap_colors"] == 50.0
    assert results["cca"].metrics["minimal-pairs/swap_shapes"] == 50.0
    assert "minimal-pairs/overall" in outcome.table


def test_a_dataset_without_scene_annotations_is_a_config_error_before_training(toy_config):
    from harness.errors import ConfigError
    from harness.validation import prepare
    toy_config["evaluators"].append({"name": "minimal-pairs"})
    with pytest.raises(ConfigError, match="minimal-pairs needs a dataset with scene annotations") as info:
        prepare(toy_config)
    assert info.value.field == "evaluators[minimal-pairs]"
