"""False-negative-aware training (`mask_false_negatives`): the relevance lookup, every in-batch loss
against an explicit per-anchor formula that skips the relevant negatives (values and gradients), the
samplers' queued and re-ranked negatives, and the runner's wiring and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

import harness
from harness.components import FalseNegatives
from harness.data import PairRelevance, Split
from harness.errors import ConfigError
from harness.validation import prepare
from harness_plugins.contrastive import losses as L
from harness_plugins.contrastive import samplers as S
from harness_plugins.grounding.matchmap import MatchMap

B, D = 6, 4
F64 = torch.float64


def split_of(n_images: int, n_texts: int) -> Split:
    return Split("train", np.zeros((n_images, 1)), [f"t{j}" for j in range(n_texts)],
                 np.arange(n_texts) % n_images)


def relevance(seed: int = 0, n: int = B, p: float = 0.35) -> torch.Tensor:
    """R[t, i] for texts × images: text t is true of image t, and of others at random."""
    g = torch.Generator().manual_seed(seed)
    rel = torch.rand(n, n, generator=g) < p
    rel.fill_diagonal_(True)
    return rel


def false_negatives(rel: torch.Tensor) -> FalseNegatives:
    lookup = PairRelevance(split_of(rel.shape[1], rel.shape[0]), sp.csr_array(rel.numpy()))
    ids = torch.arange(B)
    return FalseNegatives(image_ids=ids, text_ids=ids, relevant=lookup)


def embeddings(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=F64)
    return x, x + 0.8 * torch.randn(B, D, generator=g, dtype=F64)


# --- the lookup ---------------------------------------------------------------------------------------


def test_pair_relevance_looks_up_exactly_the_true_pairs_with_broadcasting():
    rng = np.random.default_rng(0)
    dense = rng.random((40, 15)) < 0.2
    lookup = PairRelevance(split_of(15, 40), sp.csr_array(dense))
    assert len(lookup) == dense.sum()
    texts, images = torch.as_tensor(rng.integers(0, 40, 30)), torch.as_tensor(rng.integers(0, 15, 25))
    got = lookup(texts[:, None], images[None, :])
    assert got.shape == (30, 25) and got.dtype == torch.bool
    assert torch.equal(got, torch.as_tensor(dense)[texts][:, images])
    assert torch.equal(lookup(texts[:5], images[:5]), torch.as_tensor(dense[texts[:5], images[:5]]))
    # a dense boolean matrix works too, and a relevance without any true pair
    assert torch.equal(PairRelevance(split_of(15, 40), dense)(texts[:, None], images[None, :]), got)
    assert not PairRelevance(split_of(15, 40), np.zeros((40, 15), bool))(texts[:25], images).any()


def test_pair_relevance_without_exact_relevance_is_each_texts_own_image():
    split = split_of(4, 10)  # text j describes image j % 4
    lookup = PairRelevance(split)
    got = lookup(torch.arange(10)[:, None], torch.arange(4)[None, :])
    assert torch.equal(got, torch.as_tensor(np.arange(10)[:, None] % 4 == np.arange(4)[None, :]))


def test_pair_relevance_rejects_a_matrix_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"relevance has shape \(4, 10\), expected \(10, 4\)"):
        PairRelevance(split_of(4, 10), np.ones((4, 10), bool))


def test_shapes_relevance_lookup_agrees_with_the_dense_matrix():
    ds = harness.create("dataset", "shapes", train_size=200, val_size=20, test_size=20, image_size=32)
    split = ds.split("train")
    dense = torch.as_tensor(ds.relevance("train").toarray())
    lookup = PairRelevance(split, ds.relevance("train"))
    texts, images = torch.randperm(len(split.texts))[:50], torch.randperm(len(split))[:60]
    assert torch.equal(lookup(texts[:, None], images[None, :]), dense[texts][:, images])
    assert dense.sum() > dense.shape[0]  # shapes captions are true of more than their own image


# --- every loss against its explicit per-anchor formula -------------------------------------------------


def unit(v):
    return F.normalize(v, dim=-1)


def ref_infonce(x, y, rel, tau=0.1):
    s = unit(x) @ unit(y).T / tau
    total = 0
    for a in range(B):
        img = [s[a, a]] + [s[a, j] for j in range(B) if j != a and not rel[j, a]]
        txt = [s[a, a]] + [s[j, a] for j in range(B) if j != a and not rel[a, j]]
        total = total + torch.logsumexp(torch.stack(img), 0) - s[a, a]
        total = total + torch.logsumexp(torch.stack(txt), 0) - s[a, a]
    return total / (2 * B)


def ref_nt_xent(x, y, rel, tau=0.1):
    xi, yt = unit(x), unit(y)
    total = 0
    for a in range(B):
        pos = xi[a] @ yt[a] / tau
        img = [pos] + [xi[a] @ yt[j] / tau for j in range(B) if j != a and not rel[j, a]] \
            + [xi[a] @ xi[j] / tau for j in range(B) if j != a and not rel[a, j]]
        txt = [pos] + [yt[a] @ xi[j] / tau for j in range(B) if j != a and not rel[a, j]] \
            + [yt[a] @ yt[j] / tau for j in range(B) if j != a and not rel[j, a]]
        total = total + torch.logsumexp(torch.stack(img), 0) + torch.logsumexp(torch.stack(txt), 0) - 2 * pos
    return total / (2 * B)


def ref_nt_logistic(x, y, rel, tau=0.2):
    s = unit(x) @ unit(y).T / tau
    pos = torch.stack([-F.logsigmoid(s[a, a]) for a in range(B)]).mean()
    neg = torch.stack([-F.logsigmoid(-s[a, j]) for a in range(B) for j in range(B)
                       if j != a and not rel[j, a]]).mean()
    return pos + neg


def ref_triplet(x, y, rel, margin=0.2, max_violation=False):
    s = unit(x) @ unit(y).T
    total = 0
    for a in range(B):
        for hinges in ([F.relu(margin + s[a, j] - s[a, a]) for j in range(B) if j != a and not rel[j, a]],
                       [F.relu(margin + s[j, a] - s[a, a]) for j in range(B) if j != a and not rel[a, j]]):
            if hinges:
                total = total + (torch.stack(hinges).max() if max_violation else torch.stack(hinges).sum())
    return total / B


def ref_npair(x, y, rel):
    total = 0
    for a in range(B):
        margins = [x[a] @ y[j] - x[a] @ y[a] for j in range(B) if j != a and not rel[j, a]]
        total = total + torch.logsumexp(torch.stack([x.new_zeros(())] + margins), 0)
    return total / B


def ref_contrastive(x, y, rel, margin=1.0):
    s = unit(x) @ unit(y).T
    pos = torch.stack([2 - 2 * s[a, a] for a in range(B)]).mean()
    neg = torch.stack([F.relu(margin - (2 - 2 * s[a, j]).sqrt()) ** 2 for a in range(B) for j in range(B)
                       if j != a and not rel[j, a]]).mean()
    return pos + neg


CASES = {
    "infonce": (lambda: L.InfoNCE(0.1, mask_false_negatives=True), ref_infonce),
    "nt-xent": (lambda: L.NTXent(0.1, mask_false_negatives=True), ref_nt_xent),
    "nt-logistic": (lambda: L.NTLogistic(0.2, mask_false_negatives=True), ref_nt_logistic),
    "triplet": (lambda: L.Triplet(0.2, mask_false_negatives=True), ref_triplet),
    "vse++": (lambda: L.Triplet(0.2, max_violation=True, mask_false_negatives=True),
              lambda x, y, rel: ref_triplet(x, y, rel, max_violation=True)),
    "npair": (lambda: L.NPair(mask_false_negatives=True), ref_npair),
    "contrastive": (lambda: L.Contrastive(mask_false_negatives=True), ref_contrastive),
}


def value_and_grads(fn, x, y):
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = fn(x, y)
    return (value.detach(), *torch.autograd.grad(value, (x, y)))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_masked_loss_and_gradient_equal_the_formula_without_the_relevant_negatives(name, seed):
    make, reference = CASES[name]
    x, y = embeddings(seed)
    rel = relevance(seed)
    assert (rel & ~torch.eye(B, dtype=torch.bool)).any()  # there is something to mask
    got = value_and_grads(lambda a, b: make()(a, b, false_negatives=false_negatives(rel)), x, y)
    want = value_and_grads(lambda a, b: reference(a, b, rel), x, y)
    for g, w, what in zip(got, want, ("value", "image gradient", "text gradient")):
        torch.testing.assert_close(g, w, msg=f"{name}: {what}")
    # and masking changes the loss: marking each image's hardest text negative relevant moves every loss
    s = unit(x) @ unit(y).T - 10 * torch.eye(B, dtype=F64)
    hardest = torch.eye(B, dtype=torch.bool)
    hardest[s.argmax(1), torch.arange(B)] = True
    unmasked = make()
    unmasked.mask_false_negatives = False
    assert not torch.isclose(unmasked(x, y), make()(x, y, false_negatives=false_negatives(hardest)))


@pytest.mark.parametrize("name", list(CASES))
def test_with_only_the_own_pairs_relevant_masking_changes_nothing(name):
    make, _ = CASES[name]
    x, y = embeddings(3)
    plain = make()
    plain.mask_false_negatives = False
    torch.testing.assert_close(make()(x, y, false_negatives=false_negatives(torch.eye(B, dtype=torch.bool))),
                               plain(x, y))


def test_a_loss_asked_to_mask_without_ids_says_what_it_needs():
    x, y = embeddings()
    with pytest.raises(ValueError, match="needs false_negatives"):
        L.InfoNCE(mask_false_negatives=True)(x, y)


def test_when_every_negative_is_relevant_infonce_is_zero():
    x, y = embeddings()
    loss = L.InfoNCE(0.1, mask_false_negatives=True)(x, y, false_negatives=false_negatives(
        torch.ones(B, B, dtype=torch.bool)))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_matchmap_masks_the_relevant_pairs_of_both_cross_entropies():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(B, 5, D, generator=g, dtype=F64), torch.randn(B, 3, D, generator=g, dtype=F64)
    rel = relevance(2)
    loss = MatchMap(0.5, mask_false_negatives=True)

    def reference(image, text):
        s = loss.pair_scores(image, text) / 0.5
        total = 0
        for a in range(B):
            img = torch.stack([s[a, a]] + [s[a, j] for j in range(B) if j != a and not rel[j, a]])
            txt = torch.stack([s[a, a]] + [s[j, a] for j in range(B) if j != a and not rel[a, j]])
            total = total + torch.logsumexp(img, 0) + torch.logsumexp(txt, 0) - 2 * s[a, a]
        return total / (2 * B)

    got = value_and_grads(lambda a, b: loss(a, b, false_negatives=false_negatives(rel)), image, text)
    want = value_and_grads(reference, image, text)
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w)


# --- samplers ------------------------------------------------------------------------------------------


class Linear2(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder, self.text_encoder = nn.Linear(6, D).double(), nn.Linear(5, D).double()

    def forward(self, images, texts):
        return self.image_encoder(images), self.text_encoder(texts)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(B, 6, generator=g, dtype=F64), "texts": torch.randn(B, 5, generator=g,
                                                                                      dtype=F64)}


def test_moco_queues_the_ids_of_its_keys_and_the_loss_drops_relevant_queued_keys():
    # 12 texts/images: step 1 uses ids 0..5, step 2 ids 6..11; text 3 (queued at step 1) is true of
    # every step-2 image, nothing else is relevant beyond the own pairs
    rel = torch.eye(12, dtype=torch.bool)
    rel[3, 6:] = True
    lookup = PairRelevance(split_of(12, 12), sp.csr_array(rel.numpy()))
    model, loss = Linear2(), L.InfoNCE(0.1)
    sampler = S.MoCo(size=8, momentum=0.9, mask_false_negatives=True)
    sampler.setup(model, loss)
    for step, ids in enumerate((torch.arange(6), torch.arange(6, 12))):
        data = batch(step)
        image_emb, text_emb = model(data["images"], data["texts"])
        fn = FalseNegatives(ids, ids, lookup)
        if step == 1:
            assert torch.equal(sampler.text_id_queue.rows(), torch.arange(6))
            assert torch.equal(sampler.image_id_queue.rows(), torch.arange(6))
            key_image, key_text = sampler._keys(model, data)
            masked = sampler.compute_loss(loss, model, data, image_emb, text_emb, {"false_negatives": fn})
            # the same loss with text 3 simply removed from the queue (it is relevant to every anchor)
            keep = torch.arange(6) != 3
            plain = loss(image_emb, text_emb, negatives=L.Negatives(
                text=sampler.text_queue.rows()[keep], image=sampler.image_queue.rows(),
                text_positive=key_text, image_positive=key_image))
            torch.testing.assert_close(masked, plain)
            unmasked = loss(image_emb, text_emb, negatives=L.Negatives(
                text=sampler.text_queue.rows(), image=sampler.image_queue.rows(),
                text_positive=key_text, image_positive=key_image))
            assert not torch.isclose(masked, unmasked)
        else:
            sampler.compute_loss(loss, model, data, image_emb, text_emb, {"false_negatives": fn})
        sampler.after_step(model, data, image_emb.detach(), text_emb.detach())
    # a ring buffer of 8: step 2's ids 6..11 overwrote slots 6, 7, 0, 1, 2, 3, like its keys
    assert sampler.text_id_queue.rows().tolist() == [8, 9, 10, 11, 4, 5, 6, 7]
    state = sampler.state_dict()
    again = S.MoCo(size=8, momentum=0.9, mask_false_negatives=True)
    again.setup(model, loss)
    again.load_state_dict(state)
    assert torch.equal(again.text_id_queue.rows(), sampler.text_id_queue.rows())


class Capture(nn.Module):
    """A loss that records the negatives it is given."""

    def forward(self, image_emb, text_emb, negatives=None, false_negatives=None):
        self.negatives, self.false_negatives = negatives, false_negatives
        return (image_emb * text_emb).sum()


def test_rerank_picks_the_hardest_candidates_among_those_not_relevant_to_the_anchor():
    x, y = embeddings(4)
    rel = relevance(4, p=0.3)
    fn = false_negatives(rel)
    sampler, capture = S.Rerank(top_n=2, size=0, mask_false_negatives=True), Capture()
    sampler.compute_loss(capture, None, {}, x, y, {"false_negatives": fn})
    neg = capture.negatives
    s = unit(x) @ unit(y).T
    for a in range(B):
        # image anchor a: texts j != a that are not true of image a, two most similar
        candidates = [j for j in range(B) if j != a and not rel[j, a]]
        want = sorted(candidates, key=lambda j: -s[a, j])[:2]
        got = neg.text_ids[a].tolist()
        assert got[:len(want)] == want
        assert torch.equal(neg.text[a][:len(want)], y[want])
        # text anchor a: images j != a that text a is not true of
        candidates = [j for j in range(B) if j != a and not rel[a, j]]
        assert neg.image_ids[a].tolist()[:min(2, len(candidates))] == \
            sorted(candidates, key=lambda j: -s[j, a])[:2]
    # with fewer clean candidates than top_n the relevant ones fill up, and the loss masks them
    sampler = S.Rerank(top_n=5, size=0, mask_false_negatives=True)
    loss = L.InfoNCE(0.1)
    masked = sampler.compute_loss(loss, None, {}, x, y, {"false_negatives": fn})
    torch.testing.assert_close(masked, ref_infonce(x, y, rel))


# --- the runner ------------------------------------------------------------------------------------------


def tiny(method: dict, transforms: list | None = None) -> dict:
    return {"name": "fn", "seeds": [0],
            "dataset": {"name": "shapes", "train_size": 64, "val_size": 16, "test_size": 32, "image_size": 32},
            "defaults": {"encoders": {"image": {"name": "small-cnn"}, "text": {"name": "gru"}},
                         "embed_dim": 16,
                         "train": {"epochs": 1, "batch_size": 16, "transforms": transforms or []}},
            "methods": [{"name": "m", **method}], "evaluators": [{"name": "retrieval"}]}


def test_a_masked_run_trains_and_passes_each_batch_its_ids(tmp_path, monkeypatch):
    seen = []
    forward = L.InfoNCE.forward

    def spy(self, image_emb, text_emb, negatives=None, false_negatives=None):
        seen.append(false_negatives)
        return forward(self, image_emb, text_emb, negatives, false_negatives)

    monkeypatch.setattr(L.InfoNCE, "forward", spy)
    outcome = harness.run(tiny({"loss": {"name": "infonce", "mask_false_negatives": True}}), tmp_path,
                          progress=False)
    assert outcome.ok and len(seen) == 4  # 64 images / 16 per batch, one epoch
    ds = harness.create("dataset", "shapes", train_size=64, val_size=16, test_size=32, image_size=32)
    split, dense = ds.split("train"), ds.relevance("train").toarray()
    for fn in seen:
        assert fn is not None and len(set(fn.image_ids.tolist())) == 16
        # each row's text describes that row's image, and the lookup is the dataset's exact relevance
        assert (split.text_to_image[fn.text_ids.numpy()] == fn.image_ids.numpy()).all()
        assert np.array_equal(fn.matrix().numpy(), dense[fn.text_ids.numpy()][:, fn.image_ids.numpy()])


def test_the_sampler_option_turns_masking_on_for_the_loss(tmp_path, monkeypatch):
    seen = []
    forward = L.Triplet.forward
    monkeypatch.setattr(L.Triplet, "forward", lambda self, a, b, negatives=None, false_negatives=None:
                        seen.append(false_negatives) or forward(self, a, b, negatives, false_negatives))
    method = {"loss": {"name": "triplet"}, "sampler": {"name": "in-batch", "mask_false_negatives": True}}
    assert harness.run(tiny(method), tmp_path, progress=False).ok
    assert seen and all(fn is not None for fn in seen)


def test_masking_with_a_caption_rewriting_transform_is_a_config_error():
    config = tiny({"loss": {"name": "infonce", "mask_false_negatives": True}}, transforms=[{"name": "hflip"}])
    with pytest.raises(ConfigError, match="rewrites captions") as info:
        prepare(config)
    assert info.value.field == "methods[m].loss.mask_false_negatives"


def test_masking_with_a_loss_that_cannot_mask_is_a_config_error():
    config = tiny({"loss": {"name": "devise"}, "sampler": {"name": "in-batch", "mask_false_negatives": True}})
    with pytest.raises(ConfigError, match="cannot mask false negatives") as info:
        prepare(config)
    assert info.value.field == "methods[m].sampler.mask_false_negatives"


def test_the_matching_loss_leaves_relevant_in_batch_captions_out_of_its_negatives():
    from harness_plugins.fusion.matching import MatchingLoss
    torch.manual_seed(0)
    head = harness.create("head", "matcher", fusion={"name": "mlb", "dim": 8}, x_dim=D, y_dim=D).double()
    x, y = embeddings(5)
    rel = relevance(5)
    masked = MatchingLoss(negatives=B - 1, hard_negatives=False, mask_false_negatives=True)(
        x, y, heads={"match": head}, false_negatives=false_negatives(rel))
    # every other caption of the batch is a negative, except those true of the image
    i, j = [], []
    for a in range(B):
        for c in range(B):
            if c != a and not rel[c, a]:
                i.append(a)
                j.append(c)
    want = 0.5 * (-F.logsigmoid(head(x, y)).mean() - F.logsigmoid(-head(x[i], y[j])).mean())
    torch.testing.assert_close(masked, want.float())
    plain = MatchingLoss(negatives=B - 1, hard_negatives=False)(x, y, heads={"match": head})
    assert not torch.isclose(plain, masked)


@pytest.mark.parametrize("where", ["loss", "sampler"])
def test_a_quoted_flag_is_a_config_error_not_a_silent_yes(where):
    method = {"loss": {"name": "infonce"}, "sampler": {"name": "in-batch"}}
    method[where]["mask_false_negatives"] = "no"
    with pytest.raises(ConfigError, match="mask_false_negatives: expected true or false, got 'no'") as info:
        prepare(tiny(method))
    assert info.value.field.startswith(f"methods[m].{where}")
