"""The matching method (a fusion head scoring pairs, trained with binary cross-entropy) and the
``matching`` evaluator: formulas by hand, hard negatives checked exactly, the head's logit as the pair
score of every evaluator, and real runs on tiny shapes."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness
from harness.components import EvalContext
from harness.config import load_benchmark
from harness.data import Split
from harness.errors import ConfigError, EmptySplitError, UnknownComponentError
from harness.jobs import plan
from harness.metrics import retrieval_metrics_from_scores
from harness.model import DualEncoder
from harness.registry import default_registry
from harness.runner import run
from harness.validation import prepare
from harness_plugins.datasets.shapes import ShapesDataset
from harness_plugins.datasets.shapes_relevance import caption_relevance
from harness_plugins.datasets.shapes_scenes import generate_split
from harness_plugins.evaluators import matching as mt
from harness_plugins.evaluators.matching import (Matching, fit_threshold, matching_metrics,
                                                 matching_set)
from harness_plugins.evaluators.retrieval import Retrieval
from harness_plugins.fusion import matching as fm
from harness_plugins.fusion.matching import MatchingHead, MatchingLoss, hard_negative_captions

SCENE = ("obj_color", "obj_shape", "obj_size", "n_objects", "relations")


@pytest.fixture(scope="module")
def split():
    return generate_split("test", 96, image_size=32, seed=5)


def head(fusion, **params):
    torch.manual_seed(0)
    return harness.create("head", "matcher", fusion=fusion, x_dim=6, y_dim=5, **params).double()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the head ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["concat", {"name": "sum", "dim": 8}, {"name": "product", "dim": 8},
                                    {"name": "bilinear", "dim": 3}, {"name": "mlb", "dim": 8},
                                    {"name": "mutan", "dim": 4, "rank": 2, "hidden": 6},
                                    {"name": "mcb", "dim": 32}])
def test_head_scores_pairs_as_mlp_of_the_fusion_and_every_pair_alike(fusion, monkeypatch):
    h = head(fusion, hidden=[7])
    x, y = rand(5, 6), rand(4, 5, seed=1)
    logits = h(x[:4], y)
    assert logits.shape == (4,)
    ln = lambda t: F.layer_norm(t, t.shape[-1:])  # noqa: E731 — inputs and fused vector standardised
    torch.testing.assert_close(logits, h.mlp(ln(h.fusion(ln(x[:4]), ln(y)))).squeeze(-1))
    plain = head(fusion, hidden=[7], norm="none")
    torch.testing.assert_close(plain(x[:4], y), plain.mlp(plain.fusion(x[:4], y)).squeeze(-1))
    rows, cols = torch.tensor([0, 4, 4]), torch.tensor([3, 0, 3])
    torch.testing.assert_close(h.scores_at(x, y, rows, cols), h(x[rows], y[cols]))
    monkeypatch.setattr(fm, "PAIR_CHUNK_BYTES", 3000)  # many chunks of pairs
    grid = h.pair_scores(x, y)
    assert grid.shape == (5, 4) and grid.dtype == torch.float32
    want = torch.stack([h(x[i].expand(4, -1), y) for i in range(5)])
    torch.testing.assert_close(grid, want.float())


def test_head_builds_its_fusion_on_the_encoders_sizes_with_clear_errors():
    h = harness.create("head", "matcher", fusion={"name": "mcb", "dim": 64}, x_dim=10, y_dim=12)
    assert isinstance(h, MatchingHead)
    assert h.fusion.x_dim == 10 and h.fusion.y_dim == 12 and h.mlp[0].in_features == 64
    with pytest.raises(UnknownComponentError) as info:
        harness.create("head", "matcher", fusion={"name": "mcbb"}, x_dim=3, y_dim=3)
    assert info.value.field == "fusion.name" and "did you mean 'mcb'" in str(info.value)
    with pytest.raises(UnknownComponentError) as info:
        harness.create("head", "matcher", fusion={"name": "mlb", "rnak": 3}, x_dim=3, y_dim=3)
    assert info.value.field == "fusion.rnak"
    with pytest.raises(UnknownComponentError) as info:
        harness.create("head", "matcher", fusion={"name": "mlb", "x_dim": 3}, x_dim=3, y_dim=3)
    assert info.value.field == "fusion.x_dim" and "filled in from the encoders" in str(info.value)
    with pytest.raises(ValueError, match="fusion 'sum': dim must be a positive integer"):
        harness.create("head", "matcher", fusion={"name": "sum", "dim": -1}, x_dim=3, y_dim=3)
    with pytest.raises(ConfigError, match="fusion: expected a mapping or a string, got \\[1\\]"):
        harness.create("head", "matcher", fusion=[1], x_dim=3, y_dim=3)
    with pytest.raises(ValueError, match="norm must be 'layer' or 'none'"):
        harness.create("head", "matcher", norm="batch", x_dim=3, y_dim=3)
    with pytest.raises(ValueError, match="pooled vectors"):
        h(torch.zeros(2, 3, 10), torch.zeros(2, 12))


def test_a_saved_mcb_matcher_scores_identically_after_a_reload(tmp_path):
    h = head({"name": "mcb", "dim": 64, "seed": 1})
    torch.save(h.state_dict(), tmp_path / "head.pt")
    assert {"fusion.hash_x", "fusion.sign_x", "fusion.hash_y", "fusion.sign_y"} <= set(h.state_dict())
    other = head({"name": "mcb", "dim": 64, "seed": 2})  # other hashes and signs until loaded
    x, y = rand(3, 6), rand(4, 5, seed=1)
    assert not torch.allclose(other.pair_scores(x, y), h.pair_scores(x, y))
    other.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    assert torch.equal(other.pair_scores(x, y), h.pair_scores(x, y))


# --- the loss ------------------------------------------------------------------------------------------


def test_loss_is_balanced_binary_cross_entropy_on_pairs_and_in_batch_negatives():
    h = head({"name": "mlb", "dim": 8})
    x, y = rand(6, 6), rand(6, 5, seed=1)
    loss = MatchingLoss(negatives=2)
    torch.manual_seed(3)
    value = loss(x, y, heads={"match": h})
    torch.manual_seed(3)
    i = torch.arange(6).repeat(2)
    j = (i + torch.randint(1, 6, (12,))) % 6
    assert not (i == j).any()
    want = 0.5 * (-F.logsigmoid(h(x, y)).mean() - F.logsigmoid(-h(x[i], y[j])).mean())
    torch.testing.assert_close(value, want.float())
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in h.parameters())


def _batch(split, n=24):
    images = np.arange(n)
    captions = [split.texts[split.texts_of_image()[i][0]] for i in images]
    scene = {k: np.asarray(split.extras[k])[images] for k in SCENE}
    return captions, scene


def test_hard_negatives_are_minimal_edits_false_of_their_image(split):
    captions, scene = _batch(split)
    hard = hard_negative_captions(captions, scene, np.random.default_rng(0))
    assert len(hard) >= 20  # most captions have a false minimal edit
    images = list(hard)
    truth = caption_relevance([hard[i] for i in images], scene).toarray()
    assert not truth[np.arange(len(images)), images].any()  # false of its own image
    for i in images:
        assert hard[i] != captions[i].lower().rstrip(".")
        assert abs(len(hard[i].split()) - len(captions[i].split())) <= 1  # an edit, not a new caption
    again = hard_negative_captions(captions, scene, np.random.default_rng(0))
    assert again == hard
    assert hard_negative_captions(captions, scene, np.random.default_rng(1)) != hard
    with pytest.raises(ValueError):
        hard_negative_captions(["not a shapes caption"], scene, np.random.default_rng(0))


class OneTextEncoder(torch.nn.Module):
    """Embeds a caption as a fixed random vector of its text (so hard negatives get embeddings)."""

    def prepare(self, texts):
        return torch.tensor([hash(t) % 10_000 for t in texts])

    def forward(self, ids):
        g = [torch.Generator().manual_seed(int(i)) for i in ids]
        return torch.stack([torch.randn(5, generator=gi, dtype=torch.float64) for gi in g])


def test_hard_negatives_and_relabelled_in_batch_captions(split):
    captions, scene = _batch(split, 12)
    model = type("M", (), {"text_encoder": OneTextEncoder()})()
    h = head("concat")
    x = rand(12, 6)
    y = model.text_encoder(model.text_encoder.prepare(captions))
    loss = MatchingLoss(negatives=3, relabel=True)
    torch.manual_seed(0)
    value = loss(x, y, heads={"match": h}, model=model, captions=captions,
                 **{k: torch.as_tensor(v) for k, v in scene.items()})
    # replay the draws: in-batch pairs (true ones relabelled as matches), then the hard negatives
    torch.manual_seed(0)
    i = torch.arange(12).repeat(3)
    j = (i + torch.randint(1, 12, (36,))) % 12
    true_of = caption_relevance(captions, scene).toarray()[j.numpy(), i.numpy()]
    hard = hard_negative_captions(captions, scene, np.random.default_rng(int(torch.randint(2**62, ()))))
    hard_y = model.text_encoder(model.text_encoder.prepare(list(hard.values())))
    pos = torch.cat([h(x, y), h(x[i], y[j])[torch.as_tensor(true_of)]])
    neg = torch.cat([h(x[i], y[j])[torch.as_tensor(~true_of)], h(x[list(hard)], hard_y)])
    want = 0.5 * (-F.logsigmoid(pos).mean() - F.logsigmoid(-neg).mean())
    torch.testing.assert_close(value, want.float())
    # shapes repeats captions that fit many images: every caption "a red circle" of red-circle images
    same = ["a red circle"] * 4
    red = {"obj_color": np.zeros((4, 3), int), "obj_shape": np.zeros((4, 3), int),
           "obj_size": np.zeros((4, 3), int), "n_objects": np.ones(4, int), "relations": -np.ones((4, 3, 3), int)}
    loss = MatchingLoss(negatives=2, hard_negatives=False, relabel=True)
    torch.manual_seed(1)  # every in-batch caption is true of every image: matches only, no negative term
    all_pos = loss(x[:4], y[:4], heads={"match": h}, captions=same,
                   **{k: torch.as_tensor(v) for k, v in red.items()})
    torch.manual_seed(1)
    ii = torch.arange(4).repeat(2)
    jj = (ii + torch.randint(1, 4, (8,))) % 4
    torch.testing.assert_close(all_pos, -F.logsigmoid(torch.cat([h(x[:4], y[:4]), h(x[ii], y[jj])])).mean().float())
    torch.manual_seed(1)  # by default the same in-batch captions are negatives, true or not
    plain = MatchingLoss(negatives=2, hard_negatives=False)(
        x[:4], y[:4], heads={"match": h}, captions=same, **{k: torch.as_tensor(v) for k, v in red.items()})
    torch.testing.assert_close(plain, 0.5 * (-F.logsigmoid(h(x[:4], y[:4])).mean()
                                             - F.logsigmoid(-h(x[ii], y[jj])).mean()).float())


def test_the_runner_hands_the_loss_the_batch_captions_and_binds_its_pair_score(split):
    from harness.training import _loss_extras, make_batch
    from harness_plugins.encoders.small import BagOfWords, Pixels

    info = ShapesDataset(train_size=1, val_size=0, test_size=1, image_size=32, cache=False).info
    model = DualEncoder(Pixels(size=2, dataset_info=info), BagOfWords(dataset_info=info))
    wanted = _loss_extras(MatchingLoss())
    assert {"heads", "model", "captions", "obj_color", "relations"} <= set(wanted)
    index, texts = np.array([3, 1]), np.array([split.texts_of_image()[3][1], split.texts_of_image()[1][0]])
    _, extras = make_batch(model, split, index, texts, wanted, [], torch.device("cpu"))
    assert extras["captions"] == [split.texts[j] for j in texts]
    assert extras["model"] is model and extras["heads"] is model.heads
    assert torch.equal(extras["obj_color"], torch.as_tensor(split.extras["obj_color"][index]))


def test_loss_parameters_and_missing_head_are_clear_errors():
    with pytest.raises(ValueError, match="negatives must be an integer >= 0"):
        MatchingLoss(negatives=-1)
    with pytest.raises(ValueError, match="hard_negatives must be true or false"):
        MatchingLoss(hard_negatives=2)
    with pytest.raises(ValueError, match="needs non-matching pairs"):
        MatchingLoss(negatives=0, hard_negatives=False)
    with pytest.raises(ValueError, match="needs a head named 'match'"):
        MatchingLoss()(rand(2, 6), rand(2, 5), heads={})


def test_the_heads_logit_is_the_pair_score_of_retrieval(split):
    """What training sets: ``model.scorer`` = the loss's pair_scores bound to the model's heads; the
    retrieval evaluator then ranks by the head's logits, in blocks."""
    from harness_plugins.encoders.small import BagOfWords, Pixels

    info = ShapesDataset(train_size=1, val_size=0, test_size=1, image_size=32, cache=False).info
    model = DualEncoder(Pixels(size=2, dataset_info=info), BagOfWords(dataset_info=info))
    torch.manual_seed(0)
    model.heads["match"] = harness.create("head", "matcher", fusion={"name": "mlb", "dim": 16},
                                          x_dim=12, y_dim=model.text_encoder.output_dim)
    loss = MatchingLoss()
    model.scorer = functools.partial(loss.pair_scores, heads=model.heads)
    context = EvalContext(model=model, split=split, train_split=split, dataset_info=info)
    got = Retrieval(ks=(1, 5)).evaluate(context)
    image_emb, text_emb = model.embed_images(split.images), model.embed_texts(split.texts)
    scores = model.heads["match"].pair_scores(image_emb, text_emb)
    assert not context.cosine_scores(image_emb, text_emb)
    want = retrieval_metrics_from_scores(scores, split.text_to_image, ks=(1, 5))
    assert {k: got[k] for k in want} == pytest.approx(want)


# --- the matching evaluator ----------------------------------------------------------------------------


def test_threshold_and_metrics_by_hand():
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.1, 0.8, 0.2]
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    kinds = ["positive"] * 3 + ["random"] * 3 + ["hard"] * 2
    # match iff s > t: t = 0.35 (between 0.3 and 0.4) keeps 3/3 matches and 3/5 non-matches, ½(1 + 3/5);
    # the next best, t = 0.75, gives ½(2/3 + 4/5)
    assert fit_threshold(scores, labels) == pytest.approx(0.35)
    got = matching_metrics(scores, labels, kinds, threshold=0.35)
    # AUC: share of (match, non-match) pairs ordered right, ties ½: 0.9 beats 5, 0.8 beats 4 + ½, 0.4 beats 3
    assert got["auc"] == pytest.approx(100 * (5 + 4.5 + 3) / 15)
    assert got["accuracy"] == pytest.approx(100 * 0.5 * (1 + 3 / 5))
    assert got["auc_random"] == pytest.approx(100 * (3 + 3 + 2) / 9)  # 0.4 loses to 0.7
    assert got["auc_hard"] == pytest.approx(100 * (2 + 1.5 + 1) / 6)
    assert got["accuracy_random"] == pytest.approx(100 * 0.5 * (1 + 2 / 3))
    assert got["accuracy_hard"] == pytest.approx(100 * 0.5 * (1 + 1 / 2))
    assert matching_metrics(scores, labels, kinds, threshold=0.75)["accuracy"] == \
        pytest.approx(100 * 0.5 * (2 / 3 + 4 / 5))
    assert matching_metrics([1, 0], [1, 0], ["positive", "random"], 0.5) == {
        "auc": 100.0, "accuracy": 100.0, "auc_random": 100.0, "accuracy_random": 100.0}
    with pytest.raises(ValueError, match="both matching and non-matching"):
        matching_metrics([1, 0], [1, 1], ["positive"] * 2, 0.0)
    assert fit_threshold([1.0, 1.0], [1, 0]) > 1.0 or fit_threshold([1.0, 1.0], [1, 0]) < 1.0


def test_the_set_is_exact_fixed_and_balanced(split):
    s = matching_set(split, seed=0)
    n = len(split)
    assert (s.kind == "positive").sum() == (s.kind == "random").sum() == n
    assert 0.8 * n < (s.kind == "hard").sum() <= n and len(s.hard_captions) == (s.kind == "hard").sum()
    assert (s.label == (s.kind == "positive")).all()
    captions = [split.texts[t] if t >= 0 else s.hard_captions[h] for t, h in zip(s.text, s.hard)]
    truth = caption_relevance(captions, split.extras).toarray()[np.arange(len(captions)), s.image]
    assert (truth == s.label.astype(bool)).all()  # matches true, every negative false of its image
    again = matching_set(split, seed=0)
    assert np.array_equal(again.text, s.text) and again.hard_captions == s.hard_captions
    assert not np.array_equal(matching_set(split, seed=1).text, s.text)


class IndexModel:
    """Embeds an image as its index, a caption as its index in a growing list; scores by ``fn``."""

    cosine_scores = False

    def __init__(self, fn):
        self.fn, self.texts = fn, []

    def embed_images(self, images):
        return torch.as_tensor(np.asarray(images)[:, :1], dtype=torch.float64)

    def embed_texts(self, texts):
        start = len(self.texts)
        self.texts += list(texts)
        return torch.arange(start, len(self.texts), dtype=torch.float64)[:, None]

    def score(self, image_emb, text_emb):
        return torch.tensor([[self.fn(int(i), self.texts[int(t)]) for t in text_emb[:, 0]]
                             for i in image_emb[:, 0]], dtype=torch.float64)


def _indexed(split):
    return Split(split.name, images=np.arange(len(split))[:, None], texts=split.texts,
                 text_to_image=split.text_to_image, extras=split.extras)


def test_evaluator_on_an_oracle_a_constant_and_a_word_counter(split):
    indexed = _indexed(split)
    val = _indexed(generate_split("val", 64, image_size=32, seed=5))
    info = ShapesDataset(train_size=1, val_size=0, test_size=1, image_size=32, cache=False).info

    def context(fn, data):
        return EvalContext(model=IndexModel(fn), split=indexed, train_split=indexed, dataset_info=info,
                           split_fn=lambda name: data)

    def oracle(i, t):  # the exact truth of the caption for the image (val is the same split here)
        return float(caption_relevance([t], split.extras)[0, i])

    got = Matching().evaluate(context(oracle, indexed))
    assert got == {k: 100.0 for k in Matching().metric_names()}
    constant = Matching().evaluate(context(lambda i, t: 0.0, val))
    assert constant == {k: 50.0 for k in Matching().metric_names()}
    # the threshold comes from val: an oracle of the val scenes scored on val, applied to test scores
    lengths = Matching().evaluate(context(lambda i, t: float(len(t)), val))
    pairs = matching_set(split)
    scores = [len(split.texts[t]) if t >= 0 else len(pairs.hard_captions[h]) for t, h in zip(pairs.text, pairs.hard)]
    vpairs = matching_set(val)
    vscores = [len(val.texts[t]) if t >= 0 else len(vpairs.hard_captions[h]) for t, h in zip(vpairs.text, vpairs.hard)]
    want = matching_metrics(scores, pairs.label, pairs.kind, fit_threshold(vscores, vpairs.label))
    assert lengths == pytest.approx(want)
    # without a val split the threshold is fitted on the train split
    no_val = EvalContext(model=IndexModel(lambda i, t: float(len(t))), split=indexed, train_split=indexed,
                         dataset_info=info)
    assert no_val.val_split is None
    # a file dataset whose val split is empty says so with an EmptySplitError: also "no val split"; any
    # other dataset error is not swallowed (the threshold would silently move to train)
    def empty_val(name):
        raise EmptySplitError("split 'val' is empty: no image is assigned to it", field="val_size")
    empty = EvalContext(model=IndexModel(lambda i, t: float(len(t))), split=indexed, train_split=indexed,
                        dataset_info=info, split_fn=empty_val)
    assert empty.val_split is None
    assert Matching().evaluate(empty) == Matching().evaluate(no_val)

    def broken_val(name):
        raise ConfigError("cannot read the val annotations", field="val_annotations")
    with pytest.raises(ConfigError, match="cannot read the val annotations"):
        EvalContext(model=IndexModel(lambda i, t: float(len(t))), split=indexed, train_split=indexed,
                    dataset_info=info, split_fn=broken_val).val_split
    assert Matching().evaluate(no_val) == pytest.approx(
        matching_metrics(scores, pairs.label, pairs.kind, fit_threshold(scores, pairs.label)))


def test_declared_metrics_units_and_chance():
    evaluator = harness.create("evaluator", "matching")
    assert isinstance(evaluator, Matching)
    assert evaluator.metric_names() == ["auc", "accuracy", "auc_random", "accuracy_random", "auc_hard",
                                        "accuracy_hard"]
    assert all(evaluator.unit(m) == "%" for m in evaluator.metric_names())
    assert evaluator.chance(None) == {m: 50.0 for m in evaluator.metric_names()}
    with pytest.raises(ValueError, match="seed must be an integer"):
        Matching(seed=-1)
    assert mt.KINDS == ("random", "hard")


# --- through the runner ---------------------------------------------------------------------------------

TINY = {"image": {"name": "small-cnn", "channels": [8, 8]},
        "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}}


def _config(methods, evaluators=({"name": "matching"}, {"name": "retrieval", "ks": [1, 5]})):
    return {
        "name": "fusion-tiny",
        "dataset": {"name": "shapes", "train_size": 128, "val_size": 32, "test_size": 48, "image_size": 32},
        "seeds": [0],
        "defaults": {"encoders": TINY, "embed_dim": 16,
                     "train": {"epochs": 2, "batch_size": 32, "device": "cpu", "lr": 3e-3}},
        "methods": list(methods),
        "evaluators": list(evaluators),
        "report": {"metrics": ["matching/auc", "retrieval/rsum"]},
    }


def test_matching_methods_and_a_dual_encoder_on_tiny_shapes(tmp_path):
    config = _config([
        {"name": "match-mlb", "heads": {"match": {"name": "matcher", "fusion": {"name": "mlb", "dim": 16},
                                                  "hidden": [8]}},
         "loss": {"name": "matching"}},
        {"name": "match-mcb", "heads": {"match": {"name": "matcher", "fusion": {"name": "mcb", "dim": 64}}},
         "loss": {"name": "matching", "negatives": 1}},
        {"name": "infonce", "loss": {"name": "infonce"}},
        {"name": "matchmap", "loss": {"name": "matchmap"},  # token features, its own pair score
         "encoders": {"image": {**TINY["image"], "pool": "none"}, "text": {**TINY["text"], "pool": "none"}}},
        {"name": "cca", "estimator": {"name": "linear-cca", "k": 4, "reg": 0.1},  # closed form
         "encoders": {"image": {"name": "pixels", "size": 4}, "text": {"name": "bag-of-words"}}},
    ], evaluators=[{"name": "matching"}, {"name": "retrieval", "ks": [1, 5]}, {"name": "minimal-pairs"},
                   {"name": "zero-shot"}, {"name": "relation"}])
    config["eval_splits"] = ["val", "test"]
    outcome = run(config, tmp_path, progress=False, echo=lambda m: None)
    results = {r.method: r for r in outcome.results}
    for result in results.values():
        assert result.status == "ok", result.error
        for name in ("matching/auc", "matching/accuracy_hard", "val/matching/auc", "retrieval/rsum",
                     "minimal-pairs/overall", "zero-shot/top1"):
            assert name in result.metrics and 0 <= result.metrics[name] <= 600
        assert not any(k.startswith("relation/") for k in result.metrics)  # no relation heads
        assert result.chance["matching/auc"] == 50.0
    fusions = [p for p in results["match-mcb"].providers if p.kind == "fusion"]
    assert [(p.name, p.plugin) for p in fusions] == [("mcb", "fusion")]
    losses = [h["loss"] for h in results["match-mlb"].history]
    assert losses[-1] < losses[0]


def test_a_bad_fusion_is_reported_at_its_field(tmp_path):
    bad = _config([{"name": "m", "heads": {"match": {"name": "matcher", "fusion": {"name": "mcbb"}}},
                    "loss": {"name": "matching"}}])
    with pytest.raises(ConfigError) as info:
        prepare(bad)
    assert info.value.field == "methods[m].heads.match.fusion.name" and "did you mean 'mcb'" in str(info.value)
    no_head = _config([{"name": "m", "loss": {"name": "matching"}}])
    with pytest.raises(ConfigError, match="needs a head named 'match'"):
        prepare(no_head)
    spec, _ = load_benchmark(_config([{"name": "m", "heads": {"match": {"name": "matcher", "fusion": "sum"}},
                                       "loss": {"name": "matching"}}]))
    [job] = plan(spec, default_registry())
    assert ("fusion", "sum") in {(p.kind, p.name) for p in job.providers}
