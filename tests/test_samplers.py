"""Samplers (in-batch, moco, rerank) with tiny linear encoders, against explicit computations."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from harness.components import Sampler
from harness_plugins.contrastive import losses as L
from harness_plugins.contrastive import samplers as S

IMAGE_DIM, TEXT_DIM, EMBED = 6, 5, 4
F64 = torch.float64


class TinyDual(nn.Module):
    """Stands in for harness.model.DualEncoder: two linear encoders."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.image_encoder = nn.Linear(IMAGE_DIM, EMBED).double()
        self.text_encoder = nn.Linear(TEXT_DIM, EMBED).double()

    def forward(self, images, texts):
        return self.image_encoder(images), self.text_encoder(texts)


def make_batch(b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(b, IMAGE_DIM, generator=g, dtype=F64),
            "texts": torch.randn(b, TEXT_DIM, generator=g, dtype=F64)}


def step(sampler, model, loss, batch, optimizer=None):
    """One training step as the runner does it: loss through the sampler, then ``after_step``."""
    image_emb, text_emb = model(batch["images"], batch["texts"])
    value = sampler.compute_loss(loss, model, batch, image_emb, text_emb, {})
    if optimizer is not None:
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    sampler.after_step(model, batch, image_emb.detach(), text_emb.detach())
    return value


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def test_registration_and_in_batch_default():
    found = {}
    S.register_samplers(register=lambda name, factory: found.setdefault(name, factory))
    assert set(found) == {"in-batch", "moco", "rerank"}
    for factory in found.values():
        assert isinstance(factory(), Sampler) and factory.__doc__.strip()
    model, loss = TinyDual(), L.InfoNCE()
    sampler = S.InBatch()
    sampler.check_loss(L.DeViSE())  # in-batch takes any loss
    batch = make_batch(8, 0)
    image_emb, text_emb = model(batch["images"], batch["texts"])
    torch.testing.assert_close(sampler.compute_loss(loss, model, batch, image_emb, text_emb, {}),
                               loss(image_emb, text_emb))


@pytest.mark.parametrize("sampler", [S.MoCo(), S.Rerank()], ids=["moco", "rerank"])
def test_losses_without_a_negatives_term_are_rejected_clearly(sampler):
    with pytest.raises(ValueError, match=r"DeViSE has no negatives term.*in-batch"):
        sampler.check_loss(L.DeViSE())
    for loss in (L.InfoNCE(), L.NTXent(), L.NTLogistic(), L.Triplet(), L.NPair(), L.Contrastive()):
        sampler.check_loss(loss)


def test_bad_sampler_parameters_are_rejected():
    for bad in (lambda: S.MoCo(size=-1), lambda: S.MoCo(momentum=1.5), lambda: S.Rerank(top_n=0)):
        with pytest.raises(ValueError):
            bad()


# --- moco ---------------------------------------------------------------------------------------------


def test_moco_keys_queue_and_loss_match_the_explicit_formula():
    model, tau, m = TinyDual(), 0.2, 0.9
    loss = L.InfoNCE(tau)
    sampler = S.MoCo(size=10, momentum=m)
    sampler.check_loss(loss)
    sampler.setup(model, loss)
    for key, online in ((sampler.image_key, model.image_encoder), (sampler.text_key, model.text_encoder)):
        assert key is not online and not any(p.requires_grad for p in key.parameters())
        for pk, pq in zip(key.parameters(), online.parameters()):
            torch.testing.assert_close(pk, pq)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    # Step 1: the queues are empty and MoCo has no in-batch negatives, so there is nothing to rank.
    first = make_batch(6, 1)
    assert step(sampler, model, loss, first, optimizer) == 0
    assert sampler.image_queue.count == sampler.text_queue.count == 6

    # The key encoders moved by EMA towards the updated online encoders.
    key_before = [p.clone() for p in sampler.image_key.parameters()]
    expected_keys_step2 = torch.cat([sampler.image_queue.rows(), sampler.text_queue.rows()])
    # Step 1's keys came from the key encoder as it was (equal to the initial online weights).
    init = TinyDual()
    with torch.no_grad():
        torch.testing.assert_close(expected_keys_step2[:6], init.image_encoder(first["images"]))
        torch.testing.assert_close(expected_keys_step2[6:], init.text_encoder(first["texts"]))
    for pk, p0, pq in zip(key_before, init.image_encoder.parameters(), model.image_encoder.parameters()):
        torch.testing.assert_close(pk, m * p0 + (1 - m) * pq.detach())

    # Step 2: an odd batch size, 6 queued keys per modality; compare with MoCo's logits written out.
    second = make_batch(5, 2)
    queue_img, queue_txt = sampler.image_queue.rows().clone(), sampler.text_queue.rows().clone()
    with torch.no_grad():
        k_img = sampler.image_key(second["images"])
        k_txt = sampler.text_key(second["texts"])
    q_img, q_txt = model(second["images"], second["texts"])

    def direction(q, k, queue):
        total = 0
        for i in range(len(q)):
            logits = torch.stack([unit(q[i]) @ unit(k[i])] + [unit(q[i]) @ unit(n) for n in queue]) / tau
            total = total - torch.log_softmax(logits, 0)[0]
        return total / len(q)

    expected = 0.5 * (direction(q_img, k_txt, queue_txt) + direction(q_txt, k_img, queue_img))
    got = sampler.compute_loss(loss, model, second, q_img, q_txt, {})
    torch.testing.assert_close(got, expected)
    g_got = torch.autograd.grad(got, list(model.parameters()), retain_graph=True)
    g_exp = torch.autograd.grad(expected, list(model.parameters()))
    for a, b in zip(g_got, g_exp):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in sampler.image_key.parameters())

    sampler.after_step(model, second, q_img.detach(), q_txt.detach())
    assert sampler.image_queue.count == 10  # 6 + 5 keys, capped at size
    # FIFO: the newest keys are in, the oldest one (row 0 of step 1) was overwritten
    rows = sampler.image_queue.rows()
    assert any(torch.allclose(r, k_img[-1]) for r in rows)
    assert not any(torch.allclose(r, queue_img[0]) for r in rows)


def test_queue_is_fifo_for_any_batch_size():
    q = S._Queue(size=4)
    q.push(torch.arange(3.0)[:, None])
    assert sorted(q.rows().flatten().tolist()) == [0, 1, 2]
    q.push(torch.arange(3.0, 6.0)[:, None])
    assert sorted(q.rows().flatten().tolist()) == [2, 3, 4, 5]
    q.push(torch.arange(6.0, 15.0)[:, None])  # a batch larger than the queue keeps its last rows
    assert sorted(q.rows().flatten().tolist()) == [11, 12, 13, 14]
    empty = S._Queue(size=0)
    empty.push(torch.ones(3, 1))
    assert empty.rows() is None


def test_moco_works_with_every_loss_that_has_a_negatives_term():
    for loss in (L.InfoNCE(), L.InfoNCE(learnable_temperature=True), L.NTXent(), L.NTLogistic(),
                 L.Triplet(max_violation=True), L.NPair(l2_reg=0.01, symmetric=True), L.Contrastive()):
        model = TinyDual()
        sampler = S.MoCo(size=7, in_batch=True)
        sampler.setup(model, loss)
        params = list(model.parameters()) + list(loss.parameters())
        optimizer = torch.optim.SGD(params, lr=0.1)
        for i, b in enumerate((4, 9, 3)):
            value = step(sampler, model, loss, make_batch(b, 10 + i), optimizer)
            assert torch.isfinite(value)
        assert value > 0
        if isinstance(loss, L.InfoNCE) and loss.logit_scale is not None:
            assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0


def test_moco_state_round_trips_through_a_safe_checkpoint():
    model, loss = TinyDual(), L.InfoNCE()
    sampler = S.MoCo(size=8, momentum=0.5)
    sampler.setup(model, loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    for i in range(3):
        step(sampler, model, loss, make_batch(3, 20 + i), optimizer)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    for load_first in (False, True):  # before or after setup(): both restore the same sampler
        restored = S.MoCo(size=8, momentum=0.5)
        if load_first:
            restored.load_state_dict(state)
            restored.setup(TinyDual(seed=1), loss)
        else:
            restored.setup(TinyDual(seed=1), loss)
            restored.load_state_dict(state)
        torch.testing.assert_close(restored.image_queue.rows(), sampler.image_queue.rows())
        torch.testing.assert_close(restored.text_queue.rows(), sampler.text_queue.rows())
        assert restored.image_queue.ptr == sampler.image_queue.ptr
        for a, b in zip(restored.text_key.parameters(), sampler.text_key.parameters()):
            torch.testing.assert_close(a, b)
        batch = make_batch(4, 30)
        image_emb, text_emb = model(batch["images"], batch["texts"])
        torch.testing.assert_close(restored.compute_loss(loss, model, batch, image_emb, text_emb, {}),
                                   sampler.compute_loss(loss, model, batch, image_emb, text_emb, {}))


# --- rerank -------------------------------------------------------------------------------------------


def embeddings(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, EMBED, generator=g, dtype=F64)
    return x, x + torch.randn(b, EMBED, generator=g, dtype=F64)


def grads_of(fn, x, y):
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = fn(x, y)
    return (value, *torch.autograd.grad(value, (x, y)))


def test_rerank_top1_without_memory_is_vsepp_hardest_negative():
    x, y = embeddings(9, 40)
    loss = L.Triplet(margin=0.2, max_violation=True)
    sampler = S.Rerank(top_n=1, size=0)
    ours = grads_of(lambda a, b: sampler.compute_loss(loss, None, {}, a, b, {}), x, y)
    ref = grads_of(loss, x, y)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_rerank_keeping_every_candidate_is_the_in_batch_loss():
    x, y = embeddings(6, 41)
    for loss in (L.InfoNCE(0.1), L.NTLogistic(0.3), L.Contrastive(), L.Triplet(), L.NPair(symmetric=True)):
        sampler = S.Rerank(top_n=50, size=0)
        ours = grads_of(lambda a, b: sampler.compute_loss(loss, None, {}, a, b, {}), x, y)
        ref = grads_of(loss, x, y)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b)


def test_rerank_selects_the_hardest_candidates_from_batch_and_memory():
    top_n, tau = 3, 0.1
    loss = L.InfoNCE(tau)
    sampler = S.Rerank(top_n=top_n, size=5)
    old_x, old_y = embeddings(5, 42)
    sampler.after_step(None, {}, old_x, old_y)  # fills the memory bank with past embeddings
    x, y = embeddings(4, 43)

    def hardest(anchor, batch_side, bank, i):
        candidates = [c for j, c in enumerate(batch_side) if j != i] + list(bank)
        order = sorted(candidates, key=lambda c: -float((unit(anchor) @ unit(c)).detach()))
        return order[:top_n]

    def ref(a, b):
        total = 0
        for anchors, positives, bank in ((a, b, old_y), (b, a, old_x)):
            for i in range(len(a)):
                negs = hardest(anchors[i], positives, bank, i)
                logits = torch.stack([unit(anchors[i]) @ unit(positives[i])]
                                     + [unit(anchors[i]) @ unit(n) for n in negs]) / tau
                total = total - torch.log_softmax(logits, 0)[0] / len(a)
        return total / 2

    ours = grads_of(lambda a, b: sampler.compute_loss(loss, None, {}, a, b, {}), x, y)
    expected = grads_of(ref, x, y)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)


def test_rerank_with_momentum_keys_runs_and_saves_its_state():
    model = TinyDual()
    for loss in (L.InfoNCE(), L.Triplet(max_violation=True), L.NTXent()):
        sampler = S.Rerank(top_n=4, size=6, momentum=0.99)
        sampler.setup(model, loss)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for i, b in enumerate((1, 5, 8)):
            assert torch.isfinite(step(sampler, model, loss, make_batch(b, 50 + i), optimizer))
        assert sampler.text_queue.count == 6
        state = sampler.state_dict()
        assert {"image_queue", "text_queue", "image_key", "text_key"} <= set(state)
