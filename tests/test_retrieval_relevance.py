"""The ``retrieval`` evaluator's multi-positive metrics: reported both ways when the dataset has exact
relevance (``shapes``), equal to :func:`harness.metrics.ranking_metrics` on the model's own scores, with
exact chance levels; absent, without error, for datasets without relevance."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import harness
import harness.runner as runner
from harness.components import EvalContext
from harness.data import DatasetInfo, Split
from harness.metrics import ranking_metrics
from harness_plugins.evaluators.retrieval import Retrieval, multi_positive_chance

KS = (1, 5, 10)
MULTI = {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("mAP@R", "R-Precision", *(f"R@{k}_any" for k in KS))}
SINGLE = {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS} | \
    {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("medr", "meanr")} | {"rsum"}


def expected_multi(scores, relevance):
    """The multi-positive metrics from ranking_metrics on [N_images, N_texts] scores, both ways."""
    out = {}
    for d, (s, rel) in {"t2i": (scores.T.contiguous(), relevance), "i2t": (scores, relevance.T)}.items():
        m = ranking_metrics(s, rel, ks=KS)
        assert m["n_empty"] == 0
        out[f"{d}_mAP@R"], out[f"{d}_R-Precision"] = m["mAP@R"], m["R-Precision"]
        out.update({f"{d}_R@{k}_any": m[f"R@{k}"] for k in KS})
    return out


def test_shapes_runs_report_multi_positive_metrics_equal_to_ranking_metrics(tmp_path, monkeypatch):
    """A cosine method (the chunked pooled path) and a match-map method (its own pair scores) on tiny
    shapes: the evaluator's numbers equal ranking_metrics on scores computed here from the trained
    model's embeddings and ``dataset.relevance('test')``."""
    seen = {}
    evaluate = runner.evaluate

    def spy(job, registry, model, dataset, split_name, device, scores=None):
        if split_name == "test":
            split = dataset.split("test")
            image_emb, text_emb = model.embed_images(split.images), model.embed_texts(split.texts)
            if job.name == "infonce":  # the cosine of pooled vectors, computed here
                s = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
            else:
                s = model.score(image_emb, text_emb)
            seen[job.name] = (s.float(), dataset.relevance("test"), split)
        return evaluate(job, registry, model, dataset, split_name, device, scores)

    monkeypatch.setattr(runner, "evaluate", spy)
    tiny = {"image": {"name": "small-cnn", "channels": [8, 8]},
            "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}}
    config = {
        "name": "relevance",
        "dataset": {"name": "shapes", "train_size": 96, "val_size": 0, "test_size": 40, "image_size": 32},
        "seeds": [0],
        "defaults": {"encoders": tiny, "embed_dim": 16,
                     "train": {"epochs": 1, "batch_size": 48, "device": "cpu"}},
        "methods": [
            {"name": "infonce", "loss": {"name": "infonce"}},
            {"name": "matchmap", "loss": {"name": "matchmap"},
             "encoders": {"image": {**tiny["image"], "pool": "none"},
                          "text": {**tiny["text"], "pool": "none"}}},
        ],
        "evaluators": [{"name": "retrieval"}],
        "report": {"metrics": ["retrieval/t2i_mAP@R", "retrieval/i2t_R-Precision", "retrieval/t2i_R@1_any"]},
    }
    outcome = harness.run(config, tmp_path, progress=False)
    assert outcome.ok and {r.method for r in outcome.results} == {"infonce", "matchmap"} == set(seen)
    for result in outcome.results:
        assert result.status == "ok", result.error
        metrics = {k.removeprefix("retrieval/"): v for k, v in result.metrics.items()}
        assert set(metrics) == SINGLE | MULTI  # no n_empty: every caption is true of its own image
        scores, relevance, split = seen[result.method]
        assert sp.issparse(relevance) and relevance.shape == (len(split.texts), len(split))
        assert relevance.sum() > len(split.texts)  # some captions are true of other images too
        want = expected_multi(scores, relevance)
        assert {k: metrics[k] for k in MULTI} == pytest.approx(want, abs=1e-9)
        for d in ("t2i", "i2t"):  # the own image (texts) is among the relevant ones
            for k in KS:
                assert metrics[f"{d}_R@{k}_any"] >= metrics[f"{d}_R@{k}"]
            assert 0 < metrics[f"{d}_mAP@R"] <= metrics[f"{d}_R-Precision"] + 1e-9 <= 100 + 1e-9
        assert result.units["retrieval/t2i_mAP@R"] == result.units["retrieval/i2t_R@5_any"] == "%"
        assert result.higher_is_better["retrieval/i2t_mAP@R"] is True
        n_img = np.diff(sp.csc_array(relevance).indptr)  # relevant texts per image
        chance = multi_positive_chance(np.diff(sp.csr_array(relevance).indptr), len(split), KS, "t2i")
        chance |= multi_positive_chance(n_img, len(split.texts), KS, "i2t")
        assert {k: result.chance[f"retrieval/{k}"] for k in MULTI} == pytest.approx(chance)
        assert "t2i_mAP@R" in outcome.table
    # the single-positive metrics are the same numbers the evaluator gave before (rsum untouched)
    infonce = next(r for r in outcome.results if r.method == "infonce").metrics
    assert infonce["retrieval/rsum"] == pytest.approx(sum(infonce[f"retrieval/{d}_R@{k}"]
                                                          for d in ("i2t", "t2i") for k in KS))


def test_a_dataset_without_relevance_gets_the_single_positive_metrics_only(tmp_path, toy_config):
    toy_config["report"]["metrics"].append("retrieval/t2i_mAP@R")  # declared: validation accepts it
    result = harness.run(toy_config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    assert {k.removeprefix("retrieval/") for k in result.metrics} == SINGLE
    assert {k.removeprefix("retrieval/") for k in result.chance} <= SINGLE


class Pooled:
    """Pooled features as embeddings; cosine scores unless ``cosine_scores`` is False (then dot)."""

    def __init__(self, cosine=True):
        self.cosine_scores = cosine

    def embed_images(self, images):
        return torch.as_tensor(images, dtype=torch.float64)

    def embed_texts(self, texts):
        return torch.as_tensor(np.asarray(texts), dtype=torch.float64)

    def score(self, image_emb, text_emb):
        if self.cosine_scores:
            return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
        return image_emb @ text_emb.T


@pytest.mark.parametrize("cosine", [True, False])
def test_relevance_is_fetched_once_and_empty_queries_are_counted(cosine):
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    t2i = np.array([0, 0, 1, 2, 3, 3, 4, 4, 4])  # image 5 has no text of its own
    relevance = np.zeros((9, 6), dtype=bool)
    relevance[np.arange(9), t2i] = True
    relevance[[0, 2, 6], [1, 4, 0]] = True
    relevance[8] = False  # a text true of nothing; image 5 is true of nothing either
    calls = []
    split = Split("test", images=images, texts=texts, text_to_image=t2i)
    context = EvalContext(model=Pooled(cosine), split=split, train_split=split,
                          dataset_info=DatasetInfo(name="fake"),
                          relevance_fn=lambda: calls.append(1) or sp.csr_array(relevance))
    evaluator = Retrieval(ks=(1, 2))
    out = evaluator.evaluate(context)
    chance = evaluator.chance(context)
    assert calls == [1]  # computed once per context, shared by evaluate and chance
    scores = Pooled(cosine).score(torch.as_tensor(images), torch.as_tensor(texts))
    for d, (s, rel) in {"t2i": (scores.T, relevance), "i2t": (scores, relevance.T)}.items():
        m = ranking_metrics(s, rel, ks=(1, 2))
        assert out[f"{d}_n_empty"] == m["n_empty"] == 1
        assert out[f"{d}_mAP@R"] == m["mAP@R"] and out[f"{d}_R-Precision"] == m["R-Precision"]
        assert [out[f"{d}_R@{k}_any"] for k in (1, 2)] == [m["R@1"], m["R@2"]]
        assert set(chance) >= {f"{d}_mAP@R", f"{d}_R-Precision", f"{d}_R@1_any", f"{d}_R@2_any"}
    assert set(out) <= set(evaluator.metric_names())
    assert not evaluator.higher_is_better("t2i_n_empty") and evaluator.unit("t2i_n_empty") is None
    # without relevance_fn (every context built before it existed) there are no multi-positive metrics
    plain = EvalContext(model=Pooled(cosine), split=split, train_split=split,
                        dataset_info=DatasetInfo(name="fake"))
    assert plain.relevance() is None
    multi = {k for k in out if k.endswith(("_any", "_mAP@R", "_R-Precision", "_n_empty"))}
    assert len(multi) == 10 and set(evaluator.evaluate(plain)) == set(out) - multi


@pytest.mark.parametrize("n_items, n_rel", [(6, 1), (6, 2), (6, 3), (6, 6), (5, 4)])
def test_multi_positive_chance_is_the_mean_over_every_ranking(n_items, n_rel):
    """The closed forms against ranking_metrics over all n! orderings (no ties)."""
    perms = np.array(list(itertools.permutations(range(n_items))))
    relevant = np.zeros(perms.shape, dtype=bool)
    relevant[:, :n_rel] = True
    m = ranking_metrics(-perms.astype(np.float64), relevant, ks=(1, 2, 7), tol=0)
    chance = multi_positive_chance(np.array([n_rel, 0]), n_items, (1, 2, 7), "t2i")  # an empty query: ignored
    assert chance == pytest.approx({"t2i_R@1_any": m["R@1"], "t2i_R@2_any": m["R@2"], "t2i_R@7_any": m["R@7"],
                                    "t2i_R-Precision": m["R-Precision"], "t2i_mAP@R": m["mAP@R"]})
