"""The ``relation`` loss: predicate cross-entropy and a contrastive pair term on visually grounded
object phrases (Zhang, Choi, Han & Liu 2021, relational grounding stage)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import DatasetInfo
from harness_plugins.datasets.shapes import COLORS, SHAPES
from harness_plugins.grounding.relation_objects import (annotated_pairs, embed_phrases, find_heads,
                                                        object_phrases, object_queries)


def predicate_cross_entropy(scores: torch.Tensor, predicate: torch.Tensor,
                            temperature: float = 1.0) -> torch.Tensor:
    """``[T]``: CE_t = −log softmax_p(x_t / τ)[p_t] for the scores ``[T, P]`` of the annotated pairs."""
    return F.cross_entropy(scores.float() / temperature, predicate, reduction="none")


def pair_contrast(scores: torch.Tensor, predicate: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[T]``: pair_t = −log exp(x_t[p_t]/τ) / Σ_{u ∈ {t} ∪ {u: p_u ≠ p_t}} exp(x_u[p_t]/τ).

    The predicate p_t of pair t scores every annotated pair u of the batch; the negatives are the pairs
    that stand in another relation (other objects of the same image, reversed pairs, other images);
    pairs that also stand in relation p_t are left out (they are positives for p_t too)."""
    logits = scores.float()[:, predicate].T / temperature  # [t, u] = x_u[p_t] / τ
    same = predicate[:, None] == predicate[None, :]
    allowed = ~same | torch.eye(len(predicate), dtype=torch.bool, device=scores.device)
    return torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=1) - logits.diagonal()


class RelationLoss(nn.Module):
    """Relation loss on object phrases grounded in the image by cross-attention.

    L = 1/T Σ_t [CE_t + λ_pair · pair_t] + λ_obj · L_obj, over the T annotated (s, p, o) pairs of the batch:
    x_t[p] = score_p(g_s, g_o) (the ``bilinear-relation`` head) on grounded objects g = the
    ``cross-attention`` head with the object phrases (``shapes``: "small red circle"; Visual Genome: the
    object's name from ``obj_name``; embedded by the text encoder, the mean of their real tokens) as
    queries and the image locations as keys/values;
    CE_t = −log softmax_p(x_t/τ)[p_t];
    pair_t = −log exp(x_t[p_t]/τ) / Σ_{u ∈ {t} ∪ {u: p_u ≠ p_t}} exp(x_u[p_t]/τ) (same predicate,
    other pairs of the batch that stand in another relation);
    L_obj = 1/K Σ_k ½ [CE(W_c g_k, colour_k) + CE(W_s g_k, shape_k)] over the K real objects
    (linear classifiers, built only when ``object_weight`` > 0; ``shapes`` objects only).
    ``attention_head`` / ``relation_head`` name the method's heads; a batch without an annotated pair
    contributes only L_obj. Needs location features ``[B, L, D]`` from the image encoder.
    """

    def __init__(self, attention_head: str = "grounding", relation_head: str = "relation",
                 pair_weight: float = 1.0, object_weight: float = 0.0, temperature: float = 1.0,
                 embed_dim: int = 64, dataset_info: DatasetInfo | None = None):
        super().__init__()
        self.object_names = list(dataset_info.object_names) if dataset_info is not None else []
        for name, value in (("pair_weight", pair_weight), ("object_weight", object_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.attention_head, self.relation_head = attention_head, relation_head
        self.pair_weight, self.object_weight = float(pair_weight), float(object_weight)
        self.temperature = float(temperature)
        if self.object_weight > 0 and self.object_names:  # named objects (Visual Genome): no colour/shape
            raise ValueError("object_weight > 0 classifies the grounded objects' colours and shapes (shapes "
                             "scenes); this dataset names its objects instead (obj_name): set object_weight: 0")
        if self.object_weight > 0:
            self.color_classifier = nn.Linear(embed_dim, len(COLORS))
            self.shape_classifier = nn.Linear(embed_dim, len(SHAPES))

    def forward(self, image_feats: torch.Tensor, text_feats: Any, *, model: nn.Module, heads: Any,
                n_objects: torch.Tensor, relations: torch.Tensor, obj_shape: torch.Tensor | None = None,
                obj_color: torch.Tensor | None = None, obj_size: torch.Tensor | None = None,
                obj_name: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        if image_feats.dim() != 3:
            raise ValueError(f"the relation loss grounds objects in image locations: it needs location "
                             f"features [B, L, D], got {tuple(image_feats.shape)} (pooled; set the "
                             f"image encoder's `pool: none`)")
        attention, relation = find_heads(heads, self.attention_head, self.relation_head)
        device = image_feats.device
        ids, text_of = object_phrases({"n_objects": n_objects, "obj_color": obj_color, "obj_shape": obj_shape,
                                       "obj_size": obj_size, "obj_name": obj_name}, self.object_names)
        queries, query_mask = object_queries(
            ids.to(device), lambda phrases: embed_phrases(model.text_encoder, phrases, device), text_of)
        grounded = attention(queries.to(image_feats.dtype), query_mask, image_feats, image_mask)
        return self.loss_from_grounded(grounded, relation, relations, n_objects, obj_color, obj_shape)

    def loss_from_grounded(self, grounded: torch.Tensor, relation: nn.Module, relations: torch.Tensor,
                           n_objects: torch.Tensor, obj_color: torch.Tensor | None = None,
                           obj_shape: torch.Tensor | None = None) -> torch.Tensor:
        """L from grounded objects ``[B, M, D]``, the relation head and the annotations."""
        relations = torch.as_tensor(relations).to(grounded.device).long()
        n_objects = torch.as_tensor(n_objects).to(grounded.device).long()
        image, subject, obj, predicate = annotated_pairs(relations, n_objects)
        P = relation.num_predicates
        if len(predicate) and int(predicate.max()) >= P:
            raise ValueError(f"relation id {int(predicate.max())} in the data, but the relation head "
                             f"has {P} predicates")
        scores = relation.relation_scores(grounded[image, subject], grounded[image, obj])  # [T, P]
        if len(predicate):
            per_pair = predicate_cross_entropy(scores, predicate, self.temperature)
            if self.pair_weight:
                per_pair = per_pair + self.pair_weight * pair_contrast(scores, predicate, self.temperature)
            loss = per_pair.mean()
        else:
            loss = scores.sum() * 0.0  # keeps the graph: a batch of single-object images
        if self.object_weight > 0:
            loss = loss + self.object_weight * self.object_term(grounded, n_objects, obj_color, obj_shape)
        return loss

    def object_term(self, grounded: torch.Tensor, n_objects: torch.Tensor, obj_color: torch.Tensor,
                    obj_shape: torch.Tensor) -> torch.Tensor:
        """L_obj: colour and shape classification of the real grounded objects."""
        if obj_color is None or obj_shape is None:
            raise ValueError("object_weight > 0 needs the objects' colours and shapes")
        color = torch.as_tensor(obj_color).to(grounded.device).long()
        shape = torch.as_tensor(obj_shape).to(grounded.device).long()
        slots = torch.arange(grounded.shape[1], device=grounded.device)
        real = (slots[None, :] < n_objects[:, None]) & (color >= 0) & (shape >= 0)
        if not real.any():
            return grounded.sum() * 0.0
        g = grounded[real].float()
        return 0.5 * (F.cross_entropy(self.color_classifier(g), color[real])
                      + F.cross_entropy(self.shape_classifier(g), shape[real]))
