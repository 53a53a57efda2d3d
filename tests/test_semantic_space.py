"""The semantic-space probes: pure functions against sklearn/scipy and hand computations, and the
evaluator end to end on small ``shapes`` splits with models whose embeddings are known."""

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_samples

import harness
from harness.components import EvalContext, TokenFeatures
from harness.data import DatasetInfo, Split
from harness.metrics import (composed_query_precision, composition_accuracy, cosine_silhouette,
                             masked_mean, pc1_concreteness_r, precision_at_k, search_relevance)
from harness.runner import run
from harness_plugins.datasets.shapes import COLORS, SHAPES, ShapesDataset
from harness_plugins.evaluators.semantic_space import SemanticSpace, color_shape_order, load_ratings

# --- pure functions -----------------------------------------------------------------------------------


def test_masked_mean_ignores_padding_and_empty_rows_pool_to_zero():
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(features, mask).tolist() == [[2.0, 3.0], [0.0, 0.0]]
    assert masked_mean(features).tolist()[1] == [7.0, 7.0]


def test_silhouette_matches_sklearn_samples_and_a_hand_computation():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(40, 6)), rng.integers(0, 4, size=40)
    x[labels == 2] += 3.0  # one tight, distant group
    expected = silhouette_samples(x, labels, metric="cosine").mean()
    assert cosine_silhouette(torch.tensor(x, dtype=torch.float32), labels) == pytest.approx(expected, abs=1e-6)
    # e1 and (1, 1) in one group, e2 alone: cosine distances d12 = d23 = 1 - 1/sqrt(2), d13 = 1;
    # s1 = (1 - d12) / 1 = 1/sqrt(2), s2 = (d23 - d12) / d12 = 0, s3 = 0 (a group of one)
    hand = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    assert cosine_silhouette(hand, ["a", "a", "b"]) == pytest.approx(1 / np.sqrt(2) / 3)
    with pytest.raises(ValueError, match="groups"):
        cosine_silhouette(hand, ["a", "a", "a"])


def test_pc1_concreteness_matches_sklearn_pca_and_scipy_pearson():
    rng = np.random.default_rng(1)
    ratings = rng.uniform(1, 5, size=25)
    x = rng.normal(size=(25, 8)) + np.outer(ratings, rng.normal(size=8))
    pc1 = PCA(n_components=1).fit_transform(x)[:, 0]
    expected = abs(pearsonr(pc1, ratings).statistic)
    assert pc1_concreteness_r(x, ratings) == pytest.approx(expected, abs=1e-10)
    assert 0.0 < expected < 1.0
    assert pc1_concreteness_r(-3 * x + 7, ratings) == pytest.approx(expected, abs=1e-10)  # sign, offset
    assert np.isnan(pc1_concreteness_r(np.ones((4, 3)), [1, 2, 3, 4]))  # no component to correlate
    with pytest.raises(ValueError, match="at least 3"):
        pc1_concreteness_r(x[:2], ratings[:2])


def test_precision_at_k_by_hand_with_ties_sharing_credit():
    scores = [[0.9, 0.5, 0.5, 0.1]]
    relevant = [[False, True, False, True]]
    # top-1 is 0.9 (wrong); the second place goes to one of two tied items, one of them right
    assert precision_at_k(scores, relevant, 1).tolist() == [0.0]
    assert precision_at_k(scores, relevant, 2).tolist() == [0.25]
    assert precision_at_k(scores, relevant, 4).tolist() == [0.5]
    # without the first candidate both tied items are in the top 2; k is capped at 3 valid candidates
    valid = [[False, True, True, True]]
    assert precision_at_k(scores, relevant, 2, valid).tolist() == [0.5]
    assert precision_at_k(scores, relevant, 10, valid).tolist() == [pytest.approx(2 / 3)]
    # everything alike: the expected precision of a random order, the fraction relevant
    assert precision_at_k([[0.3] * 4], relevant, 1).tolist() == [0.5]


def test_composition_additive_2d_space_is_perfect():
    # phrase = colour + shape in 2-D, with every phrase in its own direction
    colors = np.array([[1.0, 0.0], [0.0, 1.0]])  # red, blue
    shapes = np.array([[1.0, 1.0], [3.0, 0.0]])  # circle, square
    phrases = colors[:, None, :] + shapes[None, :, :]  # (2,1) (4,0) / (1,2) (3,1)
    assert composition_accuracy(phrases, colors) == 100.0
    assert composition_accuracy(phrases, colors, exclude_input=False) == 100.0


def test_composition_excludes_the_input_phrase():
    # colour words barely move a phrase: "red circle" - "red" + "blue" stays closest to "red circle"
    # itself; with the input excluded the intended "blue circle" is the nearest remaining phrase
    colors = np.array([[0.01, 0.0], [0.0, 0.01]])
    phrases = np.array([[[1.0, 0.1], [0.1, 1.0]], [[1.0, 0.2], [0.2, 1.0]]])
    assert composition_accuracy(phrases, colors) == 100.0
    assert composition_accuracy(phrases, colors, exclude_input=False) == 0.0
    # a collapsed space ties every candidate: chance, 1 / (4 phrases - the input)
    assert composition_accuracy(np.ones((2, 2, 3)), np.ones((2, 3))) == pytest.approx(100 / 3)


def test_composition_matches_a_loop_over_quadruples():
    rng = np.random.default_rng(2)
    phrases, colors = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 5))
    flat = phrases.reshape(12, 5)
    flat_unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    right = total = 0
    for a, b, s in itertools.product(range(4), range(4), range(3)):
        if a == b:
            continue
        q = phrases[a, s] - colors[a] + colors[b]
        cos = flat_unit @ (q / np.linalg.norm(q))
        cos[a * 3 + s] = -np.inf
        right += int(np.argmax(cos) == b * 3 + s)
        total += 1
    assert 0 < right < total
    assert composition_accuracy(torch.tensor(phrases), colors) == pytest.approx(100 * right / total)


def test_search_relevance_by_hand():
    obj_color = [[0, 1, -1], [1, -1, -1], [2, 0, 1]]
    obj_shape = [[3, 2, -1], [2, -1, -1], [3, 3, 2]]
    rel = search_relevance(obj_color, obj_shape, query_colors=[1, 0], query_shapes=[2, 3])
    assert rel.tolist() == [[True, True, True], [True, False, True]]
    assert not search_relevance([[-1]], [[-1]], [-1], [-1]).any()  # padding never matches


def test_composed_query_precision_by_hand():
    # image 0 (the query, red circle) = e1; the word "blue" = 2·e2 (scale is ignored)
    images = torch.tensor([[5.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    words = torch.tensor([[0.0, 2.0]])
    relevant = [[True, False, True, False]]  # image 2 is the blue circle; image 0 never counts
    # alpha = 0.5: q = (e1 + e2)/sqrt2 -> image 2 (cos 1), then images 1 and 3 tied (cos 1/sqrt2)
    assert composed_query_precision(images, words, [0], relevant, k=1) == 100.0
    assert composed_query_precision(images, words, [0], relevant, k=2) == 50.0
    # alpha = 0: the image alone retrieves image 3 first; alpha = 1: the word alone retrieves image 1
    assert composed_query_precision(images, words, [0], relevant, k=1, alpha=0.0) == 0.0
    assert composed_query_precision(images, words, [0], relevant, k=1, alpha=1.0) == 0.0
    assert composed_query_precision(images, words, [0], relevant, k=2, alpha=1.0) == 50.0
    # two queries average; a block smaller than the queries changes nothing
    two = composed_query_precision(images, words.repeat(2, 1), [0, 3], [[True, False, True, False]] * 2,
                                   k=1, block=1)
    assert two == pytest.approx(100.0)  # query image 3 is e1 as well: image 2 wins again
    with pytest.raises(ValueError, match="alpha"):
        composed_query_precision(images, words, [0], relevant, alpha=1.5)


# --- the evaluator ------------------------------------------------------------------------------------


def word_space(info):
    """One one-hot dimension per vocabulary word."""
    return {w: torch.eye(len(info.vocab), dtype=torch.float64)[i] for i, w in enumerate(info.vocab)}


class BagOfWordsModel:
    """A text embeds as the sum of its words' one-hot vectors; image i as its objects' colour + shape
    words (``image_emb``, looked up because the evaluator embeds the whole split)."""

    cosine_scores = True

    def __init__(self, info, split, tokens=False):
        self.words, self.split, self.tokens = word_space(info), split, tokens
        extras = split.extras
        self.image_emb = torch.zeros(len(split), len(info.vocab), dtype=torch.float64)
        for i in range(len(split)):
            for c, s in zip(extras["obj_color"][i], extras["obj_shape"][i]):
                if c >= 0:
                    self.image_emb[i] += self.words[COLORS[c]] + self.words[SHAPES[s]]

    def embed_texts(self, texts):
        pooled = torch.stack([sum(self.words[w] for w in t.split()) for t in texts])
        if not self.tokens:
            return pooled
        # two tokens per text: the text's vector and a masked-out padding token of garbage
        features = torch.stack([pooled, torch.full_like(pooled, 50.0)], dim=1)
        return TokenFeatures(features, torch.tensor([[True, False]] * len(texts)))

    def embed_images(self, images):
        assert images is self.split.images
        return self.image_emb

    def score(self, image_emb, text_emb):
        raise AssertionError("semantic-space compares embeddings by cosine only")


@pytest.fixture(scope="module")
def single_object_shapes():
    return ShapesDataset(train_size=1, val_size=0, test_size=240, image_size=32, max_objects=1, cache=False)


def context_for(dataset, model=None, seed=0, tokens=False):
    split = dataset.split("test")
    model = model or BagOfWordsModel(dataset.info, split, tokens)
    return EvalContext(model=model, split=split, train_split=split, dataset_info=dataset.info, seed=seed)


def test_shapes_exposes_colour_and_shape_order_through_class_names(single_object_shapes):
    assert color_shape_order(single_object_shapes.info) == (list(COLORS), list(SHAPES))
    assert color_shape_order(DatasetInfo(name="x", class_names=["cat"])) is None


@pytest.mark.parametrize("tokens", [False, True])
def test_bag_of_words_model_on_single_object_shapes(single_object_shapes, tokens):
    ctx = context_for(single_object_shapes, tokens=tokens)
    evaluator = SemanticSpace(k=5, max_queries=10_000)
    metrics = evaluator.evaluate(ctx)
    assert set(metrics) == set(evaluator.metric_names())
    assert metrics["silhouette"] == pytest.approx(0.0, abs=1e-12)  # one-hot words: all equally far apart
    assert metrics["composition@1"] == 100.0  # "red circle" - "red" + "blue" = "blue circle" exactly
    assert metrics["n_rated"] == 30.0  # every shapes word has a Brysbaert rating
    # a query (c, s) + new colour w ranks the (w, s) images first, then the other (c, s) images:
    # precision@5 = min(#(w, s) images, 5) / 5, over every single-object image and new colour
    extras = ctx.split.extras
    combo = extras["obj_color"][:, 0].astype(int) * len(SHAPES) + extras["obj_shape"][:, 0]
    counts = np.bincount(combo, minlength=len(COLORS) * len(SHAPES))
    expected = [min(counts[w * len(SHAPES) + s], 5) / 5 for c, s in zip(combo // len(SHAPES), combo % len(SHAPES))
                for w in range(len(COLORS)) if w != c]
    assert metrics["image_search@5"] == pytest.approx(100 * np.mean(expected))
    assert metrics["image_search@5"] > 90.0
    chance = evaluator.chance(ctx)
    assert chance["composition@1"] == pytest.approx(100 / 29)
    expected_chance = [counts[w * len(SHAPES) + s] / (len(combo) - 1)
                       for c, s in zip(combo // len(SHAPES), combo % len(SHAPES)) for w in range(6) if w != c]
    assert chance["image_search@5"] == pytest.approx(100 * np.mean(expected_chance))


def test_image_search_queries_are_capped_deterministically_by_seed(single_object_shapes):
    evaluator = SemanticSpace(max_queries=20)
    first = evaluator._queries(context_for(single_object_shapes, seed=0))
    again = evaluator._queries(context_for(single_object_shapes, seed=0))
    other = evaluator._queries(context_for(single_object_shapes, seed=1))
    assert len(first[0]) == 20 and np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not (np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1]))
    colors = single_object_shapes.split("test").extras["obj_color"][first[0], 0]
    assert (first[1] != colors).all()  # always a new colour


def test_collapsed_model_scores_chance_and_concreteness_follows_its_dominant_direction(single_object_shapes):
    class Collapsed:
        cosine_scores = True

        def embed_texts(self, texts):
            return torch.ones(len(texts), 4)

        def embed_images(self, images):
            return torch.ones(len(images), 4)

    ctx = context_for(single_object_shapes, Collapsed())
    evaluator = SemanticSpace()
    metrics, chance = evaluator.evaluate(ctx), evaluator.chance(ctx)
    assert metrics["composition@1"] == pytest.approx(chance["composition@1"])
    assert metrics["image_search@5"] == pytest.approx(chance["image_search@5"])
    assert np.isnan(metrics["concreteness_r"])

    ratings = load_ratings()

    class Concrete(Collapsed):
        """Words spread mostly along their human concreteness rating, plus small noise."""

        def embed_texts(self, texts):
            rng = np.random.default_rng(0)
            return torch.tensor([[10 * ratings.get(t, 0.0), *rng.normal(scale=0.1, size=3)] for t in texts])

    r = evaluator.evaluate(context_for(single_object_shapes, Concrete()))["concreteness_r"]
    assert 0.99 < r <= 1.0


def test_custom_ratings_file(tmp_path, single_object_shapes):
    path = tmp_path / "ratings.csv"
    path.write_text("word,rating\nRed,4.0\ncircle,3.0\nsquare,1.5\nzebra,5.0\nsquare,2.5\nthe,\n")
    assert load_ratings(path) == {"red": 4.0, "circle": 3.0, "square": 2.0, "zebra": 5.0}
    ctx = context_for(single_object_shapes)
    metrics = SemanticSpace(ratings=str(path)).evaluate(ctx)
    assert metrics["n_rated"] == 3.0
    words = word_space(single_object_shapes.info)
    x = torch.stack([words["circle"], words["red"], words["square"]]).numpy()  # vocabulary order
    pc1 = PCA(n_components=1).fit_transform(x)[:, 0]
    assert metrics["concreteness_r"] == pytest.approx(abs(pearsonr(pc1, [3.0, 4.0, 2.0]).statistic))
    path.write_text("word,rating\nred,4.0\ncircle,3.0\n")
    assert "concreteness_r" not in SemanticSpace(ratings=str(path)).evaluate(ctx)  # under 3 rated words
    with pytest.raises(Exception, match="ratings"):
        harness.create("evaluator", "semantic-space", ratings=str(tmp_path / "missing.csv"))
    path.write_text("term,score\nred,4\n")
    with pytest.raises(ValueError, match="ratings.*columns"):
        SemanticSpace(ratings=str(path))


def test_metrics_a_dataset_cannot_support_are_left_out():
    info = DatasetInfo(name="words", vocab=["cat", "dog", "idea", "the"],
                       word_categories={"cat": "animal", "dog": "animal", "idea": "abstract", "the": "function"})
    split = Split("test", images=torch.zeros(3, 2), texts=[], text_to_image=[])

    class Model:
        def embed_texts(self, texts):
            return torch.eye(4)[: len(texts)] + torch.arange(len(texts))[:, None]

        def embed_images(self, images):
            raise AssertionError("no image search without colour/shape extras")

    ctx = EvalContext(model=Model(), split=split, train_split=split, dataset_info=info)
    evaluator = SemanticSpace()
    metrics = evaluator.evaluate(ctx)
    assert set(metrics) == {"silhouette", "n_rated", "concreteness_r"}
    assert evaluator.chance(ctx) == {}
    assert evaluator.evaluate(EvalContext(model=Model(), split=split, train_split=split,
                                          dataset_info=DatasetInfo(name="none"))) == {}


def test_registered_with_declared_metrics_units_and_parameter_checks():
    evaluator = harness.create("evaluator", "semantic-space", k=3)
    assert evaluator.metric_names() == ["silhouette", "concreteness_r", "n_rated", "composition@1",
                                        "image_search@3"]
    assert evaluator.unit("composition@1") == "%" and evaluator.unit("image_search@3") == "%"
    assert evaluator.unit("silhouette") is None and evaluator.higher_is_better("silhouette")
    for bad in ({"k": 0}, {"alpha": 2.0}, {"max_queries": 0}):
        with pytest.raises(Exception, match=next(iter(bad))):
            harness.create("evaluator", "semantic-space", **bad)


def test_trained_model_on_tiny_shapes_reports_every_metric(tmp_path):
    config = {
        "name": "semantic",
        "dataset": {"name": "shapes", "train_size": 128, "val_size": 1, "test_size": 64, "image_size": 32},
        "seeds": [0],
        "defaults": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                  "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                     "embed_dim": 16, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}},
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
        "evaluators": [{"name": "semantic-space", "k": 3, "max_queries": 20}],
        "report": {"metrics": ["semantic-space/composition@1", "semantic-space/image_search@3"]},
    }
    result = run(config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    names = {f"semantic-space/{m}" for m in ("silhouette", "concreteness_r", "n_rated", "composition@1",
                                             "image_search@3")}
    assert names == set(result.metrics)
    assert -1.0 <= result.metrics["semantic-space/silhouette"] <= 1.0
    assert 0.0 <= result.metrics["semantic-space/concreteness_r"] <= 1.0
    assert 0.0 <= result.metrics["semantic-space/image_search@3"] <= 100.0
    assert result.chance["semantic-space/composition@1"] == pytest.approx(100 / 29)
    assert result.units["semantic-space/image_search@3"] == "%"
