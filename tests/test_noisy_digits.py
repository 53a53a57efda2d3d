"""noisy-digits: determinism, rotation, same-class pairing, noise and clipping, disjoint splits."""

from __future__ import annotations

import math

import numpy as np
import pluggy
import pytest
from scipy import ndimage
from sklearn.datasets import load_digits

from harness import hookspecs
from harness.data import Dataset
from harness_plugins.datasets import noisy_digits as plugin
from harness_plugins.datasets.noisy_digits import NoisyDigits

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images / 16.0, d.target


@pytest.fixture(scope="module")
def dataset():
    ds = NoisyDigits()
    for name in SPLITS:
        ds.split(name)
    return ds


def test_registered_through_the_hook():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    found = {}
    pm.hook.register_datasets(register=lambda name, factory: found.__setitem__(name, factory))
    assert found == {"noisy-digits": NoisyDigits}
    assert issubclass(NoisyDigits, Dataset)


def test_shapes_dtypes_and_info(dataset):
    d = 16 * 16
    assert dataset.info.name == "noisy-digits"
    assert dataset.info.image_shape == (d,) and dataset.info.text_kind == "vector"
    assert dataset.info.text_dim == d and dataset.image_hw == (16, 16)
    assert dataset.info.class_names == [str(i) for i in range(10)]
    for name in SPLITS:
        s = dataset.split(name)
        assert s.name == name
        assert s.images.dtype == np.float32 and s.images.shape == (len(s), d)
        assert s.texts.dtype == np.float32 and s.texts.shape == (len(s), d)
        np.testing.assert_array_equal(s.text_to_image, np.arange(len(s)))
        for key in ("labels", "angles", "base_index", "partner_index"):
            assert len(s.extras[key]) == len(s)
        assert s.images.min() >= 0 and s.images.max() <= 1


def test_deterministic_per_seed(dataset):
    again = NoisyDigits()
    other = NoisyDigits(seed=1)
    for name in SPLITS:
        a, b = dataset.split(name), again.split(name)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.texts, b.texts)
        for key in a.extras:
            np.testing.assert_array_equal(a.extras[key], b.extras[key])
        assert a.fingerprint() == b.fingerprint()
        assert not np.array_equal(a.extras["base_index"], other.split(name).extras["base_index"])
    assert dataset.fingerprint() == again.fingerprint() != other.fingerprint()


def test_splits_are_disjoint_stratified_and_cover_every_scan(dataset, digits):
    _, target = digits
    bases = {name: set(dataset.split(name).extras["base_index"].tolist()) for name in SPLITS}
    assert not bases["train"] & bases["val"] and not bases["train"] & bases["test"]
    assert not bases["val"] & bases["test"]
    assert set.union(*bases.values()) == set(range(len(target)))
    sizes = {name: len(dataset.split(name)) for name in SPLITS}
    assert sizes["test"] == pytest.approx(0.2 * len(target), abs=10)
    assert sizes["val"] == pytest.approx(0.1 * len(target), abs=10)
    for name in SPLITS:  # every class in every split, in proportion
        counts = np.bincount(dataset.split(name).labels, minlength=10)
        assert counts.min() >= 0.8 * counts.max()
        # the view-2 partner comes from the same split, so no scan leaks across splits
        assert set(dataset.split(name).extras["partner_index"].tolist()) <= bases[name]


def test_view_two_is_a_different_scan_of_the_same_class(dataset, digits):
    _, target = digits
    for name in SPLITS:
        s = dataset.split(name)
        np.testing.assert_array_equal(s.labels, target[s.extras["base_index"]])
        np.testing.assert_array_equal(target[s.extras["partner_index"]], s.labels)
        assert np.all(s.extras["partner_index"] != s.extras["base_index"])
    # partners are spread over the class, not one fixed scan per class
    train = dataset.split("train")
    assert len(np.unique(train.extras["partner_index"])) > 0.5 * len(train)


def test_base_images_are_the_real_digits(digits):
    images, _ = digits
    plain = NoisyDigits(size=8, border=0)
    np.testing.assert_allclose(plain.base_images(), images)
    up = NoisyDigits(size=16, border=2).base_images()
    assert up.shape == (len(images), 16, 16)
    assert np.all(up[:, :2, :] == 0) and np.all(up[:, :, -2:] == 0)  # the zero border
    # the 12×12 upsampled digit, block-averaged back to ~8×8 resolution, matches the original's layout
    inner = up[:, 2:14, 2:14]
    down = ndimage.zoom(inner, (1, 8 / 12, 8 / 12), order=1)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(down[:50], images[:50])]
    assert min(corr) > 0.85


def test_rotation_angles_and_the_rotated_view(dataset):
    s = dataset.split("train")
    angles = s.extras["angles"]
    assert np.all(np.abs(angles) <= math.pi / 4)
    assert angles.min() < -0.7 and angles.max() > 0.7  # the whole range is used
    base = dataset.base_images()
    for i in range(0, len(s), 97):  # view 1 is the scan rotated by the recorded angle
        expected = ndimage.rotate(base[s.extras["base_index"][i]], math.degrees(angles[i]), reshape=False,
                                  order=1, mode="constant", cval=0.0)
        np.testing.assert_allclose(s.images[i].reshape(16, 16), np.clip(expected, 0, 1), atol=1e-6)
    # without rotation view 1 is exactly the clean scan
    flat = NoisyDigits(max_angle=0.0).split("val")
    np.testing.assert_allclose(flat.images, base[flat.extras["base_index"]].reshape(len(flat), -1), atol=1e-7)
    # rotation moves pixels: rotated images differ from the clean scans more for larger angles
    change = np.abs(s.images - base[s.extras["base_index"]].reshape(len(s), -1)).mean(1)
    assert np.corrcoef(np.abs(angles), change)[0, 1] > 0.5


def test_noise_is_uniform_and_clipped(dataset):
    s = dataset.split("train")
    clean = dataset.base_images()[s.extras["partner_index"]].reshape(len(s), -1)
    noisy = s.texts.astype(np.float64)
    assert noisy.min() >= 0 and noisy.max() <= 1
    added = noisy - clean
    assert added.min() >= -1e-6 and added.max() <= 1 + 1e-6  # U[0, 1] noise, never negative
    background = noisy[clean == 0]  # unclipped there: plain U[0, 1]
    assert background.mean() == pytest.approx(0.5, abs=0.01)
    assert background.std() == pytest.approx(1 / math.sqrt(12), abs=0.01)
    assert np.mean(noisy[clean > 0.5] == 1.0) > 0.3  # bright strokes plus noise saturate at 1
    quiet = NoisyDigits(noise=0.0).split("train")
    np.testing.assert_allclose(quiet.texts, dataset.base_images()[quiet.extras["partner_index"]]
                               .reshape(len(quiet), -1), atol=1e-7)


def test_repeats_draw_fresh_angles_partners_and_noise():
    one, two = NoisyDigits(), NoisyDigits(repeats=2)
    a, b = one.split("test"), two.split("test")
    assert len(b) == 2 * len(a)
    n = len(a)
    np.testing.assert_array_equal(b.extras["base_index"][:n], b.extras["base_index"][n:])
    assert not np.allclose(b.extras["angles"][:n], b.extras["angles"][n:])
    assert np.mean(b.extras["partner_index"][:n] != b.extras["partner_index"][n:]) > 0.8


def test_bad_parameters_and_split_names():
    with pytest.raises(ValueError, match="size"):
        NoisyDigits(size=4, border=2)
    with pytest.raises(ValueError, match="fraction"):
        NoisyDigits(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="repeats"):
        NoisyDigits(repeats=0)
    with pytest.raises(ValueError, match="splits"):
        NoisyDigits().split("validation")


def test_views_share_information_linear_cca_recovers(dataset):
    from harness_plugins.cca import LinearCCA

    train, test = dataset.split("train"), dataset.split("test")
    model = LinearCCA(k=10, reg=1e-2).fit(train.images, train.texts)
    held_out = model.correlations(test.images, test.texts)
    assert held_out.sum() > 2.0 and held_out[0] > 0.5
