"""Gaze regularization (Podguzova & Nguyen 2020, eq. 2): training images multiplied by their attention
maps, so the encoder sees what people looked at."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.components import Transform

from .common import check_probability


def normalized_maps(gaze: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Attention maps ``[B, h, w]`` (or ``[B, 1, h, w]``) resized bilinearly to ``height × width`` and
    divided by their own maximum: ``[B, 1, H, W]`` in [0, 1] (a map that is 0 everywhere stays 0)."""
    maps = gaze.float()
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"gaze maps must be [B, h, w] or [B, 1, h, w], got {tuple(gaze.shape)}")
    if maps.shape[-2:] != (height, width):
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    peak = maps.amax(dim=(2, 3), keepdim=True)
    return maps / peak.clamp_min(torch.finfo(maps.dtype).tiny)


class GazeMask(Transform):
    """Multiply each training image, every channel, by its gaze map with probability ``p`` (eq. 2).

    g'_c(x) = M(x) · g_c(x) for every channel c, where M(x) is the image's attention map resized
    bilinearly to H×W and divided by its maximum, so it lies in [0, 1]: unattended regions go dark (the
    paper's Figure 4), which is why the product is taken on the image in [0, 1], before normalisation.
    Each image is masked independently with probability ``p``: 0 leaves the batch unchanged, 1 masks
    every image. Needs the dataset's per-image ``gaze`` maps (``shapes`` has them; SALICON for COCO).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_probability(p)

    def forward(self, images: torch.Tensor, gaze: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(images.shape[0]) < self.p  # drawn even for p = 0 or 1: a fixed RNG use
        if not bool(chosen.any()):
            return images
        out = images.clone()
        maps = normalized_maps(gaze[chosen.to(gaze.device)], images.shape[-2], images.shape[-1])
        out[chosen] = images[chosen] * maps.to(images.dtype)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


@hookimpl
def register_transforms(register):
    register("gaze", GazeMask)
