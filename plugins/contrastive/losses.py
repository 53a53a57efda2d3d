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

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from harness import hookimpl
from harness.components import FalseNegatives
from harness.distributed import all_gather

MAX_LOGIT_SCALE = 100.0  # CLIP's bound on 1/τ: a learnable temperature never goes below 0.01


@dataclasses.dataclass
class Negatives:
    """Negatives a sampler hands to a loss: ``loss(image_emb, text_emb, negatives=Negatives(...))``.

    ``text`` are the negatives of the image anchors and ``image`` those of the text anchors, each either
    ``[K, D]`` (one pool shared by every anchor: a MoCo queue, already gathered across ranks) or
    ``[B, K, D]`` (K per anchor, row-aligned with the local batch: re-ranked hard negatives); ``None``
    adds none. ``text_positive`` / ``image_positive`` (``[B, D]``, local rows) replace ``text_emb`` /
    ``image_emb`` as the positive of the other side's anchors (MoCo's momentum keys). ``in_batch`` keeps
    the other rows of the (global) batch's positives as negatives too. Row-aligned tensors are gathered
    across ranks by the loss, with the batch; shared pools are used as given. ``text_ids`` /
    ``image_ids`` (long, ``[K]`` or ``[B, K]`` like the negatives) name the split rows the negatives
    came from, for masking false negatives; samplers fill them when the runner passes ``false_negatives``.
    """

    text: torch.Tensor | None = None
    image: torch.Tensor | None = None
    text_positive: torch.Tensor | None = None
    image_positive: torch.Tensor | None = None
    in_batch: bool = False
    text_ids: torch.Tensor | None = None
    image_ids: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], shared: bool = True) -> "Negatives":
        """Apply ``fn`` to every tensor (to the shared ``[K, D]`` pools only if ``shared``)."""
        def one(t: torch.Tensor | None, pool: bool) -> torch.Tensor | None:
            return t if t is None or (pool and not shared) else fn(t)
        return dataclasses.replace(
            self, text=one(self.text, self.text is not None and self.text.dim() == 2),
            image=one(self.image, self.image is not None and self.image.dim() == 2),
            text_positive=one(self.text_positive, False), image_positive=one(self.image_positive, False))


class Scores(NamedTuple):
    """One direction's scores: ``pos[b]`` anchor b with its positive, ``neg[b, m]`` with its negatives;
    ``valid`` (bool, same shape as ``neg``) marks real negatives, ``None`` meaning all are."""

    pos: torch.Tensor
    neg: torch.Tensor
    valid: torch.Tensor | None


# --- shared helpers ---------------------------------------------------------------------------------


def _full_precision(forward):
    """Run ``forward`` with autocast off, so the matmuls below really happen in float32."""
    @functools.wraps(forward)  # keeps the signature the runner inspects for extras
    def wrapper(self, image_emb, *args, **kwargs):
        device_type = image_emb.device.type
        if not torch.amp.is_autocast_available(device_type):
            return forward(self, image_emb, *args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return forward(self, image_emb, *args, **kwargs)
    return wrapper


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(_fp32(x), dim=-1)


def cosine_similarity_matrix(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """S = Î T̂ᵀ in at least float32; zero vectors give zero similarity instead of NaN."""
    return _unit(image_emb) @ _unit(text_emb).T


def _masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of the valid entries; 0 (still attached to the graph) when there are none."""
    if valid is None:
        return x.sum() / max(x.numel(), 1)
    return torch.where(valid, x, 0).sum() / valid.sum().clamp_min(1)


def _masked_logsumexp(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.logsumexp(x if valid is None else x.masked_fill(~valid, -math.inf), dim=1)


def _with_first_column(valid: torch.Tensor | None) -> torch.Tensor | None:
    """The mask of [positive, negatives…]: the positive column is always valid."""
    return None if valid is None else torch.cat([valid.new_ones(valid.shape[0], 1), valid], 1)


def _gather(image_emb, text_emb, negatives, false_negatives=None):
    """The global batch (and the row-aligned parts of the sampler's negatives, and the rows' ids) from
    every rank."""
    if negatives is not None:
        per_row = {name: all_gather(ids) for name in ("text_ids", "image_ids")
                   if (ids := getattr(negatives, name)) is not None and ids.dim() == 2}
        negatives = dataclasses.replace(negatives.map(all_gather, shared=False), **per_row)
    if false_negatives is not None:
        false_negatives = dataclasses.replace(false_negatives,
                                              image_ids=all_gather(false_negatives.image_ids),
                                              text_ids=all_gather(false_negatives.text_ids))
    return all_gather(image_emb), all_gather(text_emb), negatives, false_negatives


def _check_masking(loss: nn.Module, false_negatives: FalseNegatives | None) -> None:
    if getattr(loss, "mask_false_negatives", False) and false_negatives is None:
        raise ValueError(f"{type(loss).__name__}(mask_false_negatives=True) needs "
                         "false_negatives=FalseNegatives(...): the rows' ids and the dataset's relevance")


def _relevant_negatives(fn: FalseNegatives, ids: torch.Tensor | None, anchors_are_images: bool,
                        shape: tuple[int, ...]) -> torch.Tensor:
    """``[B, K]`` True where the sampler negative (``ids``: ``[K]`` shared, ``[B, K]`` per anchor) is
    relevant to the anchor: a text true of the anchor image, an image the anchor text is true of."""
    if ids is None:
        raise ValueError("mask_false_negatives: the sampler's negatives carry no ids")
    ids = ids.to(fn.image_ids.device)
    ids = ids[None, :] if ids.dim() == 1 else ids
    if anchors_are_images:
        return fn.relevant(ids, fn.image_ids[:, None]).expand(shape)
    return fn.relevant(fn.text_ids[:, None], ids).expand(shape)


def _in_batch_masks(n: int, device: torch.device, fn: FalseNegatives | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid in-batch negatives of image anchors among the batch's texts (and of text anchors among its
    images): every other row, less (with ``fn``) those relevant to the anchor. Image anchor a and text
    j: text j true of image a, R[j, a]; text anchor a and image j: R[a, j]. The same masks serve the
    same-modality negatives the other way round (an image its text is true of; a text true of its image)."""
    off_diag = ~torch.eye(n, dtype=torch.bool, device=device)
    if fn is None:
        return off_diag, off_diag
    relevant = fn.matrix().to(device)
    return off_diag & ~relevant.T, off_diag & ~relevant


def _scores(image: torch.Tensor, text: torch.Tensor, negatives: Negatives | None,
            both: bool = True, same_modality: bool = False,
            false_negatives: FalseNegatives | None = None) -> list[Scores]:
    """Scores of the image→text direction and (if ``both``) the text→image one, from inputs already
    normalized or cast. ``same_modality`` also counts the anchors' other in-batch rows as negatives
    (SimCLR's 2B−1 denominator). With ``false_negatives`` (global ids) the negatives relevant to
    their anchor are marked invalid."""
    fn = false_negatives
    if negatives is None:  # plain in-batch: one B×B product serves both directions
        s = image @ text.T
        image_valid, text_valid = _in_batch_masks(s.shape[0], s.device, fn)
        out = [Scores(s.diagonal(), s, image_valid)]
        if both:
            out.append(Scores(s.diagonal(), s.T, text_valid))
        if same_modality:
            out = [Scores(pos, torch.cat([neg, a @ a.T], 1), torch.cat([valid, other], 1))
                   for (pos, neg, valid), a, other in zip(out, (image, text), (text_valid, image_valid))]
        return out

    image_valid, text_valid = _in_batch_masks(image.shape[0], image.device, fn)
    directions = [(image, negatives.text_positive, text, negatives.text, negatives.text_ids, True,
                   image_valid, text_valid),
                  (text, negatives.image_positive, image, negatives.image, negatives.image_ids, False,
                   text_valid, image_valid)]
    out = []
    for anchor, positive, pair, extra, extra_ids, anchors_are_images, cross_valid, same_valid \
            in directions[: 2 if both else 1]:
        positive = pair if positive is None else positive
        parts, masks = [], []
        if negatives.in_batch:
            parts.append(anchor @ positive.T)
            masks.append(cross_valid)
            if same_modality:
                parts.append(anchor @ anchor.T)
                masks.append(same_valid)
        if extra is not None:
            parts.append(anchor @ extra.T if extra.dim() == 2
                         else torch.einsum("bd,bkd->bk", anchor, extra))
            masks.append(torch.ones_like(parts[-1], dtype=torch.bool) if fn is None else
                         ~_relevant_negatives(fn, extra_ids, anchors_are_images, parts[-1].shape))
        pos = (anchor * positive).sum(-1)
        if not parts:
            out.append(Scores(pos, pos.new_zeros(pos.shape[0], 0), None))
            continue
        out.append(Scores(pos, torch.cat(parts, 1), torch.cat(masks, 1)))
    return out


def check_flag(name: str, value: bool) -> bool:
    """A yes/no parameter must be a boolean: ``bool("no")`` is True, so a quoted value would silently
    turn the option on."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


# --- the losses ---------------------------------------------------------------------------------------


class InfoNCE(nn.Module):
    """CLIP-style symmetric InfoNCE over in-batch cosine similarities.

    L = ½ [CE(S/τ, diag) + CE(Sᵀ/τ, diag)], each cross-entropy a mean over the B rows.
    With ``learnable_temperature`` τ is trained as ``logit_scale = log(1/τ)`` (an ``nn.Parameter``,
    clipped so 1/τ ≤ 100 as in CLIP). With sampler negatives each anchor's row is
    [s₊, s₁…s_K]/τ with target 0 (MoCo's logits), averaged over both directions.
    """

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
