"""Two gloo ranks on CPU: every in-batch loss (and the samplers) equal the single-process global batch.

Each rank first computes the single-process reference on the whole batch (torch.distributed is not
yet initialized, so nothing is gathered), then joins the process group with its own slice of the rows
(the slices differ in size on purpose) and checks: the loss value equals the reference, and its
gradient w.r.t. its local rows divided by the world size equals the reference gradient of those rows.
"""

from __future__ import annotations

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
ROWS = [5, 3]  # rank 0 holds rows 0..4, rank 1 rows 5..7
F64 = torch.float64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loss_cases():
    from harness_plugins.contrastive import losses as L
    return {
        "infonce": lambda: L.InfoNCE(0.1),
        "infonce-learnable": lambda: L.InfoNCE(0.1, learnable_temperature=True).double(),
        "nt-xent": lambda: L.NTXent(0.1),
        "nt-logistic": lambda: L.NTLogistic(0.2),
        "triplet": lambda: L.Triplet(0.2),
        "vse++": lambda: L.Triplet(0.2, max_violation=True, reduction="sum"),
        "npair": lambda: L.NPair(l2_reg=0.1, symmetric=True),
        "contrastive": lambda: L.Contrastive(),
    }


class Linear2(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = nn.Linear(6, 4).double()
        self.text_encoder = nn.Linear(5, 4).double()

    def forward(self, images, texts):
        return self.image_encoder(images), self.text_encoder(texts)


def data():
    g = torch.Generator().manual_seed(0)
    n = sum(ROWS)
    x = torch.randn(n, 4, generator=g, dtype=F64)
    y = x + torch.randn(n, 4, generator=g, dtype=F64)
    pool = torch.randn(6, 4, generator=g, dtype=F64)
    keys = torch.randn(n, 4, generator=g, dtype=F64)
    per_anchor = torch.randn(n, 3, 4, generator=g, dtype=F64)
    batches = [{"images": torch.randn(n, 6, generator=g, dtype=F64),
                "texts": torch.randn(n, 5, generator=g, dtype=F64)} for _ in range(2)]
    return x, y, pool, keys, per_anchor, batches


def value_and_grads(fn, x, y):
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = fn(x, y)
    gx, gy = torch.autograd.grad(value, (x, y))
    return value.detach(), gx, gy


ID_SPACE = 20  # texts and images that false-negative masking knows about


def relevance_lookup():
    """A random relevance over ID_SPACE texts × images (text k true of image k, and others)."""
    import numpy as np
    from harness.data import PairRelevance, Split
    rel = np.random.default_rng(0).random((ID_SPACE, ID_SPACE)) < 0.3
    np.fill_diagonal(rel, True)
    split = Split("train", np.zeros((ID_SPACE, 1)), [str(k) for k in range(ID_SPACE)], np.arange(ID_SPACE))
    return PairRelevance(split, rel)


def false_negatives(ids: torch.Tensor, rows=slice(None)):
    from harness.components import FalseNegatives
    return FalseNegatives(ids[rows], ids[rows], relevance_lookup())


def moco_run(rows: slice | None, mask: bool = False):
    """Two MoCo steps (no optimizer) on the given rows; returns step 2's loss and the queues (with
    ``mask``, masking false negatives, also the queued ids)."""
    from harness_plugins.contrastive import losses as L, samplers as S
    *_, batches = data()
    model, loss = Linear2(), L.InfoNCE(0.1)
    sampler = S.MoCo(size=12, momentum=0.9, in_batch=True, mask_false_negatives=mask)
    sampler.setup(model, loss)
    values = []
    for step, batch in enumerate(batches):
        batch = {k: v[rows] for k, v in batch.items()} if rows is not None else batch
        ids = torch.arange(len(batches[0]["images"])) + step * 8
        extras = {"false_negatives": false_negatives(ids, rows or slice(None))} if mask else {}
        image_emb, text_emb = model(batch["images"], batch["texts"])
        values.append(sampler.compute_loss(loss, model, batch, image_emb, text_emb, extras).detach())
        sampler.after_step(model, batch, image_emb.detach(), text_emb.detach())
    out = (values[-1], sampler.image_queue.rows(), sampler.text_queue.rows())
    return out + (sampler.image_id_queue.rows(), sampler.text_id_queue.rows()) if mask else out


def _worker(rank: int, port: int) -> None:
    from harness import distributed as hd
    from harness_plugins.contrastive import losses as L, samplers as S

    x, y, pool, keys, per_anchor, _ = data()
    start = sum(ROWS[:rank])
    mine = slice(start, start + ROWS[rank])

    def with_negatives(loss):
        # a shared pool (used as given) plus row-aligned positives and per-anchor negatives
        # (gathered by the loss); `rows` picks the local slice of the row-aligned tensors
        def run(a, b, rows=slice(None)):
            neg = L.Negatives(text=pool, image=per_anchor[rows], text_positive=keys[rows], in_batch=True)
            return loss(a, b, negatives=neg)
        return run

    rerank = S.Rerank(top_n=2, size=0)
    cases = {name: make() for name, make in loss_cases().items()}
    calls = {name: (lambda loss: lambda a, b, rows=None: loss(a, b))(loss) for name, loss in cases.items()}
    calls["infonce+negatives"] = with_negatives(L.InfoNCE(0.1))
    calls["triplet+negatives"] = with_negatives(L.Triplet(max_violation=True))
    calls["rerank"] = lambda a, b, rows=None: rerank.compute_loss(L.NTLogistic(0.2), None, {}, a, b, {})

    # false-negative masking: ids gathered with the rows, so the mask is the global batch's
    ids = torch.arange(sum(ROWS))
    for name, make in loss_cases().items():
        calls[f"{name}+mask"] = (lambda loss: lambda a, b, rows=slice(None): loss(
            a, b, false_negatives=false_negatives(ids, rows)))(make())
    pool_ids = torch.arange(8, 14)  # the shared pool's texts, and per-anchor images, by id
    per_anchor_ids = torch.randint(0, ID_SPACE, (sum(ROWS), 3), generator=torch.Generator().manual_seed(1))

    def masked_negatives(a, b, rows=slice(None)):
        neg = L.Negatives(text=pool, image=per_anchor[rows], text_positive=keys[rows], in_batch=True,
                          text_ids=pool_ids, image_ids=per_anchor_ids[rows])
        return L.NTXent(0.1)(a, b, negatives=neg, false_negatives=false_negatives(ids, rows))
    calls["nt-xent+negatives+mask"] = masked_negatives
    masked_rerank = S.Rerank(top_n=3, size=0, mask_false_negatives=True)
    calls["rerank+mask"] = lambda a, b, rows=slice(None): masked_rerank.compute_loss(
        L.InfoNCE(0.1), None, {}, a, b, {"false_negatives": false_negatives(ids, rows)})

    # single-process references, before the process group exists
    assert not hd.is_distributed() and hd.all_gather(x) is x and hd.row_offset(3) == 0
    refs = {name: value_and_grads(call, x, y) for name, call in calls.items()}
    learnable = cases["infonce-learnable"]
    learnable.zero_grad()
    learnable(x, y).backward()
    scale_ref = learnable.logit_scale.grad.clone()
    learnable.zero_grad()
    moco_ref = moco_run(None)
    moco_masked_ref = moco_run(None, mask=True)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        assert hd.is_distributed() and hd.world_size() == WORLD and hd.rank() == rank
        assert hd.row_offset(ROWS[rank]) == start

        # the raw gather: rows in rank order, gradient summed over ranks then sliced
        local = x[mine].clone().requires_grad_()
        gathered, offset = hd.all_gather_with_offset(local)
        assert offset == start
        torch.testing.assert_close(gathered.detach(), x)
        weights = torch.arange(x.numel(), dtype=F64).view_as(x)
        (gathered * weights).sum().backward()
        torch.testing.assert_close(local.grad, WORLD * weights[mine])

        for name, call in calls.items():
            value, gx, gy = value_and_grads(lambda a, b: call(a, b, rows=mine), x[mine], y[mine])
            ref_value, ref_gx, ref_gy = refs[name]
            torch.testing.assert_close(value, ref_value, msg=f"{name}: value")
            torch.testing.assert_close(gx / WORLD, ref_gx[mine], msg=f"{name}: image gradient")
            torch.testing.assert_close(gy / WORLD, ref_gy[mine], msg=f"{name}: text gradient")

        # a parameter that is not upstream of the gather gets the plain global gradient on every rank
        learnable(x[mine], y[mine]).backward()
        torch.testing.assert_close(learnable.logit_scale.grad, scale_ref)

        # MoCo: the queues hold every rank's keys, so loss and queues equal the single-process run
        value, queue_img, queue_txt = moco_run(mine)
        torch.testing.assert_close(value, moco_ref[0])
        torch.testing.assert_close(queue_img, moco_ref[1])
        torch.testing.assert_close(queue_txt, moco_ref[2])
        # and with masking, the queued ids too
        for got, want in zip(moco_run(mine, mask=True), moco_masked_ref):
            torch.testing.assert_close(got, want)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_match_the_single_process_global_batch():
    # spawn raises (with the worker's traceback) if any assertion fails on either rank
    mp.spawn(_worker, args=(free_port(),), nprocs=WORLD, join=True)
