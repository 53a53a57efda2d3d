"""Shared plumbing of the relation loss and evaluator: the objects' phrases (``shapes`` scenes: "small
red circle" from each object's size, colour and shape; Visual Genome: the object's name, ``obj_name``
into ``info.object_names``), their embedding by the language stream, the method's grounding heads, and
the annotated (subject, object) pairs with their competing objects."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from harness.components import TokenFeatures
from harness.model import to_device
from harness_plugins.datasets.shapes import COLORS, SHAPES, SIZES

#: object phrase id = (size * len(COLORS) + colour) * len(SHAPES) + shape
N_PHRASES = len(SIZES) * len(COLORS) * len(SHAPES)


def phrase_text(phrase_id: int) -> str:
    """The object phrase of an id: "{size} {colour} {shape}" ("small red circle"), the words the captions
    use for that object without their article."""
    rest, shape = divmod(int(phrase_id), len(SHAPES))
    size, color = divmod(rest, len(COLORS))
    return f"{SIZES[size]} {COLORS[color]} {SHAPES[shape]}"


def object_phrase_ids(n_objects: Any, obj_color: Any, obj_shape: Any, obj_size: Any) -> torch.Tensor:
    """``[B, M]`` phrase ids of each image's objects (:func:`phrase_text`), -1 for padding slots (slot
    index >= ``n_objects`` or a negative attribute)."""
    color, shape, size = (torch.as_tensor(x).long() for x in (obj_color, obj_shape, obj_size))
    n = torch.as_tensor(n_objects).long().to(color.device)
    real = (torch.arange(color.shape[1], device=color.device)[None, :] < n[:, None]) \
        & (color >= 0) & (shape >= 0) & (size >= 0)
    ids = (size * len(COLORS) + color) * len(SHAPES) + shape
    return torch.where(real, ids, torch.full_like(ids, -1))


#: per-image extras that name each object: Visual Genome's names, or shapes' attributes
NAME_EXTRAS = ("obj_name",)
ATTRIBUTE_EXTRAS = ("obj_color", "obj_shape", "obj_size")


def missing_object_extras(extras: Mapping[str, Any]) -> list[str]:
    """What ``extras`` lack for object phrases and relations (empty when they have all they need)."""
    missing = [name for name in ("n_objects", "relations") if name not in extras]
    if "obj_name" not in extras and any(name not in extras for name in ATTRIBUTE_EXTRAS):
        missing.append("obj_name (or obj_color, obj_shape and obj_size)")
    return missing


def object_phrases(annotations: Mapping[str, Any], object_names: Sequence[str] = ()
                   ) -> tuple[torch.Tensor, Callable[[int], str]]:
    """``[B, M]`` phrase ids of each image's objects (-1 for padding) and the phrase of an id: from
    ``obj_name`` (an index into ``object_names``) when the annotations have it, else from shapes'
    ``obj_color``/``obj_shape``/``obj_size`` (:func:`phrase_text`)."""
    if annotations.get("obj_name") is not None:
        names = torch.as_tensor(annotations["obj_name"]).long()
        n = torch.as_tensor(annotations["n_objects"]).long().to(names.device)
        real = (torch.arange(names.shape[1], device=names.device)[None, :] < n[:, None]) & (names >= 0)
        if real.any() and int(names[real].max()) >= len(object_names):
            raise ValueError(f"object name id {int(names[real].max())} in the data, but the dataset names "
                             f"{len(object_names)} objects (info.object_names)")
        return torch.where(real, names, torch.full_like(names, -1)), lambda i: object_names[int(i)]
    missing = [name for name in ATTRIBUTE_EXTRAS if annotations.get(name) is None]
    if missing:
        raise ValueError(f"object phrases need obj_name, or obj_color, obj_shape and obj_size; missing "
                         f"{', '.join(missing)}")
    return object_phrase_ids(annotations["n_objects"], annotations["obj_color"], annotations["obj_shape"],
                             annotations["obj_size"]), phrase_text


def pool_text(output: Any) -> torch.Tensor:
    """One vector per text: a pooled ``[K, D]`` output as it is; :class:`TokenFeatures` as the mean of
    each text's real tokens (padding never enters the mean)."""
    if not isinstance(output, TokenFeatures):
        return output
    valid = output.valid[..., None]
    total = torch.where(valid, output.features, torch.zeros_like(output.features)).sum(dim=1)
    return total / valid.sum(dim=1).clamp_min(1).to(total.dtype)


def embed_phrases(text_encoder: nn.Module, phrases: list[str], device: torch.device) -> torch.Tensor:
    """``[K, D]`` phrase vectors from the text encoder, with gradient (training)."""
    prepared = to_device(text_encoder.prepare(phrases), device)
    return pool_text(text_encoder(prepared))


def object_queries(phrase_ids: torch.Tensor, embed: Any, text_of: Callable[[int], str] = phrase_text
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries ``[B, M, D]`` (zero for padding) and their mask ``[B, M]``; ``embed(list_of_phrases)``
    returns ``[K, D]`` vectors, and is called once on the distinct phrases (``text_of(id)``)."""
    mask = phrase_ids >= 0
    distinct, position = torch.unique(phrase_ids[mask], return_inverse=True)
    vectors = embed([text_of(i) for i in distinct.tolist()])
    queries = vectors.new_zeros(*phrase_ids.shape, vectors.shape[-1])
    queries[mask.to(queries.device)] = vectors[position.to(vectors.device)]
    return queries, mask.to(queries.device)


def find_heads(heads: Any, attention_key: str, relation_key: str) -> tuple[nn.Module, nn.Module]:
    """The method's cross-attention and bilinear relation heads, by their keys in ``heads:``."""
    keys = list(heads.keys()) if heads is not None else []
    found = []
    for role, key, example, needs in (("attention_head", attention_key, "cross-attention", None),
                                      ("relation_head", relation_key, "bilinear-relation",
                                       "pairwise_scores")):
        if key not in keys:
            raise ValueError(f"relation grounding needs a head named {key!r} (`{role}`), e.g. method "
                             f"`heads: {{{key}: {{name: {example}}}}}`; the method's heads: {keys or 'none'}")
        head = heads[key]
        if needs and not hasattr(head, needs):
            raise ValueError(f"head {key!r} (`{role}`) has no {needs}(); it must be a {example} head")
        found.append(head)
    return found[0], found[1]


def annotated_pairs(relations: torch.Tensor, n_objects: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(image, subject, object, predicate)`` index tensors ``[T]`` of every annotated pair: a relation id
    >= 0 between two distinct real objects (``relations[b, s, o]`` = relation of s w.r.t. o)."""
    relations = torch.as_tensor(relations).long()
    n = torch.as_tensor(n_objects).long().to(relations.device)
    M = relations.shape[1]
    slots = torch.arange(M, device=relations.device)
    real = slots[None, :] < n[:, None]
    ok = (relations >= 0) & real[:, :, None] & real[:, None, :] & (slots[:, None] != slots[None, :])
    image, subject, obj = ok.nonzero(as_tuple=True)
    return image, subject, obj, relations[image, subject, obj]


def competitors(relations: torch.Tensor, n_objects: torch.Tensor,
                pairs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``[T, M]``: for each annotated pair (b, s, o, p), the objects o' that compete with o for
    "s p ?": the image's real objects other than s and o that do not stand in relation p to s."""
    relations = torch.as_tensor(relations).long()
    n = torch.as_tensor(n_objects).long().to(relations.device)
    image, subject, obj, predicate = pairs
    slots = torch.arange(relations.shape[1], device=relations.device)
    real = slots[None, :] < n[image][:, None]
    return real & (slots[None, :] != subject[:, None]) & (slots[None, :] != obj[:, None]) \
        & (relations[image, subject] != predicate[:, None])
