"""The ``zero-shot`` evaluator: classify each image as its nearest class-name embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.components import EvalContext, Evaluator


def nearest_label(image_emb: torch.Tensor, label_emb: torch.Tensor) -> torch.Tensor:
    """Index of the label embedding with the largest cosine similarity to each image (ties: lowest)."""
    image = F.normalize(image_emb.double(), dim=-1)  # a zero vector scores 0 against every label
    label = F.normalize(label_emb.double().to(image.device), dim=-1)
    return (image @ label.T).argmax(dim=1)


def zero_shot_accuracy(image_emb: torch.Tensor, label_emb: torch.Tensor, labels: Any,
                       is_holdout: Any = None, seen_classes: Any = None,
                       predicted: torch.Tensor | None = None) -> dict[str, float]:
    """Top-1 accuracy (in %) of :func:`nearest_label` (or of given ``predicted`` class indices, from a
    method's own pair scores) against ``labels`` ([N] class indices).

    ``top1`` covers every image with a label (≥ 0). With a boolean ``is_holdout`` [N],
    ``top1_holdout`` covers the images marked True and ``top1_seen`` the others. With
    ``seen_classes`` (the classes training saw as labels), ``top1_unseen`` covers images whose class
    is not among them. Each subset metric is reported only when its subset is non-empty.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(labels) != len(image_emb):
        raise ValueError(f"{len(image_emb)} image embeddings but {len(labels)} labels")
    predicted = (nearest_label(image_emb, label_emb) if predicted is None else predicted).cpu()
    correct = (predicted == labels).double()
    has_label = labels >= 0
    subsets = {"top1": has_label}
    if is_holdout is not None:
        held = torch.as_tensor(np.asarray(is_holdout, dtype=bool))
        if held.any():
            subsets["top1_seen"] = has_label & ~held
            subsets["top1_holdout"] = has_label & held
    if seen_classes is not None:
        seen = torch.as_tensor(np.unique(np.asarray(seen_classes)), dtype=torch.long)
        subsets["top1_unseen"] = has_label & ~torch.isin(labels, seen)
    return {name: 100.0 * float(correct[mask].mean())
            for name, mask in subsets.items() if mask.any()}


class ZeroShot(Evaluator):
    """Zero-shot top-1 accuracy: each image takes the class whose name embeds nearest (cosine).

    Class names (``dataset_info.class_names``, formatted with ``template``) go through the model's
    text side. Reports ``top1`` over all images of the split; ``top1_seen`` / ``top1_holdout`` over
    images without / with a held-out combination (``extras["is_holdout"]``) when it has any; and
    ``top1_unseen`` over images whose class never labels a training image (true zero-shot classes:
    for ``shapes`` with ``holdout``, images whose primary object is a held-out combination).
    """

    units = {"top1*": "%"}

    def __init__(self, template: str = "{}"):
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' for the class name, got {template!r}")
        self.template = template

    def metric_names(self) -> list[str]:
        return ["top1", "top1_seen", "top1_holdout", "top1_unseen"]

    def chance(self, context: EvalContext) -> dict[str, float]:
        n = len(context.dataset_info.class_names)
        return {name: 100.0 / n for name in self.metric_names()} if n else {}

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        split, names = context.split, list(context.dataset_info.class_names)
        if not names or split.extras.get("labels") is None:
            raise ValueError(f"the zero-shot evaluator needs class names and per-image `labels`; "
                             f"dataset {context.dataset_info.name!r} split {split.name!r} lacks them")
        label_emb = context.model.embed_texts([self.template.format(n) for n in names])
        image_emb = context.embed_images(split)
        train_labels = context.train_split.extras.get("labels")
        # the method's own pair scores when it has them (match-map); cosine of pooled vectors otherwise
        predicted = None if context.cosine_scores(image_emb, label_emb) else \
            context.scores(image_emb, label_emb).argmax(dim=1)
        return zero_shot_accuracy(image_emb, label_emb, split.extras["labels"],
                                  split.extras.get("is_holdout"), train_labels, predicted=predicted)


@hookimpl
def register_evaluators(register):
    register("zero-shot", ZeroShot)
