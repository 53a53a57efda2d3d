"""What the training transforms share: per-image coin flips and parameter checks with clear errors.

Every transform draws a coin per image and parameters per image from torch's global generator (most draw
them for every image, chosen or not; the crop only for the chosen ones, as torchvision's sampler retries a
variable number of times), and applies torchvision's ``v2.functional`` operation to each chosen image with
that image's own parameters (a v2 transform called on a batch would draw once for the whole batch).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def v2_functional():
    """``torchvision.transforms.v2.functional``, imported on first use: importing torchvision takes about
    a second (it loads ``torch._dynamo``), which every ``harness`` command would otherwise pay when the
    plugins load, transforms used or not."""
    from torchvision.transforms.v2 import functional

    return functional


def check_probability(p: float, name: str = "p") -> float:
    """``p`` as a float in [0, 1], or a ValueError naming the parameter."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def coin(p: float, n: int) -> torch.Tensor:
    """``n`` independent draws of a coin that shows True with probability ``p`` (bool ``[n]``)."""
    return torch.rand(n) < p


def check_pair(value: Sequence[float], name: str, low: float = 0.0, high: float = math.inf,
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


def check_number(value: float, name: str, low: float = 0.0, high: float = math.inf,
            closed_low: bool = True) -> float:
    """``value`` as a float in [``low``, ``high``] (``(low, high]`` unless ``closed_low``), or a
    ValueError naming the parameter."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= low if closed_low else value > low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be a number in {'[' if closed_low else '('}{low}, {high}], "
                         f"got {value!r}")
    return float(value)


def check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{name} needs a float image batch [B, C, H, W] in [0, 1], got "
                         f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")


def per_image(mask: torch.Tensor, dims: int) -> torch.Tensor:
    """A bool ``[B]`` mask shaped to broadcast over a ``dims``-dimensional batch."""
    return mask.view(-1, *([1] * (dims - 1)))
