"""Image augmentations for training (SimCLR's, from the lecture), built on ``torchvision.transforms.v2``.

``hflip``, ``random-resized-crop``, ``color-jitter``, ``grayscale``, ``gaussian-blur``, ``rotate90``,
``cutout``, ``gaussian-noise`` and ``sobel`` (Chen et al. 2020: crop and resize, flip, colour drop and
jitter, rotation, cutout, noise, blur, Sobel filtering). Each decides per image, independently, whether
(and how) to apply itself, drawing from torch's global generator (which the runner seeds per batch),
and returns new tensors (float, in [0, 1], the input's shape), never changing its inputs. Geometric
transforms move what is tied to pixel positions with the image: gaze maps and object boxes. A
horizontal flip also swaps the words "left" and "right" in the flipped images' captions and the side
relations in their ``relations`` labels, so that every caption and label stays true of its image; a
quarter turn cannot keep side words true, so ``rotate90`` refuses datasets that have them. A crop or a
cutout can hide an object a caption mentions, and colour jitter can move a colour toward a neighbour.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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


# --- SimCLR's other augmentations (Chen et al. 2020, the lecture's list) ---------------------------------
#
# Every transform draws a coin per image and parameters per image from torch's global generator (most
# draw them for every image, chosen or not; the crop only for the chosen ones, as torchvision's sampler
# retries a variable number of times), and applies torchvision's ``v2.functional`` operation to each
# chosen image with that image's own parameters (a v2 transform called on a batch would draw once for
# the whole batch).

#: words whose meaning a quarter turn changes ("left of" becomes "above"/"below")
_SPATIAL_WORDS = re.compile(r"\b(left|right|above|below|over|under|underneath|beneath|top|bottom)\b",
                            re.IGNORECASE)


def _pair(value: Sequence[float], name: str, low: float = 0.0, high: float = math.inf,
          closed_low: bool = False) -> tuple[float, float]:
    """``value`` as an ordered pair of floats within (``low``, ``high``] (``[low, high]`` if ``closed_low``),
    or a ValueError naming the parameter."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    above = (lambda v: v >= low) if closed_low else (lambda v: v > low)
    if not (above(a) and a <= b <= high and math.isfinite(a) and math.isfinite(b)):
        bounds = f"{'[' if closed_low else '('}{low}, {high}]"
        raise ValueError(f"{name} must be a pair min <= max within {bounds}, got {value!r}")
    return a, b


def _number(value: float, name: str, low: float = 0.0, high: float = math.inf,
            closed_low: bool = True) -> float:
    """``value`` as a float in [``low``, ``high``] (``(low, high]`` unless ``closed_low``), or a
    ValueError naming the parameter."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= low if closed_low else value > low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be a number in {'[' if closed_low else '('}{low}, {high}], "
                         f"got {value!r}")
    return float(value)


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{name} needs a float image batch [B, C, H, W] in [0, 1], got "
                         f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")


def _per_image(mask: torch.Tensor, dims: int) -> torch.Tensor:
    """A bool ``[B]`` mask shaped to broadcast over a ``dims``-dimensional batch."""
    return mask.view(-1, *([1] * (dims - 1)))


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
        self.scale = _pair(scale, "scale", 0.0, 1.0)
        self.ratio = _pair(ratio, "ratio")

    def forward(self, images: torch.Tensor, gaze: torch.Tensor | None = None,
                obj_bbox: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        _check_images(images, "random-resized-crop")
        B, _, H, W = images.shape
        chosen = coin(self.p, B)
        crops = torch.tensor([[0, 0, H, W]] * B, dtype=torch.long).reshape(B, 4)
        out = images.clone()
        for i in chosen.nonzero().flatten().tolist():
            top, left, h, w = v2.RandomResizedCrop.get_params(images[i], list(self.scale), list(self.ratio))
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


class ColorJitter(Transform):
    """Jitter each image's brightness, contrast, saturation and hue with probability ``p`` (SimCLR's).

    As ``v2.ColorJitter``, per image: factors drawn uniformly from [1 − x, 1 + x] for ``brightness``,
    ``contrast`` and ``saturation`` (defaults 0.4 each) and a hue shift from [−``hue``, ``hue``] turns
    (default 0.1 = ±36°), applied in a random order. Default ``p`` 0.8, SimCLR's. Colour words in captions
    can suffer: in ``shapes``, orange lies 23° from yellow and 31° from red, so a hue shift above about 0.03
    can make an object look like its neighbour colour; use ``hue: 0.03`` or less where captions name
    colours that close. On single-channel images only brightness and contrast act.
    """

    def __init__(self, p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1):
        super().__init__()
        self.p = check_probability(p)
        self.brightness = _number(brightness, "brightness")
        self.contrast = _number(contrast, "contrast")
        self.saturation = _number(saturation, "saturation")
        self.hue = _number(hue, "hue", 0.0, 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "color-jitter")
        B = images.shape[0]
        chosen = coin(self.p, B)
        order = torch.rand(B, 4).argsort(dim=1)
        factors = torch.stack([torch.empty(B).uniform_(max(0.0, 1 - x), 1 + x)
                               for x in (self.brightness, self.contrast, self.saturation)], 1)
        shifts = torch.empty(B).uniform_(-self.hue, self.hue)
        ops = [lambda x, i: F.adjust_brightness(x, float(factors[i, 0])),
               lambda x, i: F.adjust_contrast(x, float(factors[i, 1])),
               lambda x, i: F.adjust_saturation(x, float(factors[i, 2])),
               lambda x, i: F.adjust_hue(x, float(shifts[i]))]
        out = images.clone()
        for i in chosen.nonzero().flatten().tolist():
            x = images[i]
            for k in order[i].tolist():
                x = ops[k](x, i)
            out[i] = x.clamp(0.0, 1.0)
        return out

    def extra_repr(self) -> str:
        return (f"p={self.p}, brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue}")


class Grayscale(Transform):
    """Turn each image grey with probability ``p`` (SimCLR's colour drop), keeping its channels.

    Every channel becomes the luminance 0.2989 R + 0.587 G + 0.114 B (``v2.functional.rgb_to_grayscale``
    with as many output channels as the input); single-channel images are already grey. Default ``p`` 0.2,
    SimCLR's. Captions naming colours are then not verifiable from the image (nor false).
    """

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.p = check_probability(p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "grayscale")
        chosen = coin(self.p, images.shape[0])
        if images.shape[1] == 1 or not bool(chosen.any()):
            return images.clone()
        gray = F.rgb_to_grayscale(images, num_output_channels=images.shape[1])
        return torch.where(_per_image(chosen, 4), gray, images)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def blur_kernel_size(fraction: float, height: int, width: int) -> int:
    """The odd Gaussian kernel size nearest ``fraction`` of the image's smaller side (at least 3)."""
    k = max(3, int(round(fraction * min(height, width))))
    return k if k % 2 else k + 1


class GaussianBlur(Transform):
    """Blur each image with a Gaussian of random width with probability ``p`` (SimCLR's blur).

    The kernel is ``kernel_fraction`` (default 0.1, SimCLR's 10%) of the image's smaller side, rounded to
    an odd size of at least 3 (3 for 32 px, 7 for 64 px); σ is drawn per image uniformly from ``sigma``
    (default (0.1, 2.0) px) and applied by ``v2.functional.gaussian_blur`` with reflected borders. Default
    ``p`` 0.5, SimCLR's. Near σ = 0.1 the blur barely changes the image.
    """

    def __init__(self, p: float = 0.5, kernel_fraction: float = 0.1,
                 sigma: Sequence[float] = (0.1, 2.0)):
        super().__init__()
        self.p = check_probability(p)
        self.kernel_fraction = _number(kernel_fraction, "kernel_fraction", 0.0, 1.0, closed_low=False)
        self.sigma = _pair(sigma, "sigma")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "gaussian-blur")
        B, _, H, W = images.shape
        chosen = coin(self.p, B)
        sigmas = torch.empty(B).uniform_(*self.sigma)
        k = blur_kernel_size(self.kernel_fraction, H, W)
        out = images.clone()
        for i in chosen.nonzero().flatten().tolist():
            s = float(sigmas[i])
            out[i] = F.gaussian_blur(images[i], [k, k], [s, s]).clamp_(0.0, 1.0)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, kernel_fraction={self.kernel_fraction}, sigma={self.sigma}"


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
        _check_images(images, "rotate90")
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


class Cutout(Transform):
    """Blank a random square of each image with probability ``p`` (SimCLR's cutout).

    One square of side ``size`` (default 0.25) times the image's height and width, placed uniformly inside
    the image, is filled with ``value`` (default 0.0, black) by ``v2.functional.erase`` — like
    ``v2.RandomErasing`` with a fixed square. Default ``p`` 0.5. The square may hide an object a caption
    mentions; gaze maps and boxes are left as they are.
    """

    def __init__(self, p: float = 0.5, size: float = 0.25, value: float = 0.0):
        super().__init__()
        self.p = check_probability(p)
        self.size = _number(size, "size", 0.0, 1.0, closed_low=False)
        self.value = _number(value, "value", 0.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "cutout")
        B, C, H, W = images.shape
        h, w = max(1, int(round(self.size * H))), max(1, int(round(self.size * W)))
        chosen = coin(self.p, B)
        tops = torch.randint(0, H - h + 1, (B,))
        lefts = torch.randint(0, W - w + 1, (B,))
        fill = torch.full((C, h, w), self.value, dtype=images.dtype)
        out = images.clone()
        for i in chosen.nonzero().flatten().tolist():
            out[i] = F.erase(images[i], int(tops[i]), int(lefts[i]), h, w, fill)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, size={self.size}, value={self.value}"


class GaussianNoise(Transform):
    """Add Gaussian pixel noise to each image with probability ``p`` (SimCLR's noise).

    Every pixel and channel of a chosen image gets independent noise of standard deviation ``std``
    (default 0.05), and the result is clamped to [0, 1] (``v2.GaussianNoise(sigma=std, clip=True)``,
    drawn per image). Default ``p`` 0.5.
    """

    def __init__(self, p: float = 0.5, std: float = 0.05):
        super().__init__()
        self.p = check_probability(p)
        self.std = _number(std, "std")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "gaussian-noise")
        chosen = coin(self.p, images.shape[0])
        noisy = (images + self.std * torch.randn_like(images)).clamp(0.0, 1.0)
        return torch.where(_per_image(chosen, 4), noisy, images)

    def extra_repr(self) -> str:
        return f"p={self.p}, std={self.std}"


_SOBEL_FLOOR = 1e-3  # below a quarter of one 8-bit step: no edge worth normalising to 1


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of each image's grayscale (luminance) ``[B, 1, H, W]``, borders
    replicated, divided by the image's own maximum; a maximum below ``_SOBEL_FLOOR`` (a nearly flat image) is
    not amplified: the result stays near 0."""
    gray = images if images.shape[1] == 1 else F.rgb_to_grayscale(images, num_output_channels=1)
    g = torch.nn.functional.pad(gray.float(), (1, 1, 1, 1), mode="replicate")
    # the 3×3 kernels [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and their transpose, separated into a central
    # difference and a [1, 2, 1] smoothing: differences of equal pixels are exactly 0
    dx, dy = g[..., :, 2:] - g[..., :, :-2], g[..., 2:, :] - g[..., :-2, :]
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
    magnitude = (gx.square() + gy.square()).sqrt()
    peak = magnitude.amax(dim=(2, 3), keepdim=True)
    return (magnitude / peak.clamp_min(_SOBEL_FLOOR)).clamp(0.0, 1.0).to(images.dtype)


class Sobel(Transform):
    """Replace each image by its Sobel edge magnitude with probability ``p`` (SimCLR's Sobel filtering).

    The luminance's Sobel gradient magnitude (3×3 kernels, borders replicated), divided by its maximum
    per image so it spans [0, 1] (a flat image stays black), replicated to every channel (torchvision
    has no Sobel filter; the 3×3 kernels are applied here). Default ``p`` 0.5, not 1 (SimCLR's ablation
    filters every image): an edge image has no colour, and captions that name colours (as in ``shapes``)
    need the encoder to see colour in the other half of the images.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_probability(p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "sobel")
        chosen = coin(self.p, images.shape[0])
        if not bool(chosen.any()):
            return images.clone()
        edges = sobel_edges(images).expand_as(images)
        return torch.where(_per_image(chosen, 4), edges, images)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@hookimpl
def register_transforms(register):
    register("hflip", HorizontalFlip)
    register("random-resized-crop", RandomResizedCrop)
    register("color-jitter", ColorJitter)
    register("grayscale", Grayscale)
    register("gaussian-blur", GaussianBlur)
    register("rotate90", Rotate90)
    register("cutout", Cutout)
    register("gaussian-noise", GaussianNoise)
    register("sobel", Sobel)
