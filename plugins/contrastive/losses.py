"""Contrastive and ranking losses: one small class per loss, formula in the docstring.

Every loss is called ``loss(image_emb, text_emb, **extras)`` on ``[B, D]`` tensors whose row i is a
matching pair and returns a 0-dim tensor. S = Î T̂ᵀ is the cosine-similarity matrix (rows images,
columns texts), τ a temperature; a mean over an empty set of pairs counts as 0.

Precision: scores, log-sum-exp and log-sigmoid run in float32 (float64 stays float64) whatever the
input dtype, with autocast switched off inside the loss, so fp16/bf16 embeddings at τ = 0.01 neither
overflow nor lose the logits' resolution. A zero vector normalizes to zero (similarity 0), not NaN.

Distributed: every loss except ``devise`` first gathers both sides across ranks with
:func:`harness.distributed.all_gather`, so its value is the loss of the global batch on every rank and
DDP's gradient averaging is exact (see that module for the scaling convention).

Sampler negatives: every loss except ``devise`` accepts ``negatives=Negatives(...)``, passed by a
sampler (``moco``, ``rerank``), never by the runner. Without it the negatives of an anchor are the other
rows of the batch. With it, each direction (image anchors → texts, text anchors → images) scores its
anchor against a positive (the pair, or a momentum key) and a set of negatives (the sampler's, plus the
batch's other positives when ``in_batch``); each loss below states what it does with those scores.

False negatives: every loss except ``devise`` takes ``mask_false_negatives`` (default false). When it is
set (on the loss or on the sampler), the runner passes ``false_negatives=FalseNegatives(...)``
(:class:`harness.components.FalseNegatives`: the rows' split indices and the dataset's relevance) and the
loss drops from each anchor's negatives every item the dataset marks as relevant to it — in-batch
rows, queued keys and re-ranked candidates alike (samplers tag their negatives with ids). A dropped
negative is simply absent from the formula (masked before the log-sum-exp, the hinge or the mean), so
the gradient is that of the loss without it; under DDP the ids are gathered with the embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness import hookimpl
from harness.components import FalseNegatives

# the scores every loss shares (its own module); Negatives and check_flag are imported from here too
from .scores import (MAX_LOGIT_SCALE, Negatives, Scores, _check_masking, _check_temperature, _fp32,
                     _full_precision, _gather, _masked_logsumexp, _masked_mean, _scores, _unit,
                     _with_first_column, check_flag, cosine_similarity_matrix)

__all__ = ["MAX_LOGIT_SCALE", "Contrastive", "DeViSE", "InfoNCE", "NPair", "NTLogistic", "NTXent", "Negatives",
           "Triplet", "check_flag", "cosine_similarity_matrix"]


class InfoNCE(nn.Module):
    """CLIP-style symmetric InfoNCE over in-batch cosine similarities.

    L = ½ [CE(S/τ, diag) + CE(Sᵀ/τ, diag)], each cross-entropy a mean over the B rows.
    With ``learnable_temperature`` τ is trained as ``logit_scale = log(1/τ)`` (an ``nn.Parameter``,
    clipped so 1/τ ≤ 100 as in CLIP). With sampler negatives each anchor's row is
    [s₊, s₁…s_K]/τ with target 0 (MoCo's logits), averaged over both directions.
    """

    gathers_across_ranks = True  # the global batch's loss on every rank (module docstring)

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = False,
                 mask_false_negatives: bool = False):
        super().__init__()
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)
        temperature = _check_temperature(temperature)
        if learnable_temperature:
            if 1.0 / temperature > MAX_LOGIT_SCALE:
                raise ValueError(f"a learnable temperature starts at ≥ {1 / MAX_LOGIT_SCALE}, "
                                 f"got {temperature}")
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.logit_scale = None
            self._temperature = temperature

    @property
    def temperature(self) -> float:
        if self.logit_scale is None:
            return self._temperature
        return math.exp(-min(self.logit_scale.item(), math.log(MAX_LOGIT_SCALE)))

    def scale(self) -> torch.Tensor | float:
        """1/τ, differentiable when the temperature is learned."""
        if self.logit_scale is None:
            return 1.0 / self._temperature
        # Clip the parameter itself (CLIP clips after each step): a value clamped only in the
        # forward pass would get zero gradient above the bound and could never come back down.
        with torch.no_grad():
            self.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
        return self.logit_scale.exp()

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                negatives: Negatives | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        _check_masking(self, false_negatives)
        image, text, negatives, fn = _gather(image_emb, text_emb, negatives, false_negatives)
        scale = self.scale()
        if negatives is None and fn is None:  # the hot path: one matmul, two fused cross-entropies
            logits = (_unit(image) @ _unit(text).T) * scale
            target = torch.arange(logits.shape[0], device=logits.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        negatives = None if negatives is None else negatives.map(_unit)
        directions = _scores(_unit(image), _unit(text), negatives, false_negatives=fn)
        return sum(_infonce_direction(d, scale) for d in directions) / 2


def _infonce_direction(d: Scores, scale) -> torch.Tensor:
    """mean_b [logsumexp(s₊, s_negatives)·scale − s₊·scale]: cross-entropy with the positive first."""
    logits = torch.cat([d.pos[:, None], d.neg], 1) * scale
    valid = _with_first_column(d.valid)
    return _masked_mean(_masked_logsumexp(logits, valid) - logits[:, 0], None)


class NTXent(nn.Module):
    """SimCLR's NT-Xent over z = concat(Î, T̂), 2B rows.

    L = mean_r −log( exp(z_r·z_p(r)/τ) / Σ_{c≠r} exp(z_r·z_c/τ) ), p(r) the pair of row r: each row's
    denominator holds every other of the 2B−1 rows, images and texts alike. With sampler negatives,
    they join each anchor's denominator (same-modality rows only come from the batch, when ``in_batch``).
    """

    gathers_across_ranks = True  # the global batch's loss on every rank (module docstring)

    def __init__(self, temperature: float = 0.1, mask_false_negatives: bool = False):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                negatives: Negatives | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        _check_masking(self, false_negatives)
        image, text, negatives, fn = _gather(image_emb, text_emb, negatives, false_negatives)
        negatives = None if negatives is None else negatives.map(_unit)
        # The 2B rows split into B image rows and B text rows: the mean over 2B is the mean of both.
        directions = _scores(_unit(image), _unit(text), negatives, same_modality=True,
                             false_negatives=fn)
        return sum(_infonce_direction(d, 1.0 / self.temperature) for d in directions) / 2


class NTLogistic(nn.Module):
    """SimCLR's NT-Logistic: L = −mean_i log σ(S_ii/τ) − mean_{i≠j} log σ(−S_ij/τ).

    With sampler negatives: ½ Σ over both directions of [−mean_b log σ(s₊/τ) − mean log σ(−s₋/τ)],
    the second mean over every (anchor, negative) pair of that direction.
    """

    gathers_across_ranks = True  # the global batch's loss on every rank (module docstring)

    def __init__(self, temperature: float = 0.1, mask_false_negatives: bool = False):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                negatives: Negatives | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        _check_masking(self, false_negatives)
        image, text, negatives, fn = _gather(image_emb, text_emb, negatives, false_negatives)
        negatives = None if negatives is None else negatives.map(_unit)
        # In-batch, both directions hold the same pairs: one direction is the formula.
        directions = _scores(_unit(image), _unit(text), negatives, both=negatives is not None,
                             false_negatives=fn)
        total = 0
        for d in directions:  # −log σ(x) = softplus(−x), stable for any x
            total = total + (_masked_mean(F.softplus(-d.pos / self.temperature), None)
                             + _masked_mean(F.softplus(d.neg / self.temperature), d.valid))
        return total / len(directions)


class Triplet(nn.Module):
    """VSE hinge ranking loss (VSE++ with ``max_violation``), m = ``margin``.

    Image anchors: h_ij = [m + S_ij − S_ii]₊ over texts j≠i; text anchors: h'_ij = [m + S_ij − S_jj]₊
    over images i≠j. Each anchor contributes the sum of its hinges, or with ``max_violation`` only the
    largest. ``reduction="sum"`` adds every anchor's contribution (VSE++'s own loss); ``"mean"`` divides
    that sum by B. With sampler negatives the hinges run over each anchor's negatives instead.
    """

    gathers_across_ranks = True  # the global batch's loss on every rank (module docstring)

    def __init__(self, margin: float = 0.2, max_violation: bool = False, reduction: str = "mean",
                 mask_false_negatives: bool = False):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.margin, self.max_violation, self.reduction = float(margin), check_flag("max_violation", max_violation), reduction
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                negatives: Negatives | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        _check_masking(self, false_negatives)
        image, text, negatives, fn = _gather(image_emb, text_emb, negatives, false_negatives)
        negatives = None if negatives is None else negatives.map(_unit)
        total = 0
        for d in _scores(_unit(image), _unit(text), negatives, false_negatives=fn):
            hinge = F.relu(self.margin + d.neg - d.pos[:, None])
            if d.valid is not None:
                hinge = torch.where(d.valid, hinge, 0)  # hinges are ≥ 0, so 0 never wins the max
            if self.max_violation and hinge.shape[1] > 0:
                total = total + hinge.amax(1).sum()
            else:
                total = total + hinge.sum()
        return total / image.shape[0] if self.reduction == "mean" else total


class NPair(nn.Module):
    """Sohn's multi-class N-pair loss on raw dot products (no normalization).

    f_i image rows (anchors), g_i text rows (positives):
    L = mean_i log(1 + Σ_{j≠i} exp(f_i·g_j − f_i·g_i)) + ``l2_reg`` · mean_i(‖f_i‖² + ‖g_i‖²).
    ``symmetric`` averages L with the text-anchored L (f and g swapped). With sampler negatives the sum
    runs over each anchor's negatives and g is the anchor's positive (e.g. a momentum key).
    """

    gathers_across_ranks = True  # the global batch's loss on every rank (module docstring)

    def __init__(self, l2_reg: float = 0.0, symmetric: bool = False, mask_false_negatives: bool = False):
        super().__init__()
        self.l2_reg, self.symmetric = float(l2_reg), bool(symmetric)
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                negatives: Negatives | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        _check_masking(self, false_negatives)
        image, text, negatives, fn = _gather(image_emb, text_emb, negatives, false_negatives)
        image, text = _fp32(image), _fp32(text)
        negatives = None if negatives is None else negatives.map(_fp32)
        directions = _scores(image, text, negatives, both=self.symmetric, false_negatives=fn)
        positives = [text, image]
        if negatives is not None:
            positives = [p if p is not None else q for p, q in
                         zip((negatives.text_positive, negatives.image_positive), positives)]
        total = 0
        for d, anchor, positive in zip(directions, (image, text), positives):
            # log(1 + Σ exp(x_j)) = logsumexp([0, x_1, …]), exact and overflow-free
            margins = d.neg - d.pos[:, None]
            valid = _with_first_column(d.valid)
            rows = _masked_logsumexp(torch.cat([margins.new_zeros(margins.shape[0], 1), margins], 1),
                                     valid)
            total = total + _masked_mean(rows, None)
            if self.l2_reg:
                norms = anchor.pow(2).sum(-1) + positive.pow(2).sum(-1)
                total = total + self.l2_reg * _masked_mean(norms, None)
        return total / len(directions)


class Contrastive(nn.Module):
    """Pairwise contrastive loss (Hadsell, Chopra & LeCun) on normalized embeddings.

    D_ij = ‖Î_i − T̂_j‖ = √(2 − 2 S_ij);  L = mean_i D_ii² + mean_{i≠j} [m − D_ij]₊²,  m = ``margin``.
    With sampler negatives: ½ Σ over both directions of the same two means over that direction's pairs.
    """

    gathers_across_ranks = True  # the global batch's loss on every rank (module docstring)

    def __init__(self, margin: float = 1.0, mask_false_negatives: bool = False):
        super().__init__()
        self.margin = float(margin)
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                negatives: Negatives | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        _check_masking(self, false_negatives)
        image, text, negatives, fn = _gather(image_emb, text_emb, negatives, false_negatives)
        negatives = None if negatives is None else negatives.map(_unit)
        directions = _scores(_unit(image), _unit(text), negatives, both=negatives is not None,
                             false_negatives=fn)
        total = 0
        for d in directions:
            # 2 − 2s is the squared distance of unit vectors (a zero vector sits at √2 from all).
            pos_sq = (2 - 2 * d.pos).clamp_min(0)
            # √ has an infinite slope at 0: keep the argument off 0 for coinciding negatives.
            neg_dist = (2 - 2 * d.neg).clamp_min(1e-12).sqrt()
            total = total + (_masked_mean(pos_sq, None)
                             + _masked_mean(F.relu(self.margin - neg_dist).pow(2), d.valid))
        return total / len(directions)


class DeViSE(nn.Module):
    """DeViSE hinge rank loss of image embeddings against label (class-name) embeddings.

    L = mean_i Σ_{j≠y_i} [m − ⟨v_i, t̂_{y_i}⟩ + ⟨v_i, t̂_j⟩]₊, v_i the image embedding as is, t̂_j the
    L2-normalized embedding of class j's name, m = ``margin``. Called
    ``loss(image_emb, text_emb, label_emb=[C, D], labels=[B])``: the runner passes ``labels`` (class
    index of each image) and ``label_emb`` (the class names encoded by the text encoder, with gradient);
    ``text_emb`` (the captions) is ignored. Per-sample, so it gathers nothing across ranks: DDP's
    average of the local means is the global mean when ranks hold equal batch sizes.
    """

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = float(margin)

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor | None = None, *,
                label_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=image_emb.device).long().view(-1, 1)
        scores = _fp32(image_emb) @ _unit(label_emb).T  # [B, C]
        hinge = F.relu(self.margin - scores.gather(1, labels) + scores)
        hinge = hinge.scatter(1, labels, 0.0)  # j = y_i is not a violation
        return _masked_mean(hinge.sum(1), None)


@hookimpl
def register_losses(register):
    register("infonce", InfoNCE)
    register("nt-xent", NTXent)
    register("nt-logistic", NTLogistic)
    register("triplet", Triplet)
    register("npair", NPair)
    register("contrastive", Contrastive)
    register("devise", DeViSE)
