"""SimCLR's augmentations as training transforms (plugins/transforms/geometric.py, photometric.py): random resized crop,
colour jitter, grayscale, Gaussian blur, quarter-turn rotation, cutout, Gaussian noise and Sobel edges —
each per image with probability ``p``, moving gaze maps and boxes where it moves pixels, reproducible
under torch's seed, and usable in a run."""

import math

import pytest
import torch

import harness
from harness.cli import main
from harness.components import transform_extras
from harness.data import DatasetInfo
from harness.errors import ConfigError
from harness.runner import run

from harness_plugins.datasets.shapes_scenes import RELATIONS, VOCAB
from harness_plugins.transforms.geometric import RandomResizedCrop, Rotate90, crop_boxes
from harness_plugins.transforms.photometric import (
    ColorJitter, Cutout, GaussianBlur, GaussianNoise, Grayscale, Sobel, blur_kernel_size)

CLASSES = {"random-resized-crop": RandomResizedCrop, "color-jitter": ColorJitter, "grayscale": Grayscale,
           "gaussian-blur": GaussianBlur, "rotate90": Rotate90, "cutout": Cutout,
           "gaussian-noise": GaussianNoise, "sobel": Sobel}
NAMES = list(CLASSES)
DEFAULT_P = {"random-resized-crop": 1.0, "color-jitter": 0.8, "grayscale": 0.2, "gaussian-blur": 0.5,
             "rotate90": 0.5, "cutout": 0.5, "gaussian-noise": 0.5, "sobel": 0.5}
# parameters under which an applied transform visibly changes any random image (a crop of the whole image
# or a blur with σ ≈ 0.1 would leave it as it is)
VISIBLE = {"random-resized-crop": {"scale": (0.5, 0.6)}, "gaussian-blur": {"sigma": (1.0, 2.0)}}
GEOMETRIC = {"random-resized-crop", "rotate90"}  # the ones that move gaze maps and boxes


def _images(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _extras(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    gaze = torch.rand(n, size, size, generator=g).half()
    boxes = torch.tensor([[2, 3, 9, 7], [10, 10, 15, 16], [-1, -1, -1, -1]], dtype=torch.int16)
    return {"gaze": gaze, "obj_bbox": boxes.expand(n, 3, 4).clone()}


def _make(name, **params):
    return CLASSES[name](**{**VISIBLE.get(name, {}), **params})


def _apply(transform, images, **extras):
    """(images, extras after the transform) whatever the transform returns."""
    names = [k for k in transform_extras(transform) if k in extras]
    out = transform(images, **{k: extras[k] for k in names})
    if isinstance(out, tuple):
        images_out, moved = out
        return images_out, {**extras, **moved}
    return out, dict(extras)


def _changed(a, b):
    return (a - b).abs().flatten(1).amax(1) > 1e-6


def _binomial_interval(n, p, level=0.999):
    """The central ``level`` interval of Binomial(n, p), exactly."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail, lo = 0.0, 0
    while tail + pmf[lo] <= (1 - level) / 2:
        tail += pmf[lo]
        lo += 1
    tail, hi = 0.0, n
    while tail + pmf[hi] <= (1 - level) / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi


# --- what every transform promises ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_p_0_is_the_identity_for_images_and_extras(name):
    images, extras = _images(), _extras()
    torch.manual_seed(0)
    out, moved = _apply(_make(name, p=0.0), images, **extras)
    assert torch.equal(out, images) and out.dtype == torch.float32
    for key, value in extras.items():
        assert torch.equal(moved[key], value) and moved[key].dtype == value.dtype


@pytest.mark.parametrize("name", NAMES)
def test_p_1_changes_every_image_keeping_shape_dtype_and_range(name):
    images = _images(n=32)
    images[:8] = (images[:8] > 0.5).float()  # saturated pixels: 0s and 1s, which must stay within [0, 1]
    torch.manual_seed(1)
    out, moved = _apply(_make(name, p=1.0), images, **_extras(n=32))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and torch.isfinite(out).all()
    assert bool(_changed(out, images).all())
    if name in GEOMETRIC:
        assert moved["gaze"].shape == (32, 16, 16) and moved["gaze"].dtype == torch.float16
        assert moved["obj_bbox"].shape == (32, 3, 4) and moved["obj_bbox"].dtype == torch.int16
        assert (moved["obj_bbox"][:, 2] == -1).all()  # padding stays padding


@pytest.mark.parametrize("name", NAMES)
def test_each_image_is_chosen_independently_with_probability_p(name):
    n = 400
    images = _images(n=n, size=12)
    torch.manual_seed(2)
    out, _ = _apply(_make(name, p=0.5), images, **_extras(n=n, size=12))
    count = int(_changed(out, images).sum())
    lo, hi = _binomial_interval(n, 0.5)  # 99.9%: 167..233
    assert lo <= count <= hi, (count, lo, hi)


@pytest.mark.parametrize("name", NAMES)
def test_same_torch_seed_same_output_and_another_seed_another(name):
    images, extras = _images(n=32), _extras(n=32)
    transform = _make(name)  # the default p
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        results.append(_apply(transform, images, **extras))
    (a, ea), (b, eb), (c, _) = results
    assert torch.equal(a, b) and all(torch.equal(ea[k], eb[k]) for k in ea)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_never_changed_in_place(name):
    images, extras = _images(n=16), _extras(n=16)
    images_before = images.clone()
    extras_before = {k: v.clone() for k, v in extras.items()}
    torch.manual_seed(3)
    out, moved = _apply(_make(name, p=1.0), images, **extras)
    assert torch.equal(images, images_before)
    assert all(torch.equal(extras[k], extras_before[k]) for k in extras)
    assert out.data_ptr() != images.data_ptr()
    if name in GEOMETRIC:
        assert all(moved[k].data_ptr() != extras[k].data_ptr() for k in extras)


@pytest.mark.parametrize("name", NAMES)
def test_bad_probabilities_are_refused(name):
    for p in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="p must be a probability"):
            CLASSES[name](p=p)


@pytest.mark.parametrize("name, bad", [
    ("random-resized-crop", {"scale": (0.0, 1.0)}), ("random-resized-crop", {"scale": (0.9, 0.5)}),
    ("random-resized-crop", {"ratio": (1.0,)}), ("color-jitter", {"brightness": -0.1}),
    ("color-jitter", {"hue": 0.6}), ("gaussian-blur", {"sigma": (0.0, 1.0)}),
    ("gaussian-blur", {"kernel_fraction": 0}), ("cutout", {"size": 1.5}), ("cutout", {"value": 2.0}),
    ("gaussian-noise", {"std": -1.0})])
def test_bad_parameters_are_refused_naming_them(name, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CLASSES[name](**bad)


# --- each transform's own effect ----------------------------------------------------------------------


def _scene(size=32, boxes=((8, 10, 20, 18), (26, 26, 30, 30))):
    """A dark image (0.1) with bright (1.0) rectangles at ``boxes`` and the gaze map marking them."""
    mark = torch.zeros(size, size)
    for x0, y0, x1, y1 in boxes:
        mark[y0:y1, x0:x1] = 1.0
    return 0.1 + 0.9 * mark.expand(3, size, size), mark


@pytest.mark.parametrize("scale", [(0.5, 1.0), (0.2, 0.5)])
def test_crop_moves_boxes_and_gaze_with_the_image_content(scale):
    n, size = 60, 32
    boxes = ((8, 10, 20, 18), (26, 26, 30, 30))
    image, mark = _scene(size, boxes)
    images = image.expand(n, 3, size, size).clone()
    bbox = torch.tensor([*boxes, (-1, -1, -1, -1)], dtype=torch.int16).expand(n, 3, 4).clone()
    torch.manual_seed(4)
    out, moved = RandomResizedCrop(p=1.0, scale=scale)(images, gaze=mark.expand(n, size, size).half(),
                                                           obj_bbox=bbox)
    gone = 0
    for i in range(n):
        bright = out[i, 0] > 0.55  # at least half of the object's brightness
        inside = torch.zeros(size, size, dtype=torch.bool)
        for x0, y0, x1, y1 in moved["obj_bbox"][i].tolist():
            if x0 < 0:
                continue
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            inside[y0:y1, x0:x1] = True
            assert bright[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all()  # the box's inner part shows the object
        assert not (bright & ~inside).any()  # no object outside the moved boxes
        gone += int((moved["obj_bbox"][i, :2] < 0).all(-1).sum())
        # the gaze map (the same size) gets exactly the image's crop
        assert torch.allclose(moved["gaze"][i].float(), (out[i, 0] - 0.1) / 0.9, atol=2e-3)
    assert (moved["obj_bbox"][:, 2] == -1).all()
    assert len({tuple(b.tolist()) for b in moved["obj_bbox"][:, 0]}) > n // 3  # a crop of each image's own
    if scale[1] <= 0.5:
        assert gone > 0  # small crops cut out the corner object: its box became padding


def test_crop_moves_a_gaze_map_of_another_size_to_the_same_place():
    n, size = 40, 32
    image, mark = _scene(size, ((4, 6, 12, 12),))
    small = torch.zeros(16, 16)
    small[3:6, 2:6] = 1.0  # the same rectangle at half the resolution
    torch.manual_seed(5)
    out, moved = RandomResizedCrop(p=1.0)(image.expand(n, 3, size, size).clone(),
                                          gaze=small.expand(n, 16, 16).half())
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        w_img = (out[i, 0] - 0.1).clamp_min(0)
        w_map = torch.nn.functional.interpolate(moved["gaze"][i].float()[None, None], size=(size, size),
                                                mode="nearest")[0, 0]
        if w_img.sum() < 1 or w_map.sum() < 0.25:  # the object was cut out
            continue
        for grid in (xs, ys):
            centre_img = float((w_img * grid).sum() / w_img.sum())
            centre_map = float((w_map * grid).sum() / w_map.sum())
            assert abs(centre_img - centre_map) < 1.5


def test_crop_boxes_clip_scale_shift_and_drop_what_the_crop_leaves_out():
    boxes = torch.tensor([[[4, 4, 8, 8], [0, 0, 2, 2], [-1, -1, -1, -1]]], dtype=torch.int16)
    crop = torch.tensor([[2, 2, 16, 16]])  # top, left, h, w, resized to 32 × 32: × 2
    moved = crop_boxes(boxes, crop, 32, 32, torch.tensor([True]))
    assert moved.tolist() == [[[4, 4, 12, 12], [-1, -1, -1, -1], [-1, -1, -1, -1]]]
    assert torch.equal(crop_boxes(boxes, crop, 32, 32, torch.tensor([False])), boxes)


def test_grayscale_gives_torchvisions_luminance_in_every_channel():
    images = _images(n=6)
    torch.manual_seed(0)
    out = Grayscale(p=1.0)(images)
    luminance = 0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    for c in range(3):
        assert torch.allclose(out[:, c], luminance, atol=1e-6)


def test_color_jitter_scales_brightness_by_a_factor_of_each_image_own():
    images = _images(n=64) * 0.5 + 0.1  # no pixel reaches 1 at a factor of 1.4
    torch.manual_seed(0)
    out = ColorJitter(p=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)(images)
    ratio = out / images
    factors = ratio.flatten(1).mean(1)
    assert torch.allclose(ratio, factors[:, None, None, None].expand_as(ratio), atol=1e-5)
    assert float(factors.min()) >= 0.6 and float(factors.max()) <= 1.4
    assert float(factors.std()) > 0.1  # one draw per image, not one for the batch


def test_color_jitter_with_only_hue_keeps_each_pixels_value_and_grey_pixels():
    images = _images(n=16)
    images[:, :, :4] = images[:, :1, :4]  # a grey band
    torch.manual_seed(0)
    out = ColorJitter(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)(images)
    assert torch.allclose(out.amax(1), images.amax(1), atol=1e-5)  # HSV value unchanged
    assert torch.allclose(out[:, :, :4], images[:, :, :4], atol=1e-5)


def test_gaussian_blur_kernel_is_about_a_tenth_of_the_image_and_odd():
    assert [blur_kernel_size(0.1, s, s) for s in (16, 32, 64, 224)] == [3, 3, 7, 23]
    assert blur_kernel_size(0.1, 64, 32) == 3


def test_gaussian_blur_spreads_a_bright_pixel_by_a_per_image_sigma_and_keeps_flat_images():
    images = torch.zeros(32, 3, 64, 64)
    images[:, :, 32, 32] = 1.0
    torch.manual_seed(0)
    out = GaussianBlur(p=1.0, sigma=(0.5, 2.0))(images)
    peaks = out[:, 0, 32, 32]
    assert float(peaks.max()) < 1.0 and float(peaks.std()) > 0.01
    assert torch.allclose(out.sum((2, 3)), torch.ones(32, 3), atol=1e-4)  # mass kept, 7×7 kernel
    assert (out[:, :, 32, 36:] == 0).all()  # nothing beyond the kernel's radius 3
    flat = torch.full((4, 3, 16, 16), 0.3)
    assert torch.allclose(GaussianBlur(p=1.0)(flat), flat, atol=1e-6)


def test_rotate90_turns_image_gaze_and_box_together_by_one_of_three_quarter_turns():
    n, size = 90, 16
    images = torch.zeros(n, 3, size, size)
    images[:, :, 2, 5] = 1.0  # a bright pixel at row 2, column 5
    gaze = torch.zeros(n, size, size, dtype=torch.float16)
    gaze[:, 2, 5] = 1.0
    bbox = torch.tensor([[5, 2, 6, 3], [4, 1, 7, 4], [-1, -1, -1, -1]], dtype=torch.int16).expand(n, 3, 4)
    torch.manual_seed(6)
    out, moved = Rotate90(p=1.0)(images, gaze=gaze, obj_bbox=bbox)
    turns = []
    for i in range(n):
        k = [t for t in (1, 2, 3) if torch.equal(out[i], torch.rot90(images[i], t, dims=(1, 2)))]
        assert len(k) == 1
        turns.append(k[0])
        r, c = divmod(int(out[i, 0].argmax()), size)
        assert moved["gaze"][i, r, c] == 1 and moved["gaze"][i].float().sum() == 1
        x0, y0, x1, y1 = moved["obj_bbox"][i, 0].tolist()
        assert (x0, y0, x1, y1) == (c, r, c + 1, r + 1)  # the pixel's own box follows it
        x0, y0, x1, y1 = moved["obj_bbox"][i, 1].tolist()
        assert x0 < c < x1 - 1 and y0 < r < y1 - 1 and (x1 - x0, y1 - y0) == (3, 3)
    assert (moved["obj_bbox"][:, 2] == -1).all()
    counts = [turns.count(t) for t in (1, 2, 3)]
    assert min(counts) >= 15, counts  # uniform over 90°, 180°, 270° (expected 30 each)


def test_rotate90_refuses_datasets_whose_captions_name_sides():
    shapes = DatasetInfo(name="shapes", image_shape=(3, 32, 32), vocab=list(VOCAB),
                         predicates=list(RELATIONS))
    with pytest.raises(ValueError, match=r"left of.*use hflip") as info:
        harness.create("transform", "rotate90", dataset_info=shapes)
    assert "shapes" in str(info.value) and "captions" in str(info.value)
    with pytest.raises(ValueError, match="predicates"):
        Rotate90(dataset_info=DatasetInfo(name="p", predicates=["on top of", "next to"]))
    with pytest.raises(ValueError, match="vocabulary"):
        Rotate90(dataset_info=DatasetInfo(name="v", vocab=["a", "cat", "under", "table"]))
    plain = DatasetInfo(name="objects", image_shape=(3, 32, 32), vocab=["a", "man", "holding", "cup"],
                        predicates=["holding", "wearing", "next to"])
    transform = harness.create("transform", "rotate90", p=1.0, dataset_info=plain)
    torch.manual_seed(0)
    assert bool(_changed(transform(_images()), _images()).all())
    with pytest.raises(ValueError, match="square"):
        Rotate90(dataset_info=DatasetInfo(name="wide", image_shape=(3, 16, 32)))
    with pytest.raises(ValueError, match="square"):
        Rotate90(p=1.0)(torch.rand(2, 3, 16, 32))


def test_rotate90_on_shapes_is_a_config_error_naming_the_transform(tmp_path):
    config = _shapes_config([{"name": "rotate90"}])
    with pytest.raises(ConfigError, match=r"(?s)transforms\[0\].*hflip"):
        run(config, tmp_path, progress=False)


def test_cutout_blanks_one_square_of_a_quarter_side_per_image():
    images = _images(n=32, size=32) * 0.8 + 0.1  # no pixel is 0 before
    torch.manual_seed(0)
    out = Cutout(p=1.0)(images)
    for i in range(32):
        blank = (out[i] == 0.0).all(0)
        assert int(blank.sum()) == 8 * 8
        rows, cols = blank.any(1).nonzero().flatten(), blank.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 8 and int(rows[-1] - rows[0]) == int(cols[-1] - cols[0]) == 7
        assert torch.equal(out[i][:, ~blank], images[i][:, ~blank])
    corners = {tuple((out[i] == 0).all(0).nonzero()[0].tolist()) for i in range(32)}
    assert len(corners) > 10  # a place of each image's own
    assert (Cutout(p=1.0, value=0.5)(images) == 0.5).all(1).sum().item() == 32 * 64


def test_gaussian_noise_has_the_given_std_and_is_clamped():
    images = torch.full((8, 3, 32, 32), 0.5)
    torch.manual_seed(0)
    noise = GaussianNoise(p=1.0, std=0.05)(images) - 0.5
    assert abs(float(noise.mean())) < 0.005 and abs(float(noise.std()) - 0.05) < 0.005
    extreme = torch.cat([torch.zeros(4, 3, 8, 8), torch.ones(4, 3, 8, 8)])
    out = GaussianNoise(p=1.0, std=0.5)(extreme)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_sobel_marks_a_step_edge_with_1_and_flat_regions_with_0_in_every_channel():
    images = torch.zeros(2, 3, 16, 16)
    images[0, :, :, 8:] = 1.0  # a vertical step between columns 7 and 8
    images[1] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]  # flat
    torch.manual_seed(0)
    out = Sobel(p=1.0)(images)
    expected = torch.zeros(16, 16)
    expected[:, 7:9] = 1.0
    for c in range(3):
        assert torch.allclose(out[0, c], expected, atol=1e-6) and (out[1, c] == 0).all()


# --- registration, the command line and a run -----------------------------------------------------------


def test_every_transform_is_registered_listed_and_shown(capsys):
    available = set(harness.available("transform")["transform"])
    assert set(NAMES) | {"hflip", "gaze"} <= available
    for name in NAMES:
        built = harness.create("transform", name, p=0.3)
        assert isinstance(built, CLASSES[name]) and built.p == 0.3
        assert CLASSES[name]().p == DEFAULT_P[name]
    assert main(["list", "transform"]) == 0
    listing = capsys.readouterr().out
    for name in NAMES:
        line = next(line for line in listing.splitlines() if line.split()[:2] == ["transform", name])
        assert "with probability" in line  # the docstring's first line
    assert main(["show", "transform", "random-resized-crop"]) == 0
    shown = capsys.readouterr().out
    assert "scale" in shown and "default (0.5, 1.0)" in shown and "ratio" in shown and "p: float" in shown
    assert main(["show", "transform", "rotate90"]) == 0
    shown = capsys.readouterr().out
    assert "dataset_info" in shown and "hflip" in shown  # a context parameter; its refusal explained


def _shapes_config(transforms):
    return {"name": "aug", "dataset": {"name": "shapes", "train_size": 64, "val_size": 0, "test_size": 32,
                                       "image_size": 32},
            "seeds": [0],
            "defaults": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                      "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                         "embed_dim": 8, "train": {"epochs": 1, "batch_size": 16, "device": "cpu",
                                                   "threads": 1, "transforms": transforms}},
            "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
            "evaluators": [{"name": "retrieval"}]}


def test_a_shapes_run_with_simclr_transforms_finishes(tmp_path):
    config = _shapes_config([{"name": "random-resized-crop"}, {"name": "color-jitter"}, {"name": "hflip"},
                             {"name": "gaze", "p": 0.5}])
    outcome = run(config, tmp_path, progress=False)
    result = outcome.results[0]
    assert outcome.ok and result.status == "ok", result.error
    assert len(result.history) == 1 and math.isfinite(result.history[0]["loss"])
    assert {("transform", n) for n in ("random-resized-crop", "color-jitter", "hflip", "gaze")} \
        <= {(p.kind, p.name) for p in result.providers}
