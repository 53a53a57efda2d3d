"""Match-map contrastive learning between image locations and caption tokens (Zhang, Choi, Han & Liu
2021): the ``matchmap`` loss, whose match-map score is also the method's pair score after training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import hookimpl
from harness.components import FalseNegatives, TokenFeatures
from harness.distributed import all_gather, all_gather_tokens
from harness.metrics import MATCHMAP_POOLINGS, matchmap_scores
from harness_plugins.contrastive.scores import check_flag

NEEDS_TOKENS = "matchmap needs token/location features: set the encoders' pool to none"


class MatchMap(nn.Module):
    """Symmetric InfoNCE over match-map scores of image locations against caption tokens.

    M[i,j,l,t] = ⟨v_il, w_jt⟩ for location l of image i and token t of caption j (with ``normalize``,
    of the L2-normalized vectors: a cosine per location/token). ``pooling`` makes it one score:
    ``misa`` (DAVEnet's, the paper's) S_ij = mean_{t∈T_j} max_{l∈L_i} M[i,j,l,t]; ``sima``
    S_ij = mean_{l∈L_i} max_{t∈T_j} M[i,j,l,t]; ``sisa`` the mean over all (l, t), padding excluded.
    L = ½ [CE(S/τ, diag) + CE(Sᵀ/τ, diag)], each cross-entropy a mean over the B rows (the paper sums
    the two directions; averaged here as in ``infonce``). Scores and loss run in float32, autocast off.
    Under torch.distributed both sides are gathered (padded to the longest L / T, masked) so the loss is
    the global batch's on every rank. ``mask_false_negatives`` drops from both cross-entropies the
    off-diagonal pairs the dataset marks as true (logit −∞), as the contrastive losses do.
    """

    gathers_across_ranks = True  # both sides gathered from every rank before the scores

    def __init__(self, temperature: float = 0.1, pooling: str = "misa", normalize: bool = False,
                 mask_false_negatives: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if pooling not in MATCHMAP_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(MATCHMAP_POOLINGS)}, got {pooling!r}")
        self.temperature, self.pooling, self.normalize = float(temperature), pooling, bool(normalize)
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor,
                text_mask: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None,
                false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        if self.mask_false_negatives and false_negatives is None:
            raise ValueError("MatchMap(mask_false_negatives=True) needs false_negatives=FalseNegatives(...)")
        image, text = self._tokens(image_feats, "image_feats"), self._tokens(text_feats, "text_feats")
        if image.shape[0] != text.shape[0]:
            raise ValueError(f"matchmap needs matching pairs: {image.shape[0]} images but "
                             f"{text.shape[0]} texts")
        image, image_mask = all_gather_tokens(image, image_mask)
        text, text_mask = all_gather_tokens(text, text_mask)
        scores = matchmap_scores(image, text, text_mask, image_mask, self.pooling)  # float32, autocast off
        logits = scores / self.temperature  # float32: autocast lowers matmuls, not the cross-entropy
        target = torch.arange(logits.shape[0], device=logits.device)
        if false_negatives is not None:  # R[j, i]: text j true of image i; the diagonal stays
            relevant = false_negatives.relevant(all_gather(false_negatives.text_ids)[None, :],
                                                all_gather(false_negatives.image_ids)[:, None])
            off_diag = ~torch.eye(len(target), dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(relevant.to(logits.device) & off_diag, -float("inf"))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def pair_scores(self, image: Any, text: Any) -> torch.Tensor:
        """``[N_images, N_texts]`` match-map scores with this loss's pooling and normalization, from
        :class:`~harness.components.TokenFeatures` or ``[N, L, D]`` tensors (all real)."""
        image_feats, image_mask = _features_and_mask(image)
        text_feats, text_mask = _features_and_mask(text)
        return matchmap_scores(self._tokens(image_feats, "image"), self._tokens(text_feats, "text"),
                               text_mask, image_mask, self.pooling)

    def _tokens(self, feats: torch.Tensor, name: str) -> torch.Tensor:
        if feats.dim() != 3:
            raise ValueError(f"{NEEDS_TOKENS} ({name} has shape {tuple(feats.shape)}, not [B, N, D])")
        if self.normalize:  # in float32: a bf16 norm would round every cosine; zero padding stays zero
            return F.normalize(feats.to(torch.promote_types(feats.dtype, torch.float32)), dim=-1)
        return feats


def _features_and_mask(value: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(value, TokenFeatures):
        return value.features, value.mask
    return torch.as_tensor(value), None


@hookimpl
def register_losses(register):
    register("matchmap", MatchMap)
