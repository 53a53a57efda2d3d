"""Relational grounding (plugins/grounding/relation*.py): the cross-attention and bilinear relation
heads, the relation loss and the relation evaluator, each against an independent computation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import harness
from harness.components import Encoder, EvalContext, TokenFeatures
from harness.data import DatasetInfo, Split
from harness.model import DualEncoder
from harness.registry import Registry
from harness_plugins.datasets.shapes import COLORS, RELATIONS, SHAPES, SIZES, VOCAB, generate_split
from harness_plugins.grounding.relation_eval import RelationEvaluator, relation_metrics, relation_outcomes
from harness_plugins.grounding.relation_heads import BilinearRelation, CrossAttentionGrounding
from harness_plugins.grounding.relation_loss import RelationLoss
from harness_plugins.grounding.relation_objects import (annotated_pairs, competitors, object_phrase_ids,
                                                        phrase_text, pool_text)

SHAPES_INFO = DatasetInfo(name="shapes", predicates=list(RELATIONS))


# --- independent reference computations --------------------------------------------------------------


def reference_attention(mha: nn.MultiheadAttention, queries: torch.Tensor, locations: torch.Tensor,
                        real: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of queries [M, D] over the real rows of locations [L, D], written out from
    the module's weights, one query and one head at a time, in float64."""
    D, H = queries.shape[1], mha.num_heads
    d = D // H
    w_q, w_k, w_v = mha.in_proj_weight.double().chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.double().chunk(3)
    x = locations.double()[real]
    keys, values = x @ w_k.T + b_k, x @ w_v.T + b_v
    out = []
    for q in queries.double():
        q = w_q @ q + b_q
        parts = []
        for h in range(H):
            cut = slice(h * d, (h + 1) * d)
            logits = keys[:, cut] @ q[cut] / math.sqrt(d)
            weights = torch.exp(logits - logits.max())
            parts.append((weights / weights.sum()) @ values[:, cut])
        out.append(mha.out_proj.weight.double() @ torch.cat(parts) + mha.out_proj.bias.double())
    return torch.stack(out)


def reference_scores(head: BilinearRelation, subjects: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """[N, P] = project(s) R̂_p project(o)ᵀ with R̂_p = R_p / sqrt(Σ R_p²), via einsum in float64."""
    W, b = head.project.weight.double(), head.project.bias.double()
    R = head.R.double()
    R_hat = R / torch.sqrt((R ** 2).sum(dim=(1, 2)))[:, None, None]
    return torch.einsum("nd,pde,ne->np", subjects.double() @ W.T + b, R_hat, objects.double() @ W.T + b)


class WordVectors(Encoder):
    """A text encoder returning per-word vectors with padding to 5 tokens; padded rows hold a huge
    value, so a pooled vector that averages over padding is visibly wrong."""

    modality = "text"

    def __init__(self, dim: int, words=VOCAB):
        super().__init__()
        self.index = {w: i for i, w in enumerate(words)}
        self.table = nn.Embedding(len(words), dim)
        self.output_dim = dim

    def prepare(self, texts):
        tokens = torch.zeros(len(texts), 5, dtype=torch.long)
        mask = torch.zeros(len(texts), 5, dtype=torch.bool)
        for i, text in enumerate(texts):
            ids = [self.index[w] for w in text.split()]
            tokens[i, :len(ids)], mask[i, :len(ids)] = torch.tensor(ids), True
        return {"tokens": tokens, "mask": mask}

    def forward(self, batch):
        feats = self.table(batch["tokens"])
        return TokenFeatures(torch.where(batch["mask"][..., None], feats, torch.full_like(feats, 1e6)),
                             batch["mask"])

    def phrase_vector(self, phrase: str) -> torch.Tensor:
        """The mean of the phrase's word vectors, looked up one by one."""
        return torch.stack([self.table.weight[self.index[w]] for w in phrase.split()]).mean(dim=0)


class LocationFeatures(Encoder):
    """An 'image encoder' whose images already are location features [N, L, D]; the last location of
    every odd-numbered batch row is padding (garbage values, mask False)."""

    modality = "image"

    def __init__(self, dim: int):
        super().__init__()
        self.output_dim = dim

    def prepare(self, raw):
        return torch.as_tensor(raw).float()

    def forward(self, x):
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        mask[1::2, -1] = False
        return TokenFeatures(torch.where(mask[..., None], x, torch.full_like(x, 1e3)), mask)


def make_heads(dim: int, heads: int = 2, rank: int = 4, predicates=None) -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({
        "grounding": CrossAttentionGrounding(heads=heads, embed_dim=dim),
        "relation": BilinearRelation(rank=rank, predicates=predicates, embed_dim=dim,
                                     dataset_info=SHAPES_INFO)})


def tiny_batch():
    """Two images: three objects with all six relations, and two objects with one annotated relation
    (the other direction unannotated, -1) plus a padding slot."""
    relations = torch.tensor([[[-1, 0, 2], [1, -1, 2], [3, 3, -1]],
                              [[-1, 1, -1], [-1, -1, -1], [-1, -1, -1]]])
    return dict(n_objects=torch.tensor([3, 2]),
                obj_color=torch.tensor([[0, 1, 2], [3, 0, -1]]),
                obj_shape=torch.tensor([[0, 1, 4], [2, 0, -1]]),
                obj_size=torch.tensor([[0, 1, 1], [0, 0, -1]]),
                relations=relations)


# --- the bilinear relation head ----------------------------------------------------------------------


def test_relation_scores_equal_einsum_on_projected_vectors_with_frobenius_normalised_operators():
    torch.manual_seed(1)
    head = BilinearRelation(rank=5, predicates=3, embed_dim=8)
    subjects, objects = torch.randn(7, 8), torch.randn(7, 8)
    scores = head.relation_scores(subjects, objects)
    assert scores.shape == (7, 3)
    torch.testing.assert_close(scores.double(), reference_scores(head, subjects, objects), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # R̂ does not depend on the scale of R
        head.R.mul_(7.0)
    torch.testing.assert_close(head.relation_scores(subjects, objects), scores, rtol=1e-5, atol=1e-5)


def test_pairwise_scores_hold_every_ordered_pair_of_each_image():
    torch.manual_seed(2)
    head = BilinearRelation(rank=4, predicates=["on", "under"], embed_dim=6)
    objects = torch.randn(2, 3, 6)
    pairwise = head.pairwise_scores(objects)
    assert pairwise.shape == (2, 2, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                expected = reference_scores(head, objects[b, i:i + 1], objects[b, j:j + 1])[0]
                torch.testing.assert_close(pairwise[b, :, i, j].double(), expected, rtol=1e-5, atol=1e-5)


def test_bilinear_operators_are_xavier_initialised_one_per_predicate():
    torch.manual_seed(3)
    head = BilinearRelation(rank=32, embed_dim=16, dataset_info=SHAPES_INFO)
    assert head.R.shape == (len(RELATIONS), 32, 32) and head.project.out_features == 32
    bound = math.sqrt(6.0 / (32 + 32))  # Xavier-uniform for a 32 × 32 matrix
    assert float(head.R.detach().abs().max()) <= bound
    assert float(head.R.detach().abs().max()) > 0.9 * bound  # uses the range, not a smaller one
    assert abs(float(head.R.detach().std()) - bound / math.sqrt(3)) < 0.05 * bound
    assert not torch.allclose(head.R[0], head.R[1])


def test_predicates_come_from_the_head_or_the_dataset_with_clear_errors():
    assert BilinearRelation(embed_dim=8, dataset_info=SHAPES_INFO).predicates == list(RELATIONS)
    assert BilinearRelation(predicates=2, embed_dim=8).predicates == ["0", "1"]
    assert BilinearRelation(predicates=["on", "has"], embed_dim=8).num_predicates == 2
    declared = SimpleNamespace(name="visual-genome", predicates=("on", "near", "holding"))
    assert BilinearRelation(embed_dim=8, dataset_info=declared).predicates == ["on", "near", "holding"]
    with pytest.raises(ValueError, match="declares no predicates.*`predicates`"):
        BilinearRelation(embed_dim=8, dataset_info=DatasetInfo(name="noisy-digits"))
    for bad in (0, True, "on", ["on", "on"], []):
        with pytest.raises(ValueError, match="predicates"):
            BilinearRelation(predicates=bad, embed_dim=8)
    with pytest.raises(ValueError, match="rank"):
        BilinearRelation(rank=0, predicates=2, embed_dim=8)


# --- the cross-attention head ------------------------------------------------------------------------


def test_cross_attention_is_multi_head_attention_over_the_real_locations():
    torch.manual_seed(4)
    head = CrossAttentionGrounding(heads=2, embed_dim=8)
    queries, locations = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    location_mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    grounded = head(queries, torch.ones(2, 3, dtype=torch.bool), locations, location_mask)
    for b in range(2):
        expected = reference_attention(head.attention, queries[b], locations[b], location_mask[b])
        torch.testing.assert_close(grounded[b].double(), expected, rtol=1e-5, atol=1e-5)


def test_padding_locations_or_objects_changes_no_real_output():
    torch.manual_seed(5)
    head = CrossAttentionGrounding(heads=4, embed_dim=8).eval()
    queries, locations = torch.randn(2, 2, 8), torch.randn(2, 4, 8)
    base = head(queries, None, locations, None)
    # more locations, all padding (with garbage values): keys are masked, so nothing moves
    padded_locations = torch.cat([locations, 1e3 * torch.randn(2, 3, 8)], dim=1)
    mask = torch.cat([torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(head(queries, None, padded_locations, mask), base, rtol=1e-5, atol=1e-6)
    # more objects, all padding: real rows are unchanged and padded rows are zero
    padded_queries = torch.cat([queries, 50 * torch.randn(2, 2, 8)], dim=1)
    query_mask = torch.tensor([[True, True, False, False]] * 2)
    out = head(padded_queries, query_mask, padded_locations, mask)
    torch.testing.assert_close(out[:, :2], base, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[:, 2:], torch.zeros(2, 2, 8))


def test_an_image_without_real_locations_grounds_to_zeros_not_nan():
    head = CrossAttentionGrounding(heads=2, embed_dim=4)
    out = head(torch.randn(2, 2, 4), None, torch.randn(2, 3, 4),
               torch.tensor([[False, False, False], [True, True, False]]))
    assert torch.equal(out[0], torch.zeros(2, 4)) and torch.isfinite(out).all() and out[1].abs().sum() > 0


def test_cross_attention_checks_heads_and_shapes():
    with pytest.raises(ValueError, match="must divide embed_dim"):
        CrossAttentionGrounding(heads=3, embed_dim=8)
    with pytest.raises(ValueError, match="locations"):
        CrossAttentionGrounding(heads=2, embed_dim=8)(torch.randn(2, 3, 8), None, torch.randn(2, 8))


# --- objects, phrases, pairs -------------------------------------------------------------------------


def test_object_phrases_use_the_captions_words_for_each_object():
    assert phrase_text((1 * len(COLORS) + 2) * len(SHAPES) + 4) == f"{SIZES[1]} {COLORS[2]} {SHAPES[4]}"
    split = generate_split("train", 40, image_size=32, seed=3)
    x = split.extras
    ids = object_phrase_ids(x["n_objects"], x["obj_color"], x["obj_shape"], x["obj_size"])
    assert torch.equal(ids < 0, torch.as_tensor(x["obj_shape"] < 0))
    with_size = 0
    for image in range(40):
        for k, caption in enumerate(split.texts[image * 5:(image + 1) * 5]):
            for slot in np.flatnonzero(x["mentions"][image, k]):
                phrase = phrase_text(int(ids[image, slot]))  # "size colour shape"
                assert phrase in caption or phrase.split(" ", 1)[1] in caption
                with_size += phrase in caption
    assert with_size > 20


def test_pool_text_averages_only_real_tokens():
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e9, 1e9]], [[5.0, 6.0], [1e9, 1e9], [1e9, 1e9]]])
    pooled = pool_text(TokenFeatures(feats, torch.tensor([[True, True, False], [True, False, False]])))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    assert torch.equal(pool_text(feats[:, 0]), feats[:, 0])


def test_annotated_pairs_and_competitors_follow_the_relation_matrix():
    batch = tiny_batch()
    pairs = annotated_pairs(batch["relations"], batch["n_objects"])
    got = list(zip(*(t.tolist() for t in pairs)))
    assert got == [(0, 0, 1, 0), (0, 0, 2, 2), (0, 1, 0, 1), (0, 1, 2, 2), (0, 2, 0, 3), (0, 2, 1, 3),
                   (1, 0, 1, 1)]
    rival = competitors(batch["relations"], batch["n_objects"], pairs)
    # (0, s=0, o=1, left of): object 2 is "above" w.r.t. 0, so it competes; (0, 2, 0, below): 1 is also
    # below → no competitor; image 1 has no third object
    assert rival.tolist()[0] == [False, False, True] and rival.sum(dim=1).tolist() == [1, 1, 1, 1, 0, 0, 0]


# --- the loss ----------------------------------------------------------------------------------------


@torch.no_grad()
def hand_loss(text: WordVectors, heads, image_feats, image_mask, batch, tau, pair_weight):
    """The relation loss with every step written out: phrases, attention, scores, then the two terms."""
    attention, relation = heads["grounding"], heads["relation"]
    B, M = batch["obj_color"].shape
    grounded = torch.zeros(B, M, image_feats.shape[-1], dtype=torch.float64)
    for b in range(B):
        n = int(batch["n_objects"][b])
        queries = torch.stack([text.phrase_vector(" ".join([
            SIZES[batch["obj_size"][b, a]], COLORS[batch["obj_color"][b, a]], SHAPES[batch["obj_shape"][b, a]]]))
            for a in range(n)])
        grounded[b, :n] = reference_attention(attention.attention, queries, image_feats[b], image_mask[b])
    triples = [(b, s, o, int(batch["relations"][b, s, o])) for b in range(B) for s in range(M) for o in range(M)
               if s != o and s < batch["n_objects"][b] and o < batch["n_objects"][b]
               and batch["relations"][b, s, o] >= 0]
    x = {t: reference_scores(relation, grounded[t[0], t[1]][None].float(), grounded[t[0], t[2]][None].float())[0]
         for t in triples}
    total = 0.0
    for t in triples:
        p = t[3]
        ce = -float(x[t][p] / tau) + math.log(sum(math.exp(float(v) / tau) for v in x[t]))
        negatives = [u for u in triples if u[3] != p]
        denominator = sum(math.exp(float(x[u][p]) / tau) for u in [t] + negatives)
        pair = -float(x[t][p]) / tau + math.log(denominator)
        total += ce + pair_weight * pair
    return total / len(triples), grounded


@pytest.mark.parametrize("tau,pair_weight", [(1.0, 1.0), (0.5, 0.3), (2.0, 0.0)])
def test_loss_on_a_tiny_batch_equals_the_hand_computation(tau, pair_weight):
    torch.manual_seed(6)
    dim = 8
    text = WordVectors(dim)
    model = DualEncoder(LocationFeatures(dim), text)
    heads = make_heads(dim)
    batch = tiny_batch()
    image_feats = torch.randn(2, 4, dim)
    image_mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    loss_fn = RelationLoss(pair_weight=pair_weight, temperature=tau, embed_dim=dim)
    loss = loss_fn(image_feats, None, model=model, heads=heads, image_mask=image_mask, **batch)
    expected, _ = hand_loss(text, heads, image_feats, image_mask, batch, tau, pair_weight)
    assert loss.ndim == 0 and abs(float(loss.detach()) - expected) < 1e-4
    loss.backward()  # trains the language stream and both heads
    assert text.table.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


def test_object_classification_term_adds_the_weighted_colour_and_shape_cross_entropy():
    torch.manual_seed(7)
    dim, batch = 8, tiny_batch()
    text, heads = WordVectors(dim), make_heads(dim)
    model = DualEncoder(LocationFeatures(dim), text)
    image_feats = torch.randn(2, 4, dim)
    base = RelationLoss(embed_dim=dim)(image_feats, None, model=model, heads=heads, **batch)
    with_objects = RelationLoss(object_weight=0.5, embed_dim=dim)
    loss = with_objects(image_feats, None, model=model, heads=heads, **batch)
    _, grounded = hand_loss(text, heads, image_feats, torch.ones(2, 4, dtype=torch.bool), batch, 1.0, 1.0)
    terms = []
    for b, a in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        for classifier, label in ((with_objects.color_classifier, batch["obj_color"][b, a]),
                                  (with_objects.shape_classifier, batch["obj_shape"][b, a])):
            logits = (classifier.weight.double() @ grounded[b, a] + classifier.bias.double()).detach()
            terms.append(0.5 * float(torch.logsumexp(logits, 0) - logits[label]))
    assert abs(float(loss.detach()) - float(base.detach()) - 0.5 * sum(terms) / 5) < 1e-4
    assert not hasattr(RelationLoss(embed_dim=dim), "color_classifier")  # no unused parameters


def test_a_batch_without_annotated_pairs_gives_zero_and_still_backpropagates():
    dim = 8
    text, heads = WordVectors(dim), make_heads(dim)
    batch = dict(n_objects=torch.tensor([1, 1]), obj_color=torch.tensor([[0, -1], [1, -1]]),
                 obj_shape=torch.tensor([[0, -1], [1, -1]]), obj_size=torch.tensor([[0, -1], [1, -1]]),
                 relations=torch.full((2, 2, 2), -1))
    loss = RelationLoss(embed_dim=dim)(torch.randn(2, 3, dim), None, model=DualEncoder(LocationFeatures(dim), text),
                                       heads=heads, **batch)
    assert float(loss.detach()) == 0.0
    loss.backward()


def test_loss_errors_name_what_is_missing():
    dim = 8
    model, heads, batch = DualEncoder(LocationFeatures(dim), WordVectors(dim)), make_heads(dim), tiny_batch()
    loss_fn = RelationLoss(embed_dim=dim)
    with pytest.raises(ValueError, match=r"location features \[B, L, D\].*pool: none"):
        loss_fn(torch.randn(2, dim), None, model=model, heads=heads, **batch)
    with pytest.raises(ValueError, match="head named 'grounding'.*'relation'"):
        loss_fn(torch.randn(2, 4, dim), None, model=model, heads=nn.ModuleDict({"relation": heads["relation"]}),
                **batch)
    with pytest.raises(ValueError, match="head named 'rel'"):
        RelationLoss(relation_head="rel", embed_dim=dim)(torch.randn(2, 4, dim), None, model=model, heads=heads,
                                                         **batch)
    two = nn.ModuleDict({"grounding": heads["grounding"],
                         "relation": BilinearRelation(rank=4, predicates=2, embed_dim=dim)})
    with pytest.raises(ValueError, match="relation id 3.*2 predicates"):
        loss_fn(torch.randn(2, 4, dim), None, model=model, heads=two, **batch)
    for bad in (dict(temperature=0), dict(pair_weight=-1), dict(object_weight="x")):
        with pytest.raises(ValueError):
            RelationLoss(**bad)


@pytest.fixture
def one_thread():
    """Tiny tensors: extra threads only contend with other processes on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_heads_alone_learn_relations_that_are_a_function_of_positions(one_thread):
    """Fixed random location features: each image has 5 locations at random points (x, y) of [0, 3)²,
    coded along two fixed random directions, and an object at a location adds its phrase vector. The
    relations follow the points (the shapes rule), so the heads must find each object by its phrase
    and compare positions."""
    gen = torch.Generator().manual_seed(8)
    dim, locations, kinds = 16, 5, 6
    phrase = torch.randn(kinds, dim, generator=gen)
    right, down = torch.randn(2, dim, generator=gen)

    def scenes(n):
        kind = torch.stack([torch.randperm(kinds, generator=gen)[:3] for _ in range(n)])
        x, y = 3 * torch.rand(2, n, locations, generator=gen)
        features = x[..., None] * right + y[..., None] * down + 0.1 * torch.randn(n, locations, dim, generator=gen)
        n_objects = 2 + (torch.rand(n, generator=gen) < 0.5).long()
        real = torch.arange(3)[None, :] < n_objects[:, None]
        features[:, :3] += phrase[kind] * real[..., None]  # objects sit at the first locations
        dx, dy = x[:, :3, None] - x[:, None, :3], y[:, :3, None] - y[:, None, :3]
        rel = torch.where(dx.abs() >= dy.abs(), torch.where(dx < 0, 0, 1), torch.where(dy < 0, 2, 3))
        relations = torch.where(real[:, :, None] & real[:, None, :] & ~torch.eye(3, dtype=torch.bool), rel, -1)
        return phrase[kind] * real[..., None], real, features, relations, n_objects

    heads = make_heads(dim, heads=2, rank=8)
    attention, relation = heads["grounding"], heads["relation"]
    loss_fn = RelationLoss(embed_dim=dim)
    train, test = scenes(1024), scenes(256)
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(200):  # minibatches of 64 scenes
        index = torch.randint(0, 1024, (64,), generator=gen)
        queries, real, features, relations, n_objects = (x[index] for x in train)
        loss = loss_fn.loss_from_grounded(attention(queries, real, features), relation, relations, n_objects)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    queries, real, features, relations, n_objects = test
    with torch.no_grad():
        outcomes = relation_outcomes(relation.pairwise_scores(attention(queries, real, features)),
                                     relations, n_objects)
    metrics = relation_metrics(outcomes)
    assert metrics["accuracy"] > 80.0  # chance 25 %
    with_rival = outcomes["competitors"] > 0
    assert float(outcomes["pair_correct"][with_rival].double().mean()) > 0.8  # chance 50 % on these


# --- the evaluator -----------------------------------------------------------------------------------


def test_relation_outcomes_and_metrics_on_hand_built_scores():
    batch = tiny_batch()
    pairwise = torch.zeros(2, 4, 3, 3)
    pairwise[0, :, 0, 1] = torch.tensor([5.0, 1, 1, 1])  # (0, left of, 1): top-1 correct
    pairwise[0, :, 0, 2] = torch.tensor([6.0, 1, 2, 1])  # (0, above, 2): top-1 says left of: wrong
    pairwise[0, :, 1, 0] = torch.tensor([0.0, 3, 1, 1])  # (1, right of, 0): correct
    pairwise[0, :, 1, 2] = torch.tensor([0.0, 0, 4, 1])  # (1, above, 2): correct
    pairwise[0, :, 2, 0] = torch.tensor([0.0, 0, 0, 1])  # (2, below, 0)
    pairwise[0, :, 2, 1] = torch.tensor([0.0, 0, 0, 2])  # (2, below, 1)
    pairwise[1, :, 0, 1] = torch.tensor([2.0, 1, 0, 0])  # (0, right of, 1) in image 1: wrong
    outcomes = relation_outcomes(pairwise, batch["relations"], batch["n_objects"])
    assert outcomes["predicate_correct"].tolist() == [True, False, True, True, True, True, False]
    # pair: (0, left of, 1) vs competitor 2 under "left of": 5 > 6? no; (0, above, 2) vs 1: 2 > 1 yes;
    # (1, right of, 0) vs 2: 3 > 0 yes; (1, above, 2) vs 0: 4 > 0 yes; the rest have no competitor
    assert outcomes["pair_correct"].tolist() == [False, True, True, True, True, True, True]
    metrics = relation_metrics(outcomes, is_holdout=np.array([False, True]))
    assert metrics == pytest.approx({"accuracy": 500 / 7, "pair_accuracy": 600 / 7,
                                     "accuracy_holdout": 0.0, "pair_accuracy_holdout": 100.0})
    assert set(relation_metrics(outcomes, is_holdout=np.array([False, False]))) == {"accuracy", "pair_accuracy"}


def evaluation_setup(dim=8, n=6):
    torch.manual_seed(9)
    batch = tiny_batch()
    extras = {k: np.concatenate([v.numpy()] * (n // 2)) for k, v in batch.items()}
    extras["is_holdout"] = np.arange(n) >= n - 2
    split = Split("test", images=torch.randn(n, 4, dim), texts=["x"] * n, text_to_image=np.arange(n),
                  extras=extras)
    model = DualEncoder(LocationFeatures(dim), WordVectors(dim), batch_size=4)
    model.heads.update(make_heads(dim))
    return EvalContext(model=model, split=split, train_split=split, dataset_info=SHAPES_INFO), extras


def test_evaluator_scores_every_pair_from_the_models_own_heads_in_batches():
    context, extras = evaluation_setup()
    model, split = context.model, context.split
    model.train()
    metrics = RelationEvaluator(batch_size=4).evaluate(context)
    assert model.heads.training and model.text_encoder.training  # modes restored
    # the same pipeline, written out: pooled phrases → reference attention → pairwise scores
    text, heads = model.text_encoder, model.heads
    grounded = torch.zeros(6, 3, 8)
    for b in range(6):
        n = int(extras["n_objects"][b])
        queries = torch.stack([text.phrase_vector(" ".join([SIZES[extras["obj_size"][b, a]],
                               COLORS[extras["obj_color"][b, a]], SHAPES[extras["obj_shape"][b, a]]]))
                               for a in range(n)])
        real = torch.ones(4, dtype=torch.bool)
        real[-1] = (b % 4) % 2 == 0  # the encoder pads the last location of odd rows of each batch of 4
        grounded[b, :n] = reference_attention(heads["grounding"].attention, queries, split.images[b], real).float()
    with torch.no_grad():
        pairwise = heads["relation"].pairwise_scores(grounded)
    expected = relation_metrics(relation_outcomes(pairwise, extras["relations"], extras["n_objects"]),
                                extras["is_holdout"])
    assert set(metrics) == set(RelationEvaluator().metric_names())
    assert metrics == pytest.approx(expected)
    assert all(p.grad is None for p in model.parameters())  # gradient-free


def test_evaluator_chance_units_and_errors():
    context, _ = evaluation_setup()
    evaluator = RelationEvaluator()
    chance = evaluator.chance(context)
    # competitors per pair of tiny_batch(): [1, 1, 1, 1, 0, 0] in image 0 and [0] in image 1
    pair_chance = (4 * 0.5 + 2 * 1.0 + 1.0) / 7
    assert chance == pytest.approx({"accuracy": 25.0, "pair_accuracy": 100 * pair_chance,
                                    "accuracy_holdout": 25.0, "pair_accuracy_holdout": 100 * pair_chance})
    assert evaluator.unit("pair_accuracy_holdout") == "%" and evaluator.higher_is_better("accuracy")
    context.model.heads = nn.ModuleDict({"grounding": context.model.heads["grounding"]})
    with pytest.raises(ValueError, match="head named 'relation'"):
        evaluator.evaluate(context)
    context, _ = evaluation_setup()
    del context.split.extras["relations"]
    with pytest.raises(ValueError, match="lacks relations"):
        evaluator.evaluate(context)


def test_components_are_registered_and_built_with_the_runner_context():
    registry = Registry()
    assert "relation" in registry.available("loss")["loss"]
    assert "relation" in registry.available("evaluator")["evaluator"]
    assert {"cross-attention", "bilinear-relation"} <= set(registry.available("head")["head"])
    context = {"embed_dim": 16, "dataset_info": SHAPES_INFO}
    attention = registry.get("head", "cross-attention").build({"heads": 4}, context)
    relation = registry.get("head", "bilinear-relation").build({"rank": 8}, context)
    assert attention.embed_dim == 16 and attention.heads == 4
    assert relation.project.in_features == 16 and relation.predicates == list(RELATIONS)
    assert isinstance(harness.create("evaluator", "relation"), RelationEvaluator)


# --- end to end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_relation_method_runs_end_to_end_on_shapes(tmp_path, device):
    config = {
        "name": "relations",
        "dataset": {"name": "shapes", "train_size": 64, "val_size": 0, "test_size": 32, "image_size": 32,
                    "holdout": ["red circle", "blue square"]},
        "seeds": [0],
        "methods": [{
            "name": "relation",
            "encoders": {"image": {"name": "small-cnn", "channels": [8, 16], "pool": "none",
                                   "attention_layers": 1, "heads": 2},
                         "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
            "embed_dim": 16,
            "heads": {"grounding": {"name": "cross-attention", "heads": 2},
                      "relation": {"name": "bilinear-relation", "rank": 8}},
            "loss": {"name": "relation", "pair_weight": 0.5, "object_weight": 0.1},
            "train": {"epochs": 2, "batch_size": 32, "device": device, "lr": 3e-3, "threads": 1},
        }],
        "evaluators": [{"name": "relation"}],
        "report": {"metrics": ["relation/accuracy", "relation/pair_accuracy"]},
    }
    outcome = harness.run(config, tmp_path, progress=False)
    assert outcome.ok, [r.error for r in outcome.results]
    result = outcome.results[0]
    assert set(result.metrics) == {f"relation/{m}" for m in RelationEvaluator().metric_names()}
    assert all(0 <= value <= 100 for value in result.metrics.values())
    assert result.chance["relation/accuracy"] == pytest.approx(25.0)
    assert 50.0 <= result.chance["relation/pair_accuracy"] < 100.0
    assert result.units["relation/pair_accuracy"] == "%"
    assert [h["epoch"] for h in result.history] == [0, 1] and all(math.isfinite(h["loss"]) for h in result.history)
    assert {("head", "cross-attention"), ("head", "bilinear-relation"), ("loss", "relation")} \
        <= {(p.kind, p.name) for p in result.providers}


def test_relation_metrics_are_left_out_for_methods_without_relation_heads(tmp_path):
    config = {"name": "pooled", "seeds": [0],
              "dataset": {"name": "shapes", "train_size": 64, "val_size": 0, "test_size": 32, "image_size": 32},
              "methods": [{"name": "infonce", "loss": {"name": "infonce"}, "embed_dim": 16,
                           "encoders": {"image": {"name": "small-cnn", "channels": [8, 16]},
                                        "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                           "train": {"epochs": 1, "batch_size": 32, "threads": 1}}],
              "evaluators": [{"name": "retrieval"}, {"name": "relation"}]}
    result = harness.run(config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error  # not applicable, not a failure
    assert not any(m.startswith("relation/") for m in result.metrics) and "retrieval/rsum" in result.metrics


def test_object_phrases_are_the_objects_names_on_visual_genome_style_extras():
    """With ``obj_name`` the phrases are the dataset's object names (padding and -1 slots left out);
    without it, shapes' attribute phrases; an id beyond ``object_names`` is a clear error."""
    from harness_plugins.grounding.relation_objects import object_phrases

    names = ["man", "horse", "shirt"]
    ids, text_of = object_phrases({"n_objects": torch.tensor([2, 1]), "obj_name": torch.tensor([[1, 0, 2], [2, -1, 0]])},
                                  names)
    assert ids.tolist() == [[1, 0, -1], [2, -1, -1]] and [text_of(i) for i in (0, 1, 2)] == names
    x = {k: torch.as_tensor(v) for k, v in generate_split("train", 4, image_size=32, seed=0).extras.items()}
    ids, text_of = object_phrases(x)
    assert torch.equal(ids, object_phrase_ids(x["n_objects"], x["obj_color"], x["obj_shape"], x["obj_size"]))
    with pytest.raises(ValueError, match="object name id 2 in the data, but the dataset names 2 objects"):
        object_phrases({"n_objects": torch.tensor([1]), "obj_name": torch.tensor([[2]])}, names[:2])
    with pytest.raises(ValueError, match="need obj_name, or obj_color, obj_shape and obj_size"):
        object_phrases({"n_objects": torch.tensor([1]), "obj_color": torch.tensor([[0]])})


def test_relation_method_trains_and_evaluates_on_visual_genome_files(tmp_path):
    """The relation module on the visual-genome loader (files in the published layout): object phrases are
    the objects' names, predicates the dataset's; the loss trains and the evaluator scores every pair."""
    import real_formats as rf

    files = rf.visual_genome_files(tmp_path, n_images=16)
    config = {
        "name": "vg-relations",
        "dataset": {"name": "visual-genome", "image_data": str(files["image_data"]),
                    "relationships": str(files["relationships"]), "objects": str(files["objects"]),
                    "images": str(tmp_path), "val_size": 0, "test_size": 6, "image_size": 32, "max_objects": 5},
        "seeds": [0],
        "methods": [{
            "name": "relation",
            "encoders": {"image": {"name": "small-cnn", "channels": [8, 16], "pool": "none"},
                         "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8, "pool": "none"}},
            "embed_dim": 16,
            "heads": {"grounding": {"name": "cross-attention", "heads": 2},
                      "relation": {"name": "bilinear-relation", "rank": 8}},
            "stages": [{"name": "pretrain", "loss": {"name": "matchmap"}},
                       {"name": "relations", "loss": {"name": "relation", "pair_weight": 0.5},
                        "freeze": ["image_encoder", "text_encoder"]}],
            "train": {"epochs": 2, "batch_size": 5, "lr": 3e-3, "threads": 1},
        }],
        "evaluators": [{"name": "relation"}],
    }
    outcome = harness.run(config, tmp_path / "out", progress=False)
    assert outcome.ok, [r.error for r in outcome.results]
    result = outcome.results[0]
    assert [h["stage"] for h in result.history] == ["pretrain"] * 2 + ["relations"] * 2
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert 0 <= result.metrics["relation/accuracy"] <= 100 and 0 <= result.metrics["relation/pair_accuracy"] <= 100
    assert result.chance["relation/accuracy"] == pytest.approx(100 / 4)  # 4 predicates ("ON" = "on")

    # the phrases the loss and the evaluator ground are the dataset's object names
    registry = Registry()
    data = registry.create("dataset", "visual-genome", **{k: v for k, v in config["dataset"].items() if k != "name"})
    evaluator = RelationEvaluator()
    split = data.split("test")
    evaluator.check_split(split)
    from harness_plugins.grounding.relation_objects import object_phrases
    ids, text_of = object_phrases({k: torch.as_tensor(split.extras[k]) for k in ("n_objects", "obj_name")},
                                  data.info.object_names)
    seen = sorted({text_of(i) for i in ids[ids >= 0].tolist()})
    assert seen and set(seen) <= {"man", "horse", "shirt", "street", "tree", "car"}
    with pytest.raises(ValueError, match="lacks n_objects, relations"):
        evaluator.check_split(Split(name="test", images=np.zeros((1, 3, 4, 4), np.uint8), texts=["a"],
                                    text_to_image=np.zeros(1, np.int64), extras={}))


def test_the_colour_and_shape_term_is_refused_on_a_dataset_of_named_objects():
    """``object_weight > 0`` needs shapes' colours and shapes; on a dataset whose objects are named (Visual
    Genome's ``info.object_names``) it is a parameter error when the loss is built (so at validation)."""
    named = DatasetInfo(name="visual-genome", image_shape=(3, 32, 32), text_kind="caption", vocab=["man"],
                        predicates=["on"], object_names=["man", "horse"])
    with pytest.raises(ValueError, match="set object_weight: 0"):
        RelationLoss(object_weight=0.1, dataset_info=named)
    assert RelationLoss(dataset_info=named).object_names == ["man", "horse"]
    assert RelationLoss(object_weight=0.1, dataset_info=SHAPES_INFO).object_weight == 0.1
