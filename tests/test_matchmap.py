"""Match-map grounding: ``harness.metrics.matchmap_scores`` against brute-force float64 loops, the
``matchmap`` loss (single process, 2-rank gloo DDP, a tiny end-to-end run), and
``retrieval_metrics_from_scores`` against ``retrieval_metrics`` and a brute-force ranking."""

from __future__ import annotations

import datetime
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from harness_plugins.grounding import matchmap as grounding
from harness_plugins.grounding.matchmap import MatchMap

import harness.metrics.retrieval as retrieval_module
from harness.components import TokenFeatures
from harness.metrics import (
    matchmap_scores,
    retrieval_metrics,
    retrieval_metrics_from_scores,
    tie_tolerance,
)

F64 = torch.float64
POOLINGS = ("misa", "sima", "sisa")


# --- independent references ------------------------------------------------------------------------------


def brute_scores(image, text, image_mask, text_mask, pooling):
    """One pair at a time in float64 numpy, over the real locations and tokens only (0 if none)."""
    image, text = image.detach().double().numpy(), text.detach().double().numpy()
    out = np.zeros((len(image), len(text)))
    for i in range(len(image)):
        for j in range(len(text)):
            m = image[i][image_mask[i].numpy()] @ text[j][text_mask[j].numpy()].T  # [L_i, T_j]
            if m.size:
                out[i, j] = {"misa": m.max(0).mean(), "sima": m.max(1).mean(), "sisa": m.mean()}[pooling]
    return torch.from_numpy(out)


def dense_misa(image, text, image_mask, text_mask):
    """The whole [B_i, B_t, L, T] map with autograd's own max (its gradient is the reference)."""
    m = torch.einsum("ild,jtd->ijlt", image, text).masked_fill(~image_mask[:, None, :, None], -math.inf)
    weights = text_mask.to(m.dtype) / text_mask.sum(1, keepdim=True)
    return (m.amax(2) * weights).sum(-1)


def random_tokens(seed=0, n_image=6, n_text=7, locations=5, tokens=4, dim=3):
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(n_image, locations, dim, generator=g), torch.randn(n_text, tokens, dim, generator=g)
    image_mask = torch.rand(n_image, locations, generator=g) > 0.3
    text_mask = torch.rand(n_text, tokens, generator=g) > 0.3
    image_mask[:, 0] = text_mask[:, 0] = True
    return image, text, image_mask, text_mask


# --- matchmap_scores -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
def test_scores_equal_a_brute_force_loop_with_both_masks(pooling):
    image, text, image_mask, text_mask = random_tokens()
    image_mask[2] = False  # no real location: scores 0, like a caption without real tokens
    text_mask[4] = False
    want = brute_scores(image, text, image_mask, text_mask, pooling)
    got = matchmap_scores(image, text, text_mask, image_mask, pooling=pooling)
    assert got.dtype == torch.float32 and got.shape == (6, 7)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert got[2].abs().sum() == 0 and got[:, 4].abs().sum() == 0
    got64 = matchmap_scores(image.double(), text.double(), text_mask, image_mask, pooling=pooling)
    torch.testing.assert_close(got64, want, rtol=1e-12, atol=1e-12)
    # no masks = everything real
    full = torch.ones_like(image_mask), torch.ones_like(text_mask)
    torch.testing.assert_close(matchmap_scores(image.double(), text.double(), pooling=pooling),
                               brute_scores(image, text, *full, pooling))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_scores_ignore_location_order_and_extra_masked_padding(pooling):
    image, text, image_mask, text_mask = (x.double() if x.is_floating_point() else x for x in random_tokens(1))
    base = matchmap_scores(image, text, text_mask, image_mask, pooling=pooling)
    perm_l, perm_t = torch.randperm(5), torch.randperm(4)
    permuted = matchmap_scores(image[:, perm_l], text[:, perm_t], text_mask[:, perm_t], image_mask[:, perm_l],
                               pooling=pooling)
    torch.testing.assert_close(permuted, base)
    # padding holding garbage (even NaN and huge values) changes nothing once masked out
    pad_image = torch.cat([image, torch.full((6, 3, 3), math.nan, dtype=F64)], 1)
    pad_text = torch.cat([text, torch.full((7, 2, 3), 1e30, dtype=F64)], 1)
    padded = matchmap_scores(pad_image, pad_text, torch.cat([text_mask, torch.zeros(7, 2, dtype=bool)], 1),
                             torch.cat([image_mask, torch.zeros(6, 3, dtype=bool)], 1), pooling=pooling)
    torch.testing.assert_close(padded, base)


def test_misa_gradient_reaches_only_each_tokens_arg_max_location():
    image, text, image_mask, text_mask = random_tokens(2)
    image, text = image.double().requires_grad_(), text.double().requires_grad_()
    weights = torch.randn(6, 7, dtype=F64)
    (matchmap_scores(image, text, text_mask, image_mask) * weights).sum().backward()
    ref_image, ref_text = image.detach().clone().requires_grad_(), text.detach().clone().requires_grad_()
    (dense_misa(ref_image, ref_text, image_mask, text_mask) * weights).sum().backward()
    torch.testing.assert_close(image.grad, ref_image.grad)
    torch.testing.assert_close(text.grad, ref_text.grad)
    # the locations with gradient are exactly the arg-maxes of real tokens over real locations
    m = torch.einsum("ild,jtd->ijlt", image.detach(), text.detach()).masked_fill(
        ~image_mask[:, None, :, None], -math.inf)
    winners = torch.zeros_like(image_mask)
    for i, j, t in zip(*torch.nonzero(text_mask.expand(6, 7, 4), as_tuple=True)):
        winners[i, m[i, j, :, t].argmax()] = True
    assert torch.equal(image.grad.abs().sum(-1) > 0, winners)
    assert not winners[~image_mask].any() and (text.grad[~text_mask] == 0).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_tiny_blocks_give_the_unblocked_scores_and_gradients(pooling):
    image, text, image_mask, text_mask = random_tokens(3, n_image=9, n_text=11)

    def run(block_bytes):
        a, b = image.double().requires_grad_(), text.double().requires_grad_()
        s = matchmap_scores(a, b, text_mask, image_mask, pooling=pooling, block_bytes=block_bytes)
        (s * torch.arange(s.numel(), dtype=F64).view_as(s)).sum().backward()
        return s.detach(), a.grad, b.grad

    whole = run(2**30)
    for block_bytes in (1, 8 * 5 * 4 * 3, 8 * 5 * 4 * 20):  # one pair, 3 pairs, 20 pairs per block
        for got, want in zip(run(block_bytes), whole):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    small = (image[:3, :3].double().requires_grad_(), text[:4, :2].double().requires_grad_())
    assert torch.autograd.gradcheck(  # 2 pairs per block
        lambda a, b: matchmap_scores(a, b, text_mask[:4, :2], image_mask[:3, :3], pooling=pooling,
                                     block_bytes=2 * 8 * 3 * 2), small)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_half_precision_and_autocast_compute_in_float32(pooling):
    image, text, image_mask, text_mask = random_tokens(4, n_image=20, n_text=30, locations=12, tokens=8, dim=64)
    want = brute_scores(image, text, image_mask, text_mask, pooling)
    for dtype in (torch.bfloat16, torch.float16):
        got = matchmap_scores(image.to(dtype), text.to(dtype), text_mask, image_mask, pooling=pooling)
        assert got.dtype == torch.float32
        assert (got.double() - want).norm() / want.norm() < 0.02  # only the inputs' rounding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = matchmap_scores(image, text, text_mask, image_mask, pooling=pooling)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast.double(), want, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_value_errors():
    image, text = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    bad = [dict(image_feats=torch.randn(2, 4)), dict(text_feats=torch.randn(2, 5, 6)),
           dict(pooling="mean"), dict(text_mask=torch.ones(2, 4, dtype=bool)),
           dict(image_mask=torch.ones(2, 3)), dict(block_bytes=0), dict(text_feats=torch.ones(2, 5, 4).long())]
    for change in bad:
        args = dict(image_feats=image, text_feats=text) | change
        with pytest.raises(ValueError):
            matchmap_scores(**args)


MEMORY_CHILD = """
import resource, sys, torch
from harness.metrics import matchmap_scores
torch.manual_seed(0)
B, L, T, D = 120, 196, 32, 16  # the full match map would be B*B*L*T*4 bytes = 361 MB
image = torch.randn(B, L, D, requires_grad=True)
text = torch.randn(B, T, D, requires_grad=True)
matchmap_scores(image[:2], text[:2]).sum().backward()  # kernels and thread pools loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
matchmap_scores(image, text).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_forward_and_backward_stay_within_256_mb_where_the_map_needs_361():
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) < 256


# --- the matchmap loss ---------------------------------------------------------------------------------


def reference_loss(image, text, image_mask, text_mask, pooling, temperature, normalize=False):
    if normalize:
        image, text = torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1)
    logits = brute_scores(image, text, image_mask, text_mask, pooling) / temperature
    n = len(logits)
    i2t = -np.mean([logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(n)])
    t2i = -np.mean([logits[j, j] - torch.logsumexp(logits[:, j], 0) for j in range(n)])
    return (i2t + t2i) / 2


@pytest.mark.parametrize("pooling,normalize", [("misa", False), ("sima", True), ("sisa", False)])
def test_loss_is_symmetric_cross_entropy_of_the_scores(pooling, normalize):
    image, text, image_mask, text_mask = random_tokens(5, n_image=6, n_text=6)
    loss = MatchMap(temperature=0.2, pooling=pooling, normalize=normalize)
    got = loss(image, text, text_mask=text_mask, image_mask=image_mask)
    want = reference_loss(image, text, image_mask, text_mask, pooling, 0.2, normalize)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(float(want), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(image.bfloat16(), text.bfloat16(), text_mask, image_mask).dtype == torch.float32


def test_equal_scores_give_log_b():
    same = torch.randn(1, 1, 5).expand(8, 3, 5)
    assert MatchMap()(same, same[:, :2]).item() == pytest.approx(math.log(8), rel=1e-6)


def test_pair_scores_take_token_features_or_tensors():
    image, text, image_mask, text_mask = random_tokens(6)
    loss = MatchMap(pooling="sima", normalize=True)
    got = loss.pair_scores(TokenFeatures(image, image_mask), TokenFeatures(text, text_mask))
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(got.double(), brute_scores(unit(image, dim=-1), unit(text, dim=-1),
                                                         image_mask, text_mask, "sima"), rtol=1e-5, atol=1e-6)
    full = torch.ones_like(image_mask), torch.ones_like(text_mask)
    torch.testing.assert_close(MatchMap().pair_scores(image, text).double(),
                               brute_scores(image, text, *full, "misa"), rtol=1e-5, atol=1e-6)


def test_pooled_inputs_and_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="set the encoders' pool to none"):
        MatchMap()(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="set the encoders' pool to none"):
        MatchMap().pair_scores(torch.randn(4, 8), TokenFeatures(torch.randn(4, 2, 8)))
    with pytest.raises(ValueError, match="matching pairs"):
        MatchMap()(torch.randn(4, 2, 8), torch.randn(3, 2, 8))
    for bad in (dict(temperature=0), dict(temperature=-1.0), dict(pooling="max")):
        with pytest.raises(ValueError):
            MatchMap(**bad)


def test_registered_by_its_hookimpl():
    found = {}
    grounding.register_losses(register=lambda name, factory: found.setdefault(name, factory))
    assert found == {"matchmap": MatchMap} and MatchMap.__doc__.strip().splitlines()[0]


ROWS = [5, 3]  # rank 0 holds pairs 0..4, rank 1 pairs 5..7
LENGTHS = {"image": [2, 4], "text": [5, 3]}  # each rank's longest real location / token count


def ddp_data():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(8, 4, 3, generator=g, dtype=F64), torch.randn(8, 5, 3, generator=g, dtype=F64)
    masks = {}
    for side, x in (("image", image), ("text", text)):
        lengths = torch.cat([torch.randint(1, n + 1, (rows,), generator=g) for n, rows in zip(LENGTHS[side], ROWS)])
        lengths[[0, 5]] = torch.tensor(LENGTHS[side])  # each rank's longest reaches its length
        masks[side] = torch.arange(x.shape[1]) < lengths[:, None]
    return image, text, masks["image"], masks["text"]


def _ddp_worker(rank: int, port: int) -> None:
    from harness import distributed as hd
    image, text, image_mask, text_mask = ddp_data()
    mine = slice(sum(ROWS[:rank]), sum(ROWS[:rank + 1]))
    n_loc, n_tok = LENGTHS["image"][rank], LENGTHS["text"][rank]
    losses = [MatchMap(0.1), MatchMap(0.2, "sima", normalize=True), MatchMap(0.5, "sisa")]

    def value_and_grads(loss, a, b, a_mask, b_mask):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        value = loss(a, b, text_mask=b_mask, image_mask=a_mask)
        return (value.detach(), *torch.autograd.grad(value, (a, b)))

    refs = [value_and_grads(loss, image, text, image_mask, text_mask) for loss in losses]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        local = (image[mine, :n_loc], text[mine, :n_tok], image_mask[mine, :n_loc], text_mask[mine, :n_tok])
        gathered, gathered_mask = hd.all_gather_tokens(local[0], local[2])
        assert torch.equal(gathered_mask, image_mask)
        torch.testing.assert_close(gathered[image_mask], image[image_mask])
        for loss, (ref_value, ref_gi, ref_gt) in zip(losses, refs):
            value, gi, gt = value_and_grads(loss, *local)
            torch.testing.assert_close(value, ref_value)
            torch.testing.assert_close(gi / 2, ref_gi[mine, :n_loc])  # DDP averages: see harness.distributed
            torch.testing.assert_close(gt / 2, ref_gt[mine, :n_tok])
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_match_the_single_process_global_batch():
    from test_distributed import free_port
    mp.spawn(_ddp_worker, args=(free_port(),), nprocs=2, join=True)


def test_a_matchmap_method_trains_and_is_scored_by_its_match_map(tmp_path, toy_config):
    from harness.runner import run
    toy_config["methods"] = [{"name": "matchmap", "loss": {"name": "matchmap"},
                              "encoders": {"image": {"name": "quadrant-tokens"},
                                           "text": {"name": "word-tokens"}}}]
    toy_config["defaults"]["train"].update(epochs=6, lr=0.05)
    result = run(toy_config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    assert {"retrieval/t2i_R@1", "retrieval/i2t_R@1", "retrieval/rsum"} <= set(result.metrics)
    assert result.metrics["retrieval/t2i_R@5"] > 1.5 * result.chance["retrieval/t2i_R@5"]


# --- retrieval_metrics_from_scores ---------------------------------------------------------------------


def reference_ranks_from_scores(scores, text_to_image, tol):
    """Pair-by-pair float64 loops: rank = 1 + #incorrect items scoring >= the correct one minus tol."""
    s, idx = np.asarray(scores, dtype=np.float64), np.asarray(text_to_image)
    t2i = [1 + sum(s[i, j] >= s[idx[j], j] - tol for i in range(len(s)) if i != idx[j]) for j in range(len(idx))]
    i2t = []
    for i in range(len(s)):
        own = [j for j in range(len(idx)) if idx[j] == i]
        if own:
            best = max(s[i, j] for j in own)
            i2t.append(1 + sum(s[i, j] >= best - tol for j in range(len(idx)) if idx[j] != i))
    return np.array(i2t), np.array(t2i)


def reference_metrics_from_ranks(i2t, t2i, ks=(1, 5, 10)):
    out = {f"{n}_R@{k}": 100.0 * np.mean(r <= k) for n, r in (("i2t", i2t), ("t2i", t2i)) for k in ks}
    for n, r in (("i2t", i2t), ("t2i", t2i)):
        out[f"{n}_medr"], out[f"{n}_meanr"] = float(np.median(r)), float(np.mean(r))
    out["rsum"] = sum(out[f"{n}_R@{k}"] for n in ("i2t", "t2i") for k in ks)
    return out


def captions(seed, n_images=12, without=(2, 7)):
    """0 to 3 captions per image (the images in ``without`` have none), in shuffled order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, n_images)
    counts[list(without)] = 0
    text_to_image = np.repeat(np.arange(n_images), counts)
    rng.shuffle(text_to_image)
    return rng, text_to_image


@pytest.mark.parametrize("seed", range(4))
def test_scores_equal_retrieval_metrics_on_the_cosine_matrix(seed):
    rng, t2i = captions(seed, n_images=40)
    images = rng.standard_normal((40, 16)).astype(np.float32)
    images[5] = images[4]  # duplicates: ties between a correct and an incorrect image
    texts = (images[t2i] + rng.standard_normal((len(t2i), 16))).astype(np.float32)
    if seed == 3:  # a collapsed model: every score tied
        images[:], texts[:] = images[0], images[0]
    unit = torch.nn.functional.normalize
    cosine = unit(torch.from_numpy(images), dim=1) @ unit(torch.from_numpy(texts), dim=1).T
    want = retrieval_metrics(images, texts, t2i, ks=(1, 3, 5))
    assert retrieval_metrics_from_scores(cosine, t2i, ks=(1, 3, 5), tol=tie_tolerance(torch.float32, 16)) == want


@pytest.mark.parametrize("seed,tol,chunk_bytes", [(0, 0.0, None), (1, 0.0, 40), (2, 0.25, None), (3, 0.25, 13)])
def test_ranks_equal_a_brute_force_count(seed, tol, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:  # a few rows per block (the buffer holds chunk_bytes bools)
        monkeypatch.setattr(retrieval_module, "DEFAULT_CHUNK_BYTES", chunk_bytes)
    rng, t2i = captions(seed)
    scores = rng.integers(0, 4, (12, len(t2i))).astype(np.float64)  # exact ties everywhere
    scores[:, ::2] += 0.2 * rng.random((12, len(t2i[::2])))  # and near-ties within 0.25
    want = reference_metrics_from_ranks(*reference_ranks_from_scores(scores, t2i, tol))
    got = retrieval_metrics_from_scores(scores, t2i, tol=tol)
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=1e-9) for k in want)
    assert got == retrieval_metrics_from_scores(torch.from_numpy(scores).float(), t2i, tol=tol)


def test_constant_scores_get_the_worst_ranks():
    _, t2i = captions(5)
    got = retrieval_metrics_from_scores(np.full((12, len(t2i)), 0.3), t2i, ks=(1,))
    counts = np.bincount(t2i, minlength=12)
    assert got["t2i_R@1"] == 0 and got["t2i_medr"] == got["t2i_meanr"] == 12  # every other image ties
    assert got["i2t_meanr"] == pytest.approx(np.mean(len(t2i) - counts[counts > 0] + 1))


def test_integer_scores_are_compared_exactly():
    scores = torch.tensor([[2**24 + 1, 0], [2**24, 1]])  # equal in float32
    assert retrieval_metrics_from_scores(scores, [0, 1], ks=(1,))["t2i_R@1"] == 100.0


@pytest.mark.parametrize("change", [
    dict(scores=np.zeros(3)), dict(scores=np.zeros((0, 3))), dict(scores=np.full((2, 3), np.nan)),
    dict(scores=np.ones((2, 3), dtype=complex)), dict(text_to_image=[0, 1]),
    dict(text_to_image=[0.0, 1.0, 1.0]), dict(text_to_image=[0, 2, 1]), dict(text_to_image=[-1, 0, 1]),
    dict(ks=()), dict(ks=(0,)), dict(ks=(1.5,)), dict(ks=(True,)), dict(tol=-1e-3), dict(tol=float("nan")),
])
def test_bad_score_inputs_raise_value_errors(change):
    args = dict(scores=np.zeros((2, 3)), text_to_image=[0, 1, 1]) | change
    with pytest.raises(ValueError):
        retrieval_metrics_from_scores(**args)
