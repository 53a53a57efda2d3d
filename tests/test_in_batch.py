"""The in-batch evaluator: hand-computed numbers on fixed embeddings, a loop reference, and a real run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import harness
from harness.components import EvalContext, TokenFeatures
from harness.data import DatasetInfo, Split
from harness.runner import run
from harness_plugins.evaluators.in_batch import InBatch, in_batch_metrics

E = math.e


class CosineModel:
    """Images and texts are their own embeddings; pair scores are cosines (counted, to see which path
    the evaluator takes)."""

    cosine_scores = True

    def __init__(self):
        self.score_calls = 0

    def embed_images(self, images):
        return torch.as_tensor(images, dtype=torch.float32)

    def embed_texts(self, texts):
        return torch.as_tensor(np.asarray(texts), dtype=torch.float32)

    def score(self, image_emb, text_emb):
        self.score_calls += 1
        normalize = torch.nn.functional.normalize
        return normalize(image_emb, dim=-1) @ normalize(text_emb, dim=-1).T


class NegativeDistanceModel(CosineModel):
    """A method with its own pair score: minus the L1 distance (never a cosine)."""

    cosine_scores = False

    def score(self, image_emb, text_emb):
        self.score_calls += 1
        return -torch.cdist(image_emb.double(), text_emb.double(), p=1)


class TokenModel(CosineModel):
    """Token features ([N, 2, D], the second token masked out for texts); score = dot of first tokens."""

    def embed_images(self, images):
        x = super().embed_images(images)
        return TokenFeatures(torch.stack([x, 100 + x], dim=1))

    def embed_texts(self, texts):
        y = super().embed_texts(texts)
        return TokenFeatures(torch.stack([y, -y], dim=1), torch.tensor([[True, False]] * len(y)))

    def score(self, image_emb, text_emb):
        self.score_calls += 1
        assert isinstance(image_emb, TokenFeatures) and isinstance(text_emb, TokenFeatures)
        return image_emb.features[:, 0] @ text_emb.features[:, 0].T


def context(model, images, texts, text_to_image):
    split = Split("test", images=np.asarray(images, dtype=np.float64),
                  texts=np.asarray(texts, dtype=np.float64), text_to_image=text_to_image)
    return EvalContext(model=model, split=split, train_split=split, dataset_info=DatasetInfo(name="fake"))


def assert_close(got, want):
    assert list(got) == list(want)
    for key in want:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key  # float32 cosines


# --- hand computations ---


def test_cosine_batches_with_ties_and_a_smaller_last_batch_by_hand():
    # batch 1 = images 0-2, batch 2 = images 3-4; text j describes image j
    images = [[1, 0], [1, 0], [0, 1], [1, 0], [0, 1]]
    texts = [[1, 0], [2, 0], [0, 3], [0, 1], [0, 1]]
    model = CosineModel()
    got = InBatch(batch_size=3, temperature=1.0).evaluate(context(model, images, texts, [0, 1, 2, 3, 4]))
    # S1 = [[1,1,0],[1,1,0],[0,0,1]] (symmetric): rows 0, 1 tie (misses), row 2 correct, both ways
    # S2 = [[0,0],[1,1]]: i2t both rows tie (misses); t2i rows of S2ᵀ = [[0,1],[0,1]]: row 1 correct
    accuracy = (2 + 1) / 10  # not the mean of batch means (2/6 + 1/4) / 2
    ce_i2t = 2 * (math.log(2 * E + 1) - 1) + (math.log(2 + E) - 1) + 2 * math.log(2)
    ce_t2i = 2 * (math.log(2 * E + 1) - 1) + (math.log(2 + E) - 1) + math.log(1 + E) + math.log(1 + E) - 1
    loss = 0.5 * (ce_i2t / 5 + ce_t2i / 5)
    avg = (1 + 1 + 1 + 0 + 1) / 5
    off = (1 + 0 + 1 + 0 + 0 + 0 + 0 + 1) / 8
    assert_close(got, {"accuracy": accuracy, "loss": loss, "avg_similarity": avg,
                       "similarity_gap": avg - off})
    assert model.score_calls == 0  # pooled cosine: the fast path, no call of the model's scorer
    chance = InBatch(batch_size=3).chance(context(model, images, texts, [0, 1, 2, 3, 4]))
    assert_close(chance, {"accuracy": 2 / 5, "loss": (3 * math.log(3) + 2 * math.log(2)) / 5,
                          "similarity_gap": 0.0})


def test_own_pair_scores_first_text_only_and_a_one_item_batch_by_hand():
    # scalars; score = -|x - y|. Texts in a scrambled order; image 0's first text is text 1 (y = 0),
    # image 1's is text 0 (y = 1), image 2's is text 3 (y = 4); texts 2 and 4 are later texts, unused;
    # image 3 has no text and is skipped.
    images = [[0], [1], [5], [7]]
    texts = [[1], [0], [3], [4], [100]]
    t2i = [1, 0, 0, 2, 1]
    model = NegativeDistanceModel()
    ctx = context(model, images, texts, t2i)
    got = InBatch(batch_size=2, temperature=0.5).evaluate(ctx)
    # batch 1: S = [[0, -1], [-1, 0]], all four rows correct; batch 2 = [[-1]]: one item, no negatives
    ce = math.log(1 + math.exp(-1 / 0.5))
    assert_close(got, {"accuracy": 1.0, "loss": ce, "avg_similarity": (0 + 0 - 1) / 3,
                       "similarity_gap": 0.0 - (-1.0)})
    assert model.score_calls == 2  # the method's pair scores, one call per batch
    assert_close(InBatch(batch_size=2).chance(ctx), {"accuracy": 0.5, "loss": math.log(2),
                                                     "similarity_gap": 0.0})
    # one batch of all three: S = [[0,-1,-4],[-1,0,-3],[-5,-4,-1]], every row still correct
    got = InBatch(batch_size=64, temperature=1.0).evaluate(ctx)
    s = np.array([[0, -1, -4], [-1, 0, -3], [-5, -4, -1.0]])
    lse = lambda m: np.log(np.exp(m).sum(axis=1))  # noqa: E731
    loss = 0.5 * (np.mean(lse(s) - np.diag(s)) + np.mean(lse(s.T) - np.diag(s)))
    assert_close(got, {"accuracy": 1.0, "loss": loss, "avg_similarity": -1 / 3,
                       "similarity_gap": -1 / 3 - (-18 / 6)})


def test_identical_embeddings_tie_everywhere_and_score_chance_loss():
    images, texts = [[1, 2]] * 4, [[3, 6]] * 4
    ctx = context(CosineModel(), images, texts, [0, 1, 2, 3])
    got = InBatch(batch_size=4, temperature=0.1).evaluate(ctx)
    assert got["accuracy"] == 0.0  # every row is a four-way tie: a miss
    assert got["loss"] == pytest.approx(math.log(4))
    assert InBatch(batch_size=4).chance(ctx)["loss"] == pytest.approx(math.log(4))
    assert got["avg_similarity"] == pytest.approx(1.0) and got["similarity_gap"] == pytest.approx(0.0)


def test_batch_size_one_reports_only_avg_similarity_and_no_chance():
    ctx = context(CosineModel(), [[1, 0], [0, 1]], [[1, 0], [1, 1]], [0, 1])
    evaluator = InBatch(batch_size=1)
    assert_close(evaluator.evaluate(ctx), {"avg_similarity": (1 + math.sqrt(0.5)) / 2})
    assert evaluator.chance(ctx) == {}
    assert in_batch_metrics([]) == {}


# --- against a plain loop reference ---


def reference(images, texts, t2i, batch_size, tau, score):
    """Pairs by a loop over texts, batches by slicing, every row scored by explicit Python loops."""
    first = {}
    for j, i in enumerate(t2i):
        first.setdefault(i, j)
    pairs = sorted(first.items())
    correct = rows = 0
    ce = diag_all = diag_multi = off = 0.0
    n_off = 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        b = len(batch)
        s = np.array([[score(images[i], texts[j]) for _, j in batch] for i, _ in batch])
        diag_all += sum(s[a, a] for a in range(b))
        if b == 1:
            continue
        rows += b
        diag_multi += sum(s[a, a] for a in range(b))
        off += sum(s[a, c] for a in range(b) for c in range(b) if a != c)
        n_off += b * (b - 1)
        for m in (s, s.T):
            for a in range(b):
                correct += all(m[a, a] > m[a, c] for c in range(b) if c != a)
                ce += math.log(sum(math.exp(m[a, c] / tau) for c in range(b))) - m[a, a] / tau
    return {"accuracy": correct / (2 * rows), "loss": ce / (2 * rows),
            "avg_similarity": diag_all / len(pairs), "similarity_gap": diag_multi / rows - off / n_off}


def cosine(x, y):
    return float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.mark.parametrize("model_cls, score", [
    (CosineModel, cosine),
    (NegativeDistanceModel, lambda x, y: -float(np.abs(np.asarray(x) - np.asarray(y)).sum())),
    (TokenModel, lambda x, y: float(np.dot(x, y))),
])
@pytest.mark.parametrize("batch_size", [4, 7, 50])
def test_matches_a_loop_reference_with_several_texts_per_image(model_cls, score, batch_size):
    rng = np.random.default_rng(batch_size)
    n_images, dim = 23, 5
    images = rng.normal(size=(n_images, dim)).round(3)
    t2i = rng.permutation(np.concatenate([np.arange(n_images - 1), rng.integers(0, n_images - 1, 15)]))
    texts = images[t2i] + rng.normal(scale=1.5, size=(len(t2i), dim)).round(3)  # image 22 has no text
    model = model_cls()
    got = InBatch(batch_size=batch_size, temperature=0.3).evaluate(context(model, images, texts, t2i))
    want = reference(images, texts, list(t2i), batch_size, 0.3, score)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert 0.05 < got["accuracy"] < 1.0  # neither trivial nor degenerate
    assert (model.score_calls == 0) == (model_cls is CosineModel)


# --- registration, parameters, a real run ---


def test_registered_with_declared_metrics_and_parameter_checks():
    evaluator = harness.create("evaluator", "in-batch")
    assert (evaluator.batch_size, evaluator.temperature) == (64, 0.07)
    assert evaluator.metric_names() == ["accuracy", "loss", "avg_similarity", "similarity_gap"]
    assert not evaluator.higher_is_better("loss") and evaluator.higher_is_better("accuracy")
    assert evaluator.higher_is_better("similarity_gap") and evaluator.unit("accuracy") is None
    for bad in ({"batch_size": 0}, {"batch_size": -3}, {"batch_size": 2.5}, {"batch_size": True},
                {"temperature": 0}, {"temperature": -0.1}, {"temperature": float("nan")},
                {"temperature": "hot"}):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            InBatch(**bad)
        with pytest.raises(Exception, match=name):
            harness.create("evaluator", "in-batch", **bad)


def test_trained_model_on_tiny_shapes_reports_in_batch_metrics(tmp_path):
    config = {
        "name": "inbatch",
        "dataset": {"name": "shapes", "train_size": 128, "val_size": 1, "test_size": 48, "image_size": 32},
        "seeds": [0],
        "defaults": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                  "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                     "embed_dim": 16, "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}},
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
        "evaluators": [{"name": "in-batch", "batch_size": 16, "temperature": 0.1}],
        "report": {"metrics": ["in-batch/accuracy", "in-batch/loss"]},
    }
    outcome = run(config, tmp_path, progress=False)
    result = outcome.results[0]
    assert result.status == "ok", result.error
    assert set(result.metrics) == {f"in-batch/{m}" for m in InBatch().metric_names()}
    assert 0.0 <= result.metrics["in-batch/accuracy"] <= 1.0
    assert result.metrics["in-batch/loss"] > 0.0
    assert -1.0 <= result.metrics["in-batch/avg_similarity"] <= 1.0
    assert result.higher_is_better["in-batch/loss"] is False
    assert result.higher_is_better["in-batch/accuracy"] is True
    assert result.chance["in-batch/accuracy"] == pytest.approx(1 / 16)  # 48 captioned images, 3 batches
    assert result.chance["in-batch/loss"] == pytest.approx(math.log(16))
    assert "in-batch/loss ↓" in outcome.table
