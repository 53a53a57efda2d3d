"""``noisy-digits``: a two-view dataset in the style of Noisy MNIST (Wang et al. 2015), from real digits.

Built from scikit-learn's bundled handwritten digits (1,797 scans of 8×8 pixels, values 0–16; shipped
with scikit-learn, so nothing is downloaded):

* every digit is scaled to [0, 1], upsampled bilinearly to ``size − 2·border`` pixels a side and
  padded with a zero ``border`` to ``size × size`` (the margin keeps most strokes inside the frame when
  the digit is rotated, like MNIST's 20-pixel digits in 28-pixel frames);
* view 1 (``Split.images``) is the digit rotated by an angle drawn uniformly from
  [−max_angle, max_angle] radians (counter-clockwise, about the centre, bilinear, zeros outside);
* view 2 (``Split.texts``) is a *different* scan of the same class, drawn from the same split, with
  independent uniform noise U[0, noise] added to every pixel and the result clipped to [0, 1].

The scans are partitioned, stratified by class, into train/val/test pools, so no scan (in either
view) appears in two splits. Each split holds ``repeats`` samples per scan of its pool, each with its
own angle, partner and noise. Both views are float32 arrays [N, size²] of row-major pixels (reshape to
[N, 1, size, size] for a CNN); ``text_to_image`` is arange(N). Everything is a deterministic function of
the parameters (``seed`` included). Labels (``extras["labels"]``) are for evaluation only; extras also
keep ``angles`` (radians), ``base_index`` and ``partner_index`` (rows of ``load_digits()``).
"""

from __future__ import annotations

import math

import numpy as np

from harness import hookimpl
from harness.data import Dataset, DatasetInfo, Split

_SPLITS = ("train", "val", "test")


def _upsampled_digits(size: int, border: int) -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's digits as float64 [1797, size, size] in [0, 1], and their labels."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    inner = size - 2 * border
    images = digits.images / 16.0
    if inner != images.shape[1]:
        # order=1: bilinear, so upsampling never overshoots [0, 1] the way a cubic spline would.
        images = ndimage.zoom(images, (1, inner / images.shape[1], inner / images.shape[2]), order=1,
                              grid_mode=True, mode="nearest")
    out = np.zeros((len(images), size, size))
    out[:, border:border + inner, border:border + inner] = np.clip(images, 0.0, 1.0)
    return out, digits.target.astype(np.int64)


def _stratified_pools(labels: np.ndarray, fractions: tuple[float, float], rng: np.random.Generator):
    """Partition indices into train/val/test, per class, with val and test taking ``fractions``."""
    pools = {name: [] for name in _SPLITS}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fractions[0] * len(members)))
        n_test = int(round(fractions[1] * len(members)))
        pools["test"].append(members[:n_test])
        pools["val"].append(members[n_test:n_test + n_val])
        pools["train"].append(members[n_test + n_val:])
    return {name: np.sort(np.concatenate(parts)) for name, parts in pools.items()}


class NoisyDigits(Dataset):
    """Two views of real handwritten digits: rotated (view 1) and another same-class scan plus noise (view 2).

    Parameters
    ----------
    size : side of the square images (d = size²); 8 keeps the original resolution.
    border : zero margin, in output pixels, around the upsampled digit.
    max_angle : view-1 rotation range in radians (default π/4, as in Wang et al. 2015).
    noise : view-2 noise amplitude; U[0, noise] is added before clipping to [0, 1] (Wang et al.: 1).
    val_fraction, test_fraction : share of each class's scans held out for validation and test.
    repeats : rotated/noisy samples generated per scan of each split.
    seed : seeds the partition, angles, partners and noise.
    """

    def __init__(self, size: int = 16, border: int = 2, max_angle: float = math.pi / 4, noise: float = 1.0,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, repeats: int = 1, seed: int = 0):
        if not (isinstance(size, int) and isinstance(border, int) and border >= 0 and size - 2 * border >= 2):
            raise ValueError(f"need integers size - 2*border >= 2, got size={size}, border={border}")
        if not (0 <= max_angle <= math.pi):
            raise ValueError(f"max_angle must be in [0, pi] radians, got {max_angle}")
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be > 0 with a sum below 1, got "
                             f"{val_fraction} and {test_fraction}")
        if not (isinstance(repeats, int) and repeats >= 1):
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        self.size, self.border, self.max_angle, self.noise = size, border, float(max_angle), float(noise)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.repeats, self.seed = repeats, seed
        self.image_hw = (size, size)
        d = size * size
        self.info = DatasetInfo(name="noisy-digits", image_shape=(d,), text_kind="vector", text_dim=d,
                                class_names=[str(i) for i in range(10)])
        self._splits: dict[str, Split] | None = None
        self._base: np.ndarray | None = None

    def base_images(self) -> np.ndarray:
        """The clean upsampled scans, float64 [1797, size, size]; ``base_index`` rows index into it."""
        if self._base is None:
            self._base, self._labels = _upsampled_digits(self.size, self.border)
        return self._base

    def split(self, name: str) -> Split:
        if name not in _SPLITS:
            raise ValueError(f"noisy-digits has splits {_SPLITS}, not {name!r}")
        if self._splits is None:
            self._splits = self._build()
        return self._splits[name]

    def _build(self) -> dict[str, Split]:
        from scipy import ndimage

        base = self.base_images()
        labels = self._labels
        # Independent streams for the partition and each split: one split's draws never shift another's.
        pool_seed, *split_seeds = np.random.SeedSequence(self.seed).spawn(1 + len(_SPLITS))
        pools = _stratified_pools(labels, (self.val_fraction, self.test_fraction),
                                  np.random.default_rng(pool_seed))
        d = self.size * self.size
        splits = {}
        for name, ss in zip(_SPLITS, split_seeds):
            rng = np.random.default_rng(ss)
            pool = pools[name]
            index = np.tile(pool, self.repeats)
            n = len(index)
            angles = rng.uniform(-self.max_angle, self.max_angle, size=n)
            # A partner of the same class from this split's pool, never the scan itself: draw among the
            # class's other members by skipping over the scan's own position.
            partner = np.empty(n, dtype=np.int64)
            pool_labels = labels[pool]
            for c in np.unique(pool_labels):
                members = pool[pool_labels == c]
                rows = np.flatnonzero(labels[index] == c)
                if len(members) < 2:
                    raise ValueError(f"noisy-digits: split {name!r} has a single scan of class {c}; "
                                     "no different same-class partner exists (raise its fraction)")
                own = np.searchsorted(members, index[rows])
                pick = rng.integers(0, len(members) - 1, size=len(rows))
                partner[rows] = members[pick + (pick >= own)]
            view1 = np.empty((n, self.size, self.size))
            for i, (b, a) in enumerate(zip(index, angles)):
                # ndimage.rotate takes degrees; reshape=False keeps the frame, order=1 is bilinear.
                view1[i] = ndimage.rotate(base[b], math.degrees(a), reshape=False, order=1,
                                          mode="constant", cval=0.0)
            view2 = base[partner] + rng.uniform(0.0, self.noise, size=(n, self.size, self.size))
            splits[name] = Split(
                name=name,
                images=np.clip(view1, 0.0, 1.0).reshape(n, d).astype(np.float32),
                texts=np.clip(view2, 0.0, 1.0).reshape(n, d).astype(np.float32),
                text_to_image=np.arange(n),
                extras={"labels": labels[index], "angles": angles, "base_index": index,
                        "partner_index": partner},
            )
        return splits


@hookimpl
def register_datasets(register):
    register("noisy-digits", NoisyDigits)

