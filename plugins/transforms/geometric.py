"""Geometric training transforms: ``hflip``, ``random-resized-crop`` and ``rotate90`` (SimCLR's crop,
flip and rotation, from the lecture), built on ``torchvision.transforms.v2``.

Each decides per image, independently, whether (and how) to apply itself, drawing from torch's global
generator (which the runner seeds per batch), and returns new tensors, never changing its inputs. They
move what is tied to pixel positions with the image: gaze maps and object boxes. A horizontal flip also
swaps the words "left" and "right" in the flipped images' captions and the side relations in their
``relations`` labels, so that every caption and label stays true of its image; a quarter turn cannot
keep side words true, so ``rotate90`` refuses datasets that have them. A crop can cut out an object a
caption mentions.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from harness import hookimpl
from harness.components import Transform
from harness.data import DatasetInfo

from .common import check_images, check_pair, check_probability, coin, v2_functional

_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT",
               "RIGHT": "LEFT"}


#: words whose meaning a quarter turn changes ("left of" becomes "above"/"below")
_SPATIAL_WORDS = re.compile(r"\b(left|right|above|below|over|under|underneath|beneath|top|bottom)\b",
                            re.IGNORECASE)


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


def crop_boxes(boxes: torch.Tensor, crops: torch.Tensor, height: int, width: int,
               chosen: torch.Tensor) -> torch.Tensor:
    """Boxes ``[B, M, 4]`` (x0, y0, x1, y1 pixel edges; rows of -1 are padding) of the ``chosen`` images
    after cropping ``crops[b] = (top, left, h, w)`` and resizing the crop to ``height × width``.

    Each box is clipped to the crop, then mapped (x → (x − left) · width / w) and rounded outwards, so it
    covers every pixel whose centre lies in the object's mapped extent; a box with nothing left inside the
    crop becomes a padding row of -1."""
    dtype = boxes.dtype
    b = boxes.float()
    top, left, h, w = (crops[:, i, None].float().to(b.device) for i in range(4))
    x0 = (b[..., 0].clamp(min=left, max=left + w) - left) * (width / w)
    x1 = (b[..., 2].clamp(min=left, max=left + w) - left) * (width / w)
    y0 = (b[..., 1].clamp(min=top, max=top + h) - top) * (height / h)
    y1 = (b[..., 3].clamp(min=top, max=top + h) - top) * (height / h)
    eps = 1e-4  # float error must not round an exact edge outwards by a whole pixel
    moved = torch.stack([(x0 + eps).floor(), (y0 + eps).floor(), (x1 - eps).ceil(), (y1 - eps).ceil()], -1)
    real = (boxes >= 0).all(-1)
    gone = real & ((x1 <= x0) | (y1 <= y0))
    moved = torch.where(gone[..., None], torch.full_like(moved, -1), moved)
    keep = ~(real & chosen.to(boxes.device)[:, None])
    return torch.where(keep[..., None], boxes, moved.to(dtype))


def _resized_crop_map(maps: torch.Tensor, crop: tuple[int, int, int, int], image_hw: tuple[int, int]
                      ) -> torch.Tensor:
    """Maps ``[K, h, w]`` (float32) cropped at the image's crop ``(top, left, h, w)`` (in image pixels,
    scaled to the maps' own size) and resized back to ``h × w``: bilinear sampling of the same region."""
    top, left, ch, cw = crop
    H, W = image_hw
    mh, mw = maps.shape[-2:]
    if (mh, mw) == (H, W):  # the very operation applied to the image
        F = v2_functional()
        return F.resized_crop(maps.unsqueeze(1), top, left, ch, cw, [mh, mw], antialias=True).squeeze(1)
    # another size: sample the region's exact extent (normalised coordinates, pixel centres)
    ys = (top + (torch.arange(mh, dtype=torch.float32) + 0.5) * ch / mh) / H * 2 - 1
    xs = (left + (torch.arange(mw, dtype=torch.float32) + 0.5) * cw / mw) / W * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).expand(maps.shape[0], mh, mw, 2)
    return torch.nn.functional.grid_sample(maps.unsqueeze(1), grid, mode="bilinear", padding_mode="border",
                                           align_corners=False).squeeze(1)


class RandomResizedCrop(Transform):
    """Crop a random region of each image with probability ``p`` and resize it back to H×W (SimCLR's crop).

    The region covers a fraction of the image's area drawn uniformly from ``scale`` (default (0.5, 1.0),
    milder than SimCLR's (0.08, 1.0): a small captioned scene would often lose the objects its captions
    name) with an aspect ratio drawn log-uniformly from ``ratio`` (default (3/4, 4/3)), as
    ``v2.RandomResizedCrop`` draws it; it is resized bilinearly (``v2.functional.resized_crop``). Default
    ``p`` 1.0, as in SimCLR. The gaze map gets the same crop (of its own size) resized to its own size
    (values interpolated, not renormalised); object boxes are clipped, scaled and shifted, and a box left
    entirely outside the crop becomes the -1 padding row. A crop only scales and shifts, so the relations
    between objects still in the image stay true; but it can cut out an object a caption mentions, and
    then that caption (and the object's other labels) is no longer fully true of the image: that is why
    the default scale is mild.
    """

    def __init__(self, p: float = 1.0, scale: Sequence[float] = (0.5, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)):
        super().__init__()
        self.p = check_probability(p)
        self.scale = check_pair(scale, "scale", 0.0, 1.0)
        self.ratio = check_pair(ratio, "ratio")

    def forward(self, images: torch.Tensor, gaze: torch.Tensor | None = None,
                obj_bbox: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        check_images(images, "random-resized-crop")
        B, _, H, W = images.shape
        chosen = coin(self.p, B)
        crops = torch.tensor([[0, 0, H, W]] * B, dtype=torch.long).reshape(B, 4)
        out = images.clone()
        from torchvision.transforms.v2 import RandomResizedCrop as Sampler  # on first use: see v2_functional
        F = v2_functional()
        for i in chosen.nonzero().flatten().tolist():
            top, left, h, w = Sampler.get_params(images[i], list(self.scale), list(self.ratio))
            crops[i] = torch.tensor([top, left, h, w])
            out[i] = F.resized_crop(images[i], top, left, h, w, [H, W], antialias=True).clamp_(0.0, 1.0)
        moved: dict[str, Any] = {}
        if gaze is not None:
            maps = gaze.clone()
            flat = maps.view(B, *maps.shape[-2:]) if gaze.dim() == 4 else maps
            for i in chosen.nonzero().flatten().tolist():
                crop = tuple(int(v) for v in crops[i])
                flat[i] = _resized_crop_map(gaze[i].reshape(1, *gaze.shape[-2:]).float(), crop,
                                            (H, W))[0].to(gaze.dtype)
            moved["gaze"] = maps
        if obj_bbox is not None:
            moved["obj_bbox"] = crop_boxes(torch.as_tensor(obj_bbox), crops, H, W, chosen)
        return (out, moved) if moved else out

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}"


def spatial_words(dataset_info: DatasetInfo | None) -> tuple[list[str], list[str]]:
    """The dataset's predicates, and its vocabulary words, that name a side or a vertical relation."""
    if dataset_info is None:
        return [], []
    predicates = [p for p in dataset_info.predicates if _SPATIAL_WORDS.search(str(p))]
    vocab = [w for w in dataset_info.vocab if _SPATIAL_WORDS.fullmatch(str(w))]
    return predicates, vocab


def rotate_boxes(boxes: torch.Tensor, size: int, turns: torch.Tensor) -> torch.Tensor:
    """Boxes ``[B, M, 4]`` (x0, y0, x1, y1 pixel edges, -1 rows = padding) of square images ``size``
    pixels wide, after ``turns[b]`` counter-clockwise quarter turns (``torch.rot90`` on (H, W)); 0 keeps."""
    out = boxes.clone()
    real = (boxes >= 0).all(-1)
    cur = boxes.clone()
    for t in range(1, 4):
        x0, y0, x1, y1 = cur.unbind(-1)  # one more quarter turn: (x, y) -> (y, size - x)
        cur = torch.stack([y0, size - x1, y1, size - x0], -1)
        sel = real & (turns.to(boxes.device) == t)[:, None]
        out = torch.where(sel[..., None], cur, out)
    return out


class Rotate90(Transform):
    """Rotate each image by a random multiple of 90° with probability ``p`` (SimCLR's rotation).

    A chosen image turns counter-clockwise by 90°, 180° or 270°, uniformly (``torch.rot90``, exact for
    square images, which it needs); its gaze map and object boxes turn with it. Default ``p`` 0.5. A turn
    changes which object is left of or above which, and caption words such as "to the left of" cannot be
    rewritten grammatically into their rotated meaning ("below"), so it refuses, when built, a dataset
    whose predicates or vocabulary name a side or vertical relation (left, right, above, below, over,
    under, beneath, top, bottom), like ``shapes``: use ``hflip`` there. Without ``dataset_info`` nothing is
    checked.
    """

    def __init__(self, p: float = 0.5, dataset_info: DatasetInfo | None = None):
        super().__init__()
        self.p = check_probability(p)
        predicates, vocab = spatial_words(dataset_info)
        if predicates or vocab:
            named = (f"predicates {predicates}" if predicates else "") + (" and " if predicates and vocab
                                                                          else "") \
                + (f"vocabulary words {vocab}" if vocab else "")
            raise ValueError(
                f"rotate90 cannot be used on dataset {dataset_info.name!r}: its {named} name sides or "
                f"vertical relations, which a quarter turn changes (left becomes below), and its captions "
                f"and relation labels cannot be rewritten to match; use hflip, which swaps left and right")
        shape = tuple(dataset_info.image_shape) if dataset_info else ()
        if len(shape) == 3 and shape[1] != shape[2]:
            raise ValueError(f"rotate90 needs square images, dataset {dataset_info.name!r} has {shape}")

    def forward(self, images: torch.Tensor, gaze: torch.Tensor | None = None,
                obj_bbox: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        check_images(images, "rotate90")
        B, _, H, W = images.shape
        if H != W:
            raise ValueError(f"rotate90 needs square images, got {H}×{W}")
        chosen = coin(self.p, B)
        turns = torch.where(chosen, torch.randint(1, 4, (B,)), torch.zeros(B, dtype=torch.long))

        def turn(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            for t in range(1, 4):
                sel = (turns == t).to(x.device)
                if bool(sel.any()):
                    out[sel] = torch.rot90(x[sel], t, dims=(-2, -1))
            return out

        moved: dict[str, Any] = {}
        if gaze is not None:
            if gaze.shape[-1] != gaze.shape[-2]:
                raise ValueError(f"rotate90 needs square gaze maps, got {tuple(gaze.shape[-2:])}")
            moved["gaze"] = turn(gaze)
        if obj_bbox is not None:
            moved["obj_bbox"] = rotate_boxes(torch.as_tensor(obj_bbox), W, turns)
        out = turn(images)
        return (out, moved) if moved else out

    def extra_repr(self) -> str:
        return f"p={self.p}"


@hookimpl
def register_transforms(register):
    register("hflip", HorizontalFlip)
    register("random-resized-crop", RandomResizedCrop)
    register("rotate90", Rotate90)
