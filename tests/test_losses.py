"""Every contrastive/ranking loss against an independent computation, in value and gradient.

References: pytorch-metric-learning where its conventions can be aligned, otherwise the formula written
again here with explicit loops over pairs (small B), so a vectorization mistake cannot hide.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses as pml_losses, miners, reducers, regularizers

from harness_plugins.contrastive import losses as L
from harness_plugins.contrastive.losses import Negatives

B, D = 7, 5
F64 = torch.float64


def pair(seed: int = 0, b: int = B, d: int = D, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=F64)
    y = x + 0.8 * torch.randn(b, d, generator=g, dtype=F64)  # correlated, like a half-trained model
    return x.to(dtype), y.to(dtype)


def value_and_grads(fn, x, y):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    value = fn(x, y)
    gx, gy = torch.autograd.grad(value, (x, y))
    return value.detach(), gx, gy


def assert_same(ours, ref, x, y, rtol=1e-9, atol=1e-11, uses_text=True):
    v, gx, gy = value_and_grads(ours, x, y)
    rv, rgx, rgy = value_and_grads(ref, x, y)
    torch.testing.assert_close(v, rv.to(v.dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(gx, rgx, rtol=rtol, atol=atol)
    torch.testing.assert_close(gy, rgy, rtol=rtol, atol=atol)
    assert gx.abs().sum() > 0  # the check would be empty otherwise
    assert gy.abs().sum() > 0 or not uses_text


def labels_of(n: int) -> torch.Tensor:
    return torch.arange(n)


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


# --- references -----------------------------------------------------------------------------------


def pml_ntxent_both_ways(tau):
    loss = pml_losses.NTXentLoss(temperature=tau)

    def ref(x, y):
        lab, ref_lab = labels_of(len(x)), labels_of(len(x))  # PML drops the diagonal if they are one object
        return 0.5 * (loss(x, lab, ref_emb=y, ref_labels=ref_lab)
                      + loss(y, lab, ref_emb=x, ref_labels=ref_lab))
    return ref


def pml_simclr(tau):
    loss = pml_losses.NTXentLoss(temperature=tau)

    def ref(x, y):
        lab = labels_of(len(x))
        return loss(torch.cat([x, y]), torch.cat([lab, lab]))
    return ref


def pml_npair(l2_reg=0.0, symmetric=False):
    kwargs = dict(distance=distances.DotProductSimilarity(normalize_embeddings=False))
    if l2_reg:
        # PML averages ‖e‖² over the 2B concatenated rows, i.e. half of mean_i(‖f_i‖² + ‖g_i‖²).
        kwargs.update(embedding_regularizer=regularizers.LpRegularizer(power=2),
                      embedding_reg_weight=2 * l2_reg)
    loss = pml_losses.NPairsLoss(**kwargs)

    def ref(x, y):
        lab = labels_of(len(x))
        # PML keeps the first row of each label as the anchor: the first block are the anchors.
        one = loss(torch.cat([x, y]), torch.cat([lab, lab]))
        if not symmetric:
            return one
        return 0.5 * (one + loss(torch.cat([y, x]), torch.cat([lab, lab])))
    return ref


def pml_triplet(margin, max_violation, reduction):
    cos = distances.CosineSimilarity()
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=cos, reducer=reducers.SumReducer())
    miner = miners.BatchHardMiner(distance=cos)

    def one_side(anchors, refs):
        lab, ref_lab = labels_of(len(anchors)), labels_of(len(anchors))  # distinct objects, see above
        indices = miner(anchors, lab, refs, ref_lab) if max_violation else None
        return loss(anchors, lab, indices, ref_emb=refs, ref_labels=ref_lab)

    def ref(x, y):
        total = one_side(x, y) + one_side(y, x)
        return total / len(x) if reduction == "mean" else total
    return ref


def loop_nt_logistic(tau):
    def ref(x, y):
        xs, ys = unit(x), unit(y)
        n = len(x)
        pos = [-torch.log(torch.sigmoid(xs[i] @ ys[i] / tau)) for i in range(n)]
        neg = [-torch.log(torch.sigmoid(-(xs[i] @ ys[j]) / tau))
               for i in range(n) for j in range(n) if i != j]
        return sum(pos) / n + (sum(neg) / len(neg) if neg else 0)
    return ref


def loop_contrastive(margin):
    def ref(x, y):
        xs, ys = unit(x), unit(y)
        n = len(x)
        pos = [torch.linalg.vector_norm(xs[i] - ys[i]) ** 2 for i in range(n)]
        neg = [torch.clamp(margin - torch.linalg.vector_norm(xs[i] - ys[j]), min=0) ** 2
               for i in range(n) for j in range(n) if i != j]
        return sum(pos) / n + (sum(neg) / len(neg) if neg else 0)
    return ref


def loop_devise(margin, label_emb, labels):
    def ref(v, _):
        t = unit(label_emb)
        total = 0
        for i in range(len(v)):
            yi = int(labels[i])
            for j in range(len(t)):
                if j != yi:
                    total = total + torch.clamp(margin - v[i] @ t[yi] + v[i] @ t[j], min=0)
        return total / len(v)
    return ref


# --- value and gradient against the references ----------------------------------------------------


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_infonce_is_pml_ntxent_called_both_ways(tau):
    x, y = pair(1)
    assert_same(L.InfoNCE(temperature=tau), pml_ntxent_both_ways(tau), x, y)


def test_infonce_learnable_temperature_value_and_gradient():
    x, y = pair(2)
    loss = L.InfoNCE(temperature=0.1, learnable_temperature=True).double()
    assert isinstance(loss.logit_scale, torch.nn.Parameter)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(10.0))  # the float32 initial value, exact in float64
    assert_same(loss, pml_ntxent_both_ways(0.1), x, y)
    # ∂L/∂log(1/τ) against a central difference of the fixed-temperature loss.
    loss(x, y).backward()
    s, h = math.log(10.0), 1e-5
    numeric = (L.InfoNCE(math.exp(-(s + h)))(x, y) - L.InfoNCE(math.exp(-(s - h)))(x, y)) / (2 * h)
    torch.testing.assert_close(loss.logit_scale.grad, numeric, rtol=1e-6, atol=1e-8)


def test_learnable_temperature_is_clipped_at_one_hundredth():
    loss = L.InfoNCE(temperature=0.05, learnable_temperature=True)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)  # 1/τ = e^10, as an optimizer overshoot might leave it
    x, y = pair(3, dtype=torch.float32)
    value = loss(x, y)
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))
    assert loss.temperature == pytest.approx(0.01)
    torch.testing.assert_close(value, L.InfoNCE(0.01)(x, y))
    value.backward()
    assert loss.logit_scale.grad is not None and torch.isfinite(loss.logit_scale.grad)
    with pytest.raises(ValueError, match="learnable"):
        L.InfoNCE(temperature=0.005, learnable_temperature=True)


def test_nt_xent_is_pml_ntxent_on_the_concatenated_views():
    x, y = pair(4)
    assert_same(L.NTXent(temperature=0.1), pml_simclr(0.1), x, y)
    assert L.NTXent().temperature == 0.1


def test_nt_logistic_matches_the_pairwise_formula():
    x, y = pair(5)
    assert_same(L.NTLogistic(temperature=0.2), loop_nt_logistic(0.2), x, y)


@pytest.mark.parametrize("max_violation", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_triplet_is_pml_triplet_margin_with_cosine_similarity(max_violation, reduction):
    x, y = pair(6)
    ours = L.Triplet(margin=0.2, max_violation=max_violation, reduction=reduction)
    assert_same(ours, pml_triplet(0.2, max_violation, reduction), x, y)


@pytest.mark.parametrize("l2_reg", [0.0, 0.3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_npair_is_pml_npairs_on_raw_dot_products(l2_reg, symmetric):
    x, y = pair(7)
    assert_same(L.NPair(l2_reg=l2_reg, symmetric=symmetric), pml_npair(l2_reg, symmetric), x, y)


@pytest.mark.parametrize("margin", [1.0, 1.5])
def test_contrastive_matches_the_pairwise_formula(margin):
    x, y = pair(8)
    assert_same(L.Contrastive(margin=margin), loop_contrastive(margin), x, y)


def test_devise_matches_the_hinge_rank_formula():
    x, _ = pair(9)
    g = torch.Generator().manual_seed(9)
    label_emb = torch.randn(4, D, generator=g, dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    loss = L.DeViSE(margin=0.5)
    ref = loop_devise(0.5, label_emb, labels)
    # text_emb is ignored: the gradient flows to the images and to the label embeddings
    assert_same(lambda v, t: loss(v, t, label_emb=label_emb, labels=labels) + 0 * t.sum(),
                lambda v, t: ref(v, t) + 0 * t.sum(), x, torch.ones_like(x), uses_text=False)
    ours_grad = torch.autograd.grad(loss(x, None, label_emb=label_emb, labels=labels), label_emb)[0]
    ref_grad = torch.autograd.grad(ref(x, None), label_emb)[0]
    torch.testing.assert_close(ours_grad, ref_grad)


@pytest.mark.parametrize("make", [
    lambda: L.InfoNCE(0.3), lambda: L.NTXent(0.3), lambda: L.NTLogistic(0.3), lambda: L.Triplet(),
    lambda: L.NPair(l2_reg=0.1, symmetric=True), lambda: L.Contrastive(),
])
def test_gradients_pass_gradcheck(make):
    x, y = pair(10, b=4, d=3)
    assert torch.autograd.gradcheck(make(), (x.requires_grad_(), y.requires_grad_()))


# --- sampler negatives ------------------------------------------------------------------------------


IN_BATCH_LOSSES = [
    lambda: L.InfoNCE(0.1), lambda: L.NTXent(0.1), lambda: L.NTLogistic(0.1),
    lambda: L.Triplet(max_violation=True), lambda: L.Triplet(reduction="sum"),
    lambda: L.NPair(l2_reg=0.1), lambda: L.NPair(symmetric=True), lambda: L.Contrastive(),
]


@pytest.mark.parametrize("make", IN_BATCH_LOSSES)
def test_in_batch_negatives_through_the_sampler_path_equal_the_plain_loss(make):
    x, y = pair(11)
    loss = make()
    assert_same(lambda a, b: loss(a, b, negatives=Negatives(in_batch=True)), loss, x, y)


def test_infonce_with_a_queue_is_mocos_logits_both_ways():
    g = torch.Generator().manual_seed(12)
    q_img, q_txt = pair(12)
    k_img, k_txt = (torch.randn(B, D, generator=g, dtype=F64) for _ in range(2))
    queue_img, queue_txt = (torch.randn(11, D, generator=g, dtype=F64) for _ in range(2))
    tau = 0.07

    def moco_direction(q, k, queue):
        total = 0
        for i in range(len(q)):
            logits = [unit(q[i]) @ unit(k[i]) / tau] + [unit(q[i]) @ unit(n) / tau for n in queue]
            total = total - torch.log_softmax(torch.stack(logits), 0)[0]
        return total / len(q)

    negatives = Negatives(text=queue_txt, image=queue_img, text_positive=k_txt, image_positive=k_img)
    def ref(a, b):
        return 0.5 * (moco_direction(a, k_txt, queue_txt) + moco_direction(b, k_img, queue_img))

    assert_same(lambda a, b: L.InfoNCE(tau)(a, b, negatives=negatives), ref, q_img, q_txt)


def test_per_anchor_negatives_in_triplet_and_nt_logistic():
    x, y = pair(13)
    g = torch.Generator().manual_seed(13)
    neg_txt, neg_img = (torch.randn(B, 3, D, generator=g, dtype=F64) for _ in range(2))
    negatives = Negatives(text=neg_txt, image=neg_img)
    m, tau = 0.3, 0.2

    def triplet_ref(a, b):
        total = 0
        for i in range(B):
            total = total + max(torch.clamp(m + unit(a[i]) @ unit(n) - unit(a[i]) @ unit(b[i]), min=0)
                                for n in neg_txt[i])
            total = total + max(torch.clamp(m + unit(b[i]) @ unit(n) - unit(b[i]) @ unit(a[i]), min=0)
                                for n in neg_img[i])
        return total / B

    def logistic_ref(a, b):
        def side(anchor, pos, negs):
            p = sum(-F.logsigmoid(unit(anchor[i]) @ unit(pos[i]) / tau) for i in range(B)) / B
            n = sum(-F.logsigmoid(-(unit(anchor[i]) @ unit(k)) / tau) for i in range(B) for k in negs[i])
            return p + n / (B * negs.shape[1])
        return 0.5 * (side(a, b, neg_txt) + side(b, a, neg_img))

    assert_same(lambda a, b: L.Triplet(m, max_violation=True)(a, b, negatives=negatives),
                triplet_ref, x, y)
    assert_same(lambda a, b: L.NTLogistic(tau)(a, b, negatives=negatives), logistic_ref, x, y)


def test_nt_xent_adds_sampler_negatives_to_its_denominator():
    x, y = pair(14)
    g = torch.Generator().manual_seed(14)
    pool = torch.randn(4, D, generator=g, dtype=F64)
    tau = 0.1

    def ref(a, b):
        z = unit(torch.cat([a, b]))
        extra = unit(pool)
        total = 0
        for r in range(2 * B):
            p = (r + B) % (2 * B)
            others = [z[r] @ z[c] / tau for c in range(2 * B) if c != r] + [z[r] @ e / tau for e in extra]
            total = total - (z[r] @ z[p] / tau - torch.logsumexp(torch.stack(others), 0))
        return total / (2 * B)

    negatives = Negatives(text=pool, image=pool, in_batch=True)
    assert_same(lambda a, b: L.NTXent(tau)(a, b, negatives=negatives), ref, x, y)


def test_no_negatives_at_all_is_zero_not_nan():
    x, y = pair(15)
    empty = torch.zeros(B, 0, D, dtype=F64)  # e.g. rerank on a batch of one with an empty memory
    for negatives in (Negatives(), Negatives(text=empty, image=empty)):
        for make in IN_BATCH_LOSSES:
            loss = make()
            value, gx, gy = value_and_grads(lambda a, b: loss(a, b, negatives=negatives), x, y)
            assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
            if isinstance(loss, (L.InfoNCE, L.NTXent, L.Triplet)):
                assert value == 0


# --- numerics -----------------------------------------------------------------------------------------


NUMERIC_LOSSES = [
    lambda: L.InfoNCE(0.01), lambda: L.NTXent(0.01), lambda: L.NTLogistic(0.01),
    lambda: L.Triplet(), lambda: L.Triplet(max_violation=True), lambda: L.NPair(symmetric=True),
    lambda: L.Contrastive(),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", NUMERIC_LOSSES)
def test_half_precision_inputs_at_tau_001_stay_close_to_float64(make, dtype):
    g = torch.Generator().manual_seed(16)
    x = torch.randn(64, 32, generator=g, dtype=F64)
    y = x + 2 * torch.randn(64, 32, generator=g, dtype=F64)  # weakly aligned: the loss is far from 0
    x, y = x / 3, y / 6  # npair's raw dot products stay in a moderate range
    loss = make()
    ref, rgx, rgy = value_and_grads(loss, x, y)
    assert ref > 0.1
    low, gx, gy = value_and_grads(loss, x.to(dtype), y.to(dtype))
    assert low.dtype == torch.float32  # computed in float32 whatever the input precision
    assert torch.isfinite(low) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    # measured: values within 0.06 %, gradients within 1.2 % (bf16), far inside "a few percent"
    assert abs(low.double() - ref) <= 0.01 * ref
    for g, rg in ((gx, rgx), (gy, rgy)):
        assert (g.double() - rg).norm() <= 0.03 * rg.norm()


def test_autocast_does_not_lower_the_precision_inside_the_loss():
    x, y = pair(17, b=32, d=16, dtype=torch.float32)
    loss = L.InfoNCE(0.01)
    plain = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(x, y)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain)


ALL_LOSSES = IN_BATCH_LOSSES + [lambda: L.InfoNCE(0.01, learnable_temperature=True)]


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_zero_vectors_give_finite_values_and_gradients(make):
    x, y = pair(18)
    x[0] = 0
    y[2] = 0
    loss = make()
    value, gx, gy = value_and_grads(loss, x, y)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    everything_zero = value_and_grads(loss, torch.zeros(3, D), torch.zeros(3, D))
    assert all(torch.isfinite(t).all() for t in everything_zero)


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_a_batch_of_one_has_no_negatives_and_no_nan(make):
    x, y = pair(19, b=1)
    loss = make()
    value, gx, gy = value_and_grads(loss, x, y)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    if isinstance(loss, (L.InfoNCE, L.NTXent, L.Triplet, L.NPair)) and not getattr(loss, "l2_reg", 0):
        assert value == 0  # no negatives: every ranking term is empty


def test_devise_numerics():
    label_emb = torch.zeros(3, D)  # a zero label embedding normalizes to zero, not NaN
    for v, labels in ((torch.zeros(2, D), torch.tensor([0, 2])), (torch.randn(1, D), torch.tensor([1]))):
        v = v.to(torch.bfloat16).requires_grad_()
        value = L.DeViSE()(v, None, label_emb=label_emb, labels=labels)
        value.backward()
        assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(v.grad).all()
    assert L.DeViSE()(torch.zeros(0, D), None, label_emb=torch.randn(3, D),
                      labels=torch.zeros(0, dtype=torch.long)) == 0


# --- construction and registration ------------------------------------------------------------------


def test_every_loss_is_registered_by_the_hookimpl():
    found = {}
    L.register_losses(register=lambda name, factory: found.setdefault(name, factory))
    assert set(found) == {"infonce", "nt-xent", "nt-logistic", "triplet", "npair", "contrastive",
                          "devise"}
    for name, factory in found.items():
        module = factory()
        assert isinstance(module, torch.nn.Module)
        assert factory.__doc__.strip().splitlines()[0]  # `harness list` prints the first line


def test_forward_signatures_name_their_extras():
    import inspect
    assert list(inspect.signature(L.DeViSE().forward).parameters) == [
        "image_emb", "text_emb", "label_emb", "labels"]
    for make in IN_BATCH_LOSSES:
        assert "negatives" in inspect.signature(make().forward).parameters


@pytest.mark.parametrize("bad", [
    lambda: L.InfoNCE(temperature=0), lambda: L.NTXent(temperature=-1.0),
    lambda: L.NTLogistic(temperature=0.0), lambda: L.Triplet(reduction="max"),
])
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValueError):
        bad()
