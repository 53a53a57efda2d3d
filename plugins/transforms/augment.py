"""Image augmentations for training (SimCLR's, from the lecture), built on ``torchvision.transforms.v2``.

Each decides per image, independently, whether (and how) to apply itself, drawing from torch's global
generator (which the runner seeds per batch). Geometric transforms move what is tied to pixel positions
with the image: gaze maps and object boxes. A horizontal flip also swaps the words "left" and "right" in
the flipped images' captions and the side relations in their ``relations`` labels, so that every
caption and label stays true of its image.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from harness import hookimpl
from harness.components import Transform
from harness.data import DatasetInfo

from .gaze import check_probability

_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT",
               "RIGHT": "LEFT"}


def coin(p: float, n: int) -> torch.Tensor:
    """``n`` independent draws of a coin that shows True with probability ``p`` (bool ``[n]``)."""
    return torch.rand(n) < p


def swap_sides(caption: str) -> str:
    """The caption of the mirrored image: "left" ↔ "right" (whole words, case kept)."""
    return _SIDE_WORDS.sub(lambda m: _OTHER_SIDE.get(m.group(0), m.group(0)), caption)


def mirrored_predicates(predicates: Sequence[str]) -> torch.Tensor:
    """For relation ids ``0..K-1`` named ``predicates``, the id of the same relation seen in a mirror
    (``left of`` ↔ ``right of``; the others unchanged), as a lookup table."""
    table = list(range(len(predicates)))
    for i, name in enumerate(predicates):
        other = swap_sides(name)
        if other != name and other in predicates:
            table[i] = list(predicates).index(other)
    return torch.tensor(table, dtype=torch.long)


def flip_boxes(boxes: torch.Tensor, width: int, flipped: torch.Tensor) -> torch.Tensor:
    """Boxes ``[B, M, 4]`` (x0, y0, x1, y1 pixel edges; rows of -1 are padding) of the ``flipped``
    images mirrored left–right in an image ``width`` pixels wide."""
    out = boxes.clone()
    real = (boxes >= 0).all(-1) & flipped.to(boxes.device)[:, None]
    x0, x1 = boxes[..., 0], boxes[..., 2]
    out[..., 0] = torch.where(real, width - x1, x0)
    out[..., 2] = torch.where(real, width - x0, x1)
    return out


def relabel(relations: torch.Tensor, table: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Relation ids ``[B, M, M]`` (-1 = none) of the ``chosen`` images mapped through ``table``."""
    ids = relations.long()
    mapped = torch.where(ids >= 0, table.to(ids.device)[ids.clamp_min(0)], ids)
    return torch.where(chosen.to(ids.device)[:, None, None], mapped, ids).to(relations.dtype)


class HorizontalFlip(Transform):
    """Mirror each image left–right with probability ``p`` (SimCLR's flip; the paper's p = 0.5).

    Moves the gaze map and object boxes with the image; in the flipped images' captions the words
    "left" and "right" swap, and so do the ``relations`` labels of predicates that name a side
    (``left of`` ↔ ``right of``, from the dataset's predicates): every caption stays true of its image.
    """

    def __init__(self, p: float = 0.5, dataset_info: DatasetInfo | None = None):
        super().__init__()
        self.p = check_probability(p)
        self.side_table = mirrored_predicates(dataset_info.predicates if dataset_info else [])

    def forward(self, images: torch.Tensor, gaze: torch.Tensor | None = None,
                obj_bbox: torch.Tensor | None = None, relations: torch.Tensor | None = None,
                captions: list[str] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        flipped = coin(self.p, images.shape[0])
        moved: dict[str, Any] = {}
        out = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        if gaze is not None:
            mask = flipped.to(gaze.device).view(-1, *([1] * (gaze.dim() - 1)))
            moved["gaze"] = torch.where(mask, gaze.flip(-1), gaze)
        if obj_bbox is not None:
            moved["obj_bbox"] = flip_boxes(obj_bbox, images.shape[-1], flipped)
        if relations is not None:
            moved["relations"] = relabel(relations, self.side_table, flipped)
        if captions is not None:
            moved["captions"] = [swap_sides(c) if f else c for c, f in zip(captions, flipped.tolist())]
        return out, moved

    def extra_repr(self) -> str:
        return f"p={self.p}"


@hookimpl
def register_transforms(register):
    register("hflip", HorizontalFlip)
