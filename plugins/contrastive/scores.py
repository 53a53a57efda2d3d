"""What the contrastive losses share: the scores of each anchor against its positive and negatives
(in-batch, or a sampler's :class:`Negatives`), with false negatives masked out, gathered across DDP ranks,
in full precision; and the checks of their common parameters. See :mod:`.losses` for the conventions."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

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
