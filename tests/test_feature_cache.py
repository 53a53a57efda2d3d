"""The feature cache: a frozen encoder runs once per split for every method and seed that uses it;
a change of its configuration, its weights or the data computes new features; trainable encoders and
transformed training images are never cached."""

import pytest
import torch
from safetensors.torch import load_file

from harness.runner import run

import harness_test_plugin as toy


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    toy.FROZEN_CALLS.clear()
    return tmp_path / "cache" / "features"


@pytest.fixture
def frozen(toy_config):
    toy_config["seeds"] = [0, 1]
    toy_config["defaults"]["encoders"] = {
        "image": {"name": "frozen-projection", "output_dim": 12, "head": {"hidden": [16]}},
        "text": {"name": "bag-of-words"}}  # fixed features too: cached by caption
    toy_config["defaults"]["encoders"]["text"]["head"] = {"hidden": [16]}
    toy_config["methods"] = [{"name": "infonce", "loss": {"name": "infonce"}},
                             {"name": "triplet", "loss": {"name": "triplet"}}]
    toy_config["eval_splits"] = ["val", "test"]
    return toy_config


def images_embedded() -> int:
    return sum(toy.FROZEN_CALLS)


def test_a_frozen_encoder_runs_once_per_split_for_every_method_and_seed(tmp_path, cache, frozen):
    outcome = run(frozen, tmp_path / "cached", progress=False)
    assert outcome.ok and len(outcome.results) == 4
    assert images_embedded() == 64 + 16 + 16  # train, val, test: once, for 2 methods × 2 seeds
    files = sorted(cache.glob("*.safetensors"))
    # the images of 3 splits; the captions of train, which hold every val and test caption of this
    # toy dataset (the same caption has the same features, wherever it is)
    assert len(files) == 4
    assert {tuple(load_file(str(f))) for f in files} == {("cached_features",)}  # tensors only, no pickle
    toy.FROZEN_CALLS.clear()
    frozen["defaults"]["train"]["feature_cache"] = False
    uncached = run(frozen, tmp_path / "uncached", progress=False)
    assert images_embedded() > 4 * 64  # every training step and evaluation runs the encoder
    for a, b in zip(outcome.results, uncached.results):
        assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-5)
        assert a.metrics == pytest.approx(b.metrics, rel=1e-5, abs=1e-6)
    # a new process, another output folder: read from disk, not computed again
    toy.FROZEN_CALLS.clear()
    del frozen["defaults"]["train"]["feature_cache"]
    again = run(frozen, tmp_path / "again", progress=False)
    assert images_embedded() == 0 and again.ok
    assert [r.metrics for r in again.results] == [r.metrics for r in outcome.results]


def test_new_weights_configuration_or_data_compute_new_features(tmp_path, cache, frozen):
    frozen["seeds"], frozen["methods"] = [0], frozen["methods"][:1]
    weights = tmp_path / "projection.pt"
    torch.save(torch.randn(3 * 8 * 8, 12, generator=torch.Generator().manual_seed(1)), weights)
    frozen["defaults"]["encoders"]["image"]["weights"] = str(weights)
    runs = iter(range(100))

    def embedded() -> int:
        toy.FROZEN_CALLS.clear()
        assert run(frozen, tmp_path / f"run{next(runs)}", progress=False).ok
        return images_embedded()

    assert embedded() == 96
    assert embedded() == 0  # same everything: reused
    torch.save(torch.randn(3 * 8 * 8, 12, generator=torch.Generator().manual_seed(2)), weights)
    assert embedded() == 96  # same file name, new weights
    frozen["defaults"]["encoders"]["image"]["output_dim"] = 10  # unused with weights, but another config
    assert embedded() == 96
    frozen["dataset"]["size"] = 80  # other data
    assert embedded() == 80 + 20 + 20
    for f in cache.glob("*.safetensors"):  # damaged files are computed again, not trusted
        f.write_bytes(b"not safetensors")
    assert embedded() == 120


def test_trainable_encoders_are_not_cached_and_transformed_training_images_are_encoded(tmp_path, cache,
                                                                                         frozen):
    frozen["seeds"], frozen["methods"] = [0], frozen["methods"][:1]
    frozen["defaults"]["train"]["transforms"] = [{"name": "counting", "noise": 0.05}]
    assert run(frozen, tmp_path / "flips", progress=False).ok
    steps = 2 * (64 // 16)
    assert images_embedded() == 16 * steps + 16 + 16  # training sees transformed images; eval is cached
    toy.FROZEN_CALLS.clear()
    frozen["defaults"]["encoders"]["image"] = {"name": "small-cnn", "channels": [8, 8]}  # trainable
    frozen["defaults"]["train"]["transforms"] = []
    assert run(frozen, tmp_path / "trainable", progress=False).ok
    # from the first run only: the captions, and the images of val and test (train was transformed)
    assert len(list(cache.glob("*.safetensors"))) == 1 + 2


def test_a_numeric_second_view_is_cached_like_images(tmp_path, cache):
    identity = {"name": "identity"}
    config = {"name": "digits", "dataset": {"name": "noisy-digits", "size": 8, "border": 1, "seed": 0},
              "seeds": [0], "defaults": {"encoders": {"image": identity, "text": identity}},
              "methods": [{"name": "linear-cca", "estimator": {"name": "linear-cca", "k": 4}}],
              "evaluators": [{"name": "canonical-correlation", "k": 4}]}
    cached = run(config, tmp_path / "cached", progress=False).results[0]
    assert cached.status == "ok" and len(list(cache.glob("*.safetensors"))) == 4  # 2 views × train, test
    config["defaults"]["train"] = {"feature_cache": False}
    plain = run(config, tmp_path / "plain", progress=False).results[0]
    assert cached.metrics == pytest.approx(plain.metrics, rel=1e-6)
