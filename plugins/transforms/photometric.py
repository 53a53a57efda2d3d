"""Photometric training transforms: ``color-jitter``, ``grayscale``, ``gaussian-blur``, ``cutout``,
``gaussian-noise`` and ``sobel`` (SimCLR's colour drop and jitter, blur, cutout, noise and Sobel
filtering, from the lecture), built on ``torchvision.transforms.v2``.

Each decides per image, independently, whether (and how) to apply itself, drawing from torch's global
generator (which the runner seeds per batch), and returns new tensors (float, in [0, 1], the input's
shape), never changing its inputs; none moves pixels, so gaze maps and boxes stay as they are. A cutout
can hide an object a caption mentions, and colour jitter can move a colour toward a neighbour.
"""

from __future__ import annotations

from typing import Sequence

import torch

from harness import hookimpl
from harness.components import Transform

from .common import check_images, check_number, check_pair, check_probability, coin, per_image, v2_functional

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
        self.brightness = check_number(brightness, "brightness")
        self.contrast = check_number(contrast, "contrast")
        self.saturation = check_number(saturation, "saturation")
        self.hue = check_number(hue, "hue", 0.0, 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "color-jitter")
        B = images.shape[0]
        chosen = coin(self.p, B)
        order = torch.rand(B, 4).argsort(dim=1)
        factors = torch.stack([torch.empty(B).uniform_(max(0.0, 1 - x), 1 + x)
                               for x in (self.brightness, self.contrast, self.saturation)], 1)
        shifts = torch.empty(B).uniform_(-self.hue, self.hue)
        F = v2_functional()
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
        check_images(images, "grayscale")
        chosen = coin(self.p, images.shape[0])
        if images.shape[1] == 1 or not bool(chosen.any()):
            return images.clone()
        F = v2_functional()
        gray = F.rgb_to_grayscale(images, num_output_channels=images.shape[1])
        return torch.where(per_image(chosen, 4), gray, images)

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
        self.kernel_fraction = check_number(kernel_fraction, "kernel_fraction", 0.0, 1.0, closed_low=False)
        self.sigma = check_pair(sigma, "sigma")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "gaussian-blur")
        B, _, H, W = images.shape
        chosen = coin(self.p, B)
        sigmas = torch.empty(B).uniform_(*self.sigma)
        k = blur_kernel_size(self.kernel_fraction, H, W)
        out = images.clone()
        F = v2_functional()
        for i in chosen.nonzero().flatten().tolist():
            s = float(sigmas[i])
            out[i] = F.gaussian_blur(images[i], [k, k], [s, s]).clamp_(0.0, 1.0)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, kernel_fraction={self.kernel_fraction}, sigma={self.sigma}"


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
        self.size = check_number(size, "size", 0.0, 1.0, closed_low=False)
        self.value = check_number(value, "value", 0.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "cutout")
        B, C, H, W = images.shape
        h, w = max(1, int(round(self.size * H))), max(1, int(round(self.size * W)))
        chosen = coin(self.p, B)
        tops = torch.randint(0, H - h + 1, (B,))
        lefts = torch.randint(0, W - w + 1, (B,))
        fill = torch.full((C, h, w), self.value, dtype=images.dtype)
        out = images.clone()
        F = v2_functional()
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
        self.std = check_number(std, "std")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "gaussian-noise")
        chosen = coin(self.p, images.shape[0])
        noisy = (images + self.std * torch.randn_like(images)).clamp(0.0, 1.0)
        return torch.where(per_image(chosen, 4), noisy, images)

    def extra_repr(self) -> str:
        return f"p={self.p}, std={self.std}"


_SOBEL_FLOOR = 1e-3  # below a quarter of one 8-bit step: no edge worth normalising to 1


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of each image's grayscale (luminance) ``[B, 1, H, W]``, borders
    replicated, divided by the image's own maximum; a maximum below ``_SOBEL_FLOOR`` (a nearly flat image) is
    not amplified: the result stays near 0."""
    F = v2_functional()
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
        check_images(images, "sobel")
        chosen = coin(self.p, images.shape[0])
        if not bool(chosen.any()):
            return images.clone()
        edges = sobel_edges(images).expand_as(images)
        return torch.where(per_image(chosen, 4), edges, images)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@hookimpl
def register_transforms(register):
    register("color-jitter", ColorJitter)
    register("grayscale", Grayscale)
    register("gaussian-blur", GaussianBlur)
    register("cutout", Cutout)
    register("gaussian-noise", GaussianNoise)
    register("sobel", Sobel)
