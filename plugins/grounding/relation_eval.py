"""The ``relation`` evaluator: predicate and object prediction from visually grounded object phrases."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.components import EvalContext, Evaluator, TokenFeatures
from harness.model import take
from harness_plugins.grounding.relation_heads import resolve_predicates
from harness_plugins.grounding.relation_objects import (ATTRIBUTE_EXTRAS, NAME_EXTRAS, annotated_pairs,
                                                        competitors, find_heads, missing_object_extras,
                                                        object_phrases, object_queries, pool_text)


def relation_outcomes(pairwise: torch.Tensor, relations: Any, n_objects: Any) -> dict[str, torch.Tensor]:
    """Per annotated pair (b, s, p, o), from scores ``pairwise [B, P, M, M]`` (``[b, p, s, o]``):
    ``image`` (b), ``predicate_correct`` (p has the highest score of all predicates for (s, o); ties go
    to the lowest id), ``pair_correct`` (o scores strictly higher under p than every competing object,
    i.e. every other real object o' ≠ s of the image with relation(s, o') ≠ p; ties count as wrong) and
    ``competitors`` (their number)."""
    relations = torch.as_tensor(relations).long().to(pairwise.device)
    n_objects = torch.as_tensor(n_objects).long().to(pairwise.device)
    pairs = annotated_pairs(relations, n_objects)
    image, subject, obj, predicate = pairs
    predicate_correct = pairwise[image, :, subject, obj].argmax(dim=1) == predicate
    row = pairwise[image, predicate, subject, :]  # [T, M]: "s p ?" scored for every object
    rival = competitors(relations, n_objects, pairs)
    beaten = (row >= row.gather(1, obj[:, None])) & rival
    return {"image": image, "predicate_correct": predicate_correct, "pair_correct": ~beaten.any(dim=1),
            "competitors": rival.sum(dim=1)}


def relation_metrics(outcomes: dict[str, torch.Tensor], is_holdout: Any = None) -> dict[str, float]:
    """``accuracy`` and ``pair_accuracy`` (%) over every annotated pair, and ``accuracy_holdout`` /
    ``pair_accuracy_holdout`` over the pairs of images marked in ``is_holdout`` when there are any."""
    subsets = {"": torch.ones_like(outcomes["image"], dtype=torch.bool)}
    if is_holdout is not None:
        held = torch.as_tensor(np.asarray(is_holdout, dtype=bool)).to(outcomes["image"].device)
        subsets["_holdout"] = held[outcomes["image"]]
    metrics = {}
    for suffix, subset in subsets.items():
        if subset.any():
            for name, key in (("accuracy", "predicate_correct"), ("pair_accuracy", "pair_correct")):
                metrics[name + suffix] = 100.0 * float(outcomes[key][subset].double().mean())
    return metrics


def _split_annotations(context: EvalContext) -> dict[str, torch.Tensor]:
    extras = context.split.extras
    missing = missing_object_extras(extras)
    if missing:
        raise ValueError(f"the relation evaluator needs per-image n_objects, relations and the objects' "
                         f"names (obj_name) or attributes ({', '.join(ATTRIBUTE_EXTRAS)}); dataset "
                         f"{context.dataset_info.name!r} split {context.split.name!r} lacks {', '.join(missing)}")
    names = ("n_objects", "relations", *(NAME_EXTRAS if "obj_name" in extras else ATTRIBUTE_EXTRAS))
    return {name: torch.as_tensor(np.asarray(extras[name])).long() for name in names}


class RelationEvaluator(Evaluator):
    """Relation prediction from grounded object phrases: predicate accuracy and object ranking (%).

    For every annotated pair (s, p, o) of the split's images: ``accuracy`` = the top-1 predicate of
    score(s, ·, o) is p; ``pair_accuracy`` = for subject s and predicate p, o ranks first among the
    image's objects, ahead of every competitor (objects o' ≠ s, o not standing in relation p to s);
    ``accuracy_holdout`` / ``pair_accuracy_holdout`` = the same on images with a held-out colour–shape
    combination (``extras["is_holdout"]``), when there are any. Chance: 1/P for predicates, the mean
    over pairs of 1/(1 + competitors) for objects. ``attention_head`` / ``relation_head`` name the
    method's heads; images are scored ``batch_size`` at a time, without gradient.
    """

    units = {"*": "%"}

    def __init__(self, attention_head: str = "grounding", relation_head: str = "relation",
                 batch_size: int = 256):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.attention_head, self.relation_head, self.batch_size = attention_head, relation_head, batch_size

    def metric_names(self) -> list[str]:
        return ["accuracy", "pair_accuracy", "accuracy_holdout", "pair_accuracy_holdout"]

    def check_split(self, split: Any) -> None:
        missing = missing_object_extras(split.extras)
        if missing:
            raise ValueError(f"the relation evaluator needs a dataset with objects and relations (per-image "
                             f"n_objects, relations and obj_name, as visual-genome has, or shapes' object "
                             f"attributes); split {split.name!r} lacks {', '.join(missing)}")

    def _heads(self, context: EvalContext) -> tuple[torch.nn.Module, torch.nn.Module]:
        return find_heads(getattr(context.model, "heads", None), self.attention_head, self.relation_head)

    def chance(self, context: EvalContext) -> dict[str, float]:
        annotations = _split_annotations(context)
        try:
            n_predicates = self._heads(context)[1].num_predicates
        except (ValueError, AttributeError):
            n_predicates = len(resolve_predicates(None, context.dataset_info))
        pairs = annotated_pairs(annotations["relations"], annotations["n_objects"])
        rivals = competitors(annotations["relations"], annotations["n_objects"], pairs).sum(dim=1)
        outcomes = {"image": pairs[0], "predicate_correct": torch.full_like(rivals, 1.0 / n_predicates,
                                                                            dtype=torch.float64),
                    "pair_correct": 1.0 / (1.0 + rivals.double())}
        return relation_metrics(outcomes, context.split.extras.get("is_holdout"))

    @torch.no_grad()
    def evaluate(self, context: EvalContext) -> dict[str, float]:
        heads = getattr(context.model, "heads", None) or {}
        if not {self.attention_head, self.relation_head} & set(heads.keys()):
            return {}  # a method without relation heads (none, or only others such as a matcher)
        attention, relation = self._heads(context)
        annotations = _split_annotations(context)
        ids, text_of = object_phrases(annotations, context.dataset_info.object_names)
        queries, query_mask = object_queries(ids, lambda phrases: pool_text(context.model.embed_texts(phrases)),
                                             text_of)
        modes = [(head, head.training) for head in (attention, relation)]
        for head, _ in modes:
            head.eval()
        try:
            parts = []
            for start in range(0, len(context.split), self.batch_size):
                index = np.arange(start, min(start + self.batch_size, len(context.split)))
                locations = context.model.embed_images(take(context.split.images, index))
                if not isinstance(locations, TokenFeatures):
                    raise ValueError("the relation evaluator grounds objects in image locations: the image "
                                     "encoder must return location features (set its `pool: none`)")
                device = locations.features.device
                grounded = attention(queries[index].to(device), query_mask[index].to(device),
                                     locations.features, locations.mask)
                outcome = relation_outcomes(relation.pairwise_scores(grounded),
                                            annotations["relations"][index], annotations["n_objects"][index])
                outcome["image"] = outcome["image"] + start
                parts.append({key: value.cpu() for key, value in outcome.items()})
        finally:
            for head, was_training in modes:
                head.train(was_training)
        outcomes = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
        if not parts or not len(outcomes["image"]):
            raise ValueError(f"split {context.split.name!r} has no annotated (subject, object) pair "
                             f"(images with at least two objects)")
        return relation_metrics(outcomes, context.split.extras.get("is_holdout"))
