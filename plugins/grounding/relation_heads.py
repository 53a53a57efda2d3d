"""Heads of the relation-grounding method (Zhang, Choi, Han & Liu 2021): multi-head cross-attention
from object phrases to image locations, and the bilinear relation module over grounded objects."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from harness.data import DatasetInfo


def dataset_predicates(dataset_info: DatasetInfo | None) -> list[str] | None:
    """The predicate names a dataset declares (``dataset_info.predicates``), or ``None``."""
    declared = getattr(dataset_info, "predicates", None)
    return list(declared) if declared else None


def resolve_predicates(predicates: int | Sequence[str] | None,
                       dataset_info: DatasetInfo | None) -> list[str]:
    """Predicate names from a count (names ``"0"``…), a list of names, or (``None``) the dataset."""
    if predicates is None:
        names = dataset_predicates(dataset_info)
        if names is None:
            dataset = dataset_info.name if dataset_info is not None else "(none)"
            raise ValueError(f"dataset {dataset!r} declares no predicates: set the head's `predicates` "
                             f"to their number or a list of their names (relation id = list index)")
        return names
    if isinstance(predicates, bool):
        raise ValueError(f"predicates must be a count or a list of names, got {predicates!r}")
    if isinstance(predicates, int):
        if predicates < 1:
            raise ValueError(f"predicates must be at least 1, got {predicates}")
        return [str(i) for i in range(predicates)]
    if isinstance(predicates, str) or not all(isinstance(p, str) and p for p in predicates):
        raise ValueError(f"predicates must be a count or a list of non-empty names, got {predicates!r}")
    names = list(predicates)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"predicates must be a non-empty list of distinct names, got {names!r}")
    return names


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class CrossAttentionGrounding(nn.Module):
    """Cross-attention grounding: each object phrase attends over the image locations.

    g_m = W_o [head_1; …; head_H],  head_h = Σ_l softmax_l(⟨W_q^h q_m, W_k^h x_l⟩ / √(D/H)) W_v^h x_l

    (``torch.nn.MultiheadAttention``, biases included), with queries q_m ``[B, M, D]`` the object
    phrases embedded by the language stream and keys/values x_l ``[B, L, D]`` the image locations.
    Padded locations are masked out as keys (they get no attention weight, so adding them changes
    nothing); padded queries, and queries of an image without any real location, give zero vectors.
    Parameters: ``heads`` (must divide ``embed_dim``), ``dropout`` on the attention weights.
    """

    def __init__(self, heads: int = 8, dropout: float = 0.0, embed_dim: int = 64):
        super().__init__()
        _positive_int("heads", heads)
        _positive_int("embed_dim", embed_dim)
        if embed_dim % heads:
            raise ValueError(f"heads ({heads}) must divide embed_dim ({embed_dim})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.heads = embed_dim, heads
        self.attention = nn.MultiheadAttention(embed_dim, heads, dropout=float(dropout), batch_first=True)

    def forward(self, queries: torch.Tensor, query_mask: torch.Tensor | None, locations: torch.Tensor,
                location_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``queries [B, M, D]`` (``query_mask [B, M]``, True = real) attend over ``locations [B, L, D]``
        (``location_mask [B, L]``); returns the grounded objects ``[B, M, D]``."""
        if queries.dim() != 3 or locations.dim() != 3:
            raise ValueError(f"cross-attention takes queries [B, M, D] and locations [B, L, D], got "
                             f"{tuple(queries.shape)} and {tuple(locations.shape)}")
        if queries.shape[0] != locations.shape[0] or queries.shape[2] != locations.shape[2] \
                or queries.shape[2] != self.embed_dim:
            raise ValueError(f"queries {tuple(queries.shape)} and locations {tuple(locations.shape)} need "
                             f"the same batch and feature size {self.embed_dim} (embed_dim)")
        B, M, L = queries.shape[0], queries.shape[1], locations.shape[1]
        real_location = (torch.ones(B, L, dtype=torch.bool, device=locations.device)
                         if location_mask is None else location_mask.bool())
        has_location = real_location.any(dim=1)
        # an image with no real location would give NaN rows; let it attend anywhere, then zero it
        ignore = ~real_location & has_location[:, None]
        grounded, _ = self.attention(queries, locations, locations, key_padding_mask=ignore,
                                     need_weights=False)
        keep = has_location[:, None].expand(B, M)
        if query_mask is not None:
            keep = keep & query_mask.bool()
        return grounded.masked_fill(~keep[..., None], 0.0)


class BilinearRelation(nn.Module):
    """Bilinear relation module: one learnable operator per predicate between grounded objects.

    score_p(s, o) = r_s R̂_p r_oᵀ,  r = W x + b  (``project``: Linear(embed_dim → rank)),
    R̂_p = R_p / ‖R_p‖_F  (``R``: [P, rank, rank], each R_p Xavier-uniform initialised),
    P predicates (relation id = index) from ``predicates``: a count, a list of names, or by default
    the dataset's (``dataset_info.predicates`` when the dataset declares it; ``shapes``' RELATIONS).
    """

    def __init__(self, rank: int = 32, predicates: int | list[str] | None = None, embed_dim: int = 64,
                 dataset_info: DatasetInfo | None = None):
        super().__init__()
        _positive_int("rank", rank)
        _positive_int("embed_dim", embed_dim)
        self.predicates = resolve_predicates(predicates, dataset_info)
        self.rank = rank
        self.project = nn.Linear(embed_dim, rank)
        self.R = nn.Parameter(torch.empty(len(self.predicates), rank, rank))
        with torch.no_grad():
            for operator in self.R:
                nn.init.xavier_uniform_(operator)

    @property
    def num_predicates(self) -> int:
        return len(self.predicates)

    def normalized_operators(self) -> torch.Tensor:
        """R̂ ``[P, rank, rank]``: every R_p divided by its Frobenius norm."""
        norms = self.R.flatten(1).norm(dim=1).clamp_min(torch.finfo(self.R.dtype).tiny)
        return self.R / norms[:, None, None]

    def relation_scores(self, subjects: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` scores of every predicate for the pairs (subjects[n], objects[n]), each ``[N, d]``."""
        r_s, r_o = self.project(subjects), self.project(objects)
        return torch.einsum("nk,pkl,nl->np", r_s, self.normalized_operators(), r_o)

    def pairwise_scores(self, objects: torch.Tensor) -> torch.Tensor:
        """``[B, P, M, M]`` scores of every predicate for every ordered pair (subject i, object j) of each
        image's objects ``[B, M, d]``."""
        r = self.project(objects)
        return torch.einsum("bik,pkl,bjl->bpij", r, self.normalized_operators(), r)
