"""Training transforms: the gaze mask (Podguzova & Nguyen 2020, eq. 2), the horizontal flip that moves
gaze maps, boxes, relations and captions with the image, and how the runner applies transforms (training
batches only, seeded, before ``prepare``)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness
from harness.components import apply_transforms
from harness.data import DatasetInfo
from harness.errors import ConfigError
from harness.runner import run

from harness_plugins.transforms.geometric import HorizontalFlip, swap_sides
from harness_plugins.transforms.gaze import GazeMask, normalized_maps

import harness_test_plugin as toy


def _batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    gaze = torch.rand(n, size // 2, size // 2, generator=g).half()  # another size than the images
    return images, gaze


def test_gaze_with_p_1_multiplies_every_channel_by_the_resized_max_normalised_map():
    images, gaze = _batch()
    out = GazeMask(p=1.0)(images, gaze)
    maps = F.interpolate(gaze.float()[:, None], size=(16, 16), mode="bilinear", align_corners=False)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True)
    assert torch.equal(out, images * maps)
    same_size = torch.rand(8, 16, 16)
    assert torch.equal(GazeMask(p=1.0)(images, same_size),
                       images * (same_size / same_size.amax(dim=(1, 2), keepdim=True))[:, None])


def test_gaze_maps_are_resized_bilinearly_and_lie_in_0_1_with_max_1():
    gaze = torch.zeros(2, 4, 4)
    gaze[0, 1, 2] = 0.3  # a single peak: after normalisation exactly 1 at its location
    gaze[1] = 0.0  # an empty map stays 0 (masks the whole image) instead of dividing by zero
    maps = normalized_maps(gaze, 4, 4)
    assert maps.shape == (2, 1, 4, 4) and maps[0, 0, 1, 2] == 1.0 and maps[0].sum() == 1.0
    assert torch.count_nonzero(maps[1]) == 0
    big = normalized_maps(gaze, 8, 8)
    assert big.shape == (2, 1, 8, 8) and float(big[0].max()) == pytest.approx(1.0)
    assert float(big.min()) >= 0.0 and float(big.max()) <= 1.0


def test_gaze_with_p_0_is_the_identity():
    images, gaze = _batch()
    assert torch.equal(GazeMask(p=0.0)(images, gaze), images)


def test_gaze_masks_each_image_independently_with_probability_p():
    n = 2000
    images = torch.ones(n, 1, 4, 4)
    gaze = torch.zeros(n, 4, 4)
    gaze[:, 0, 0] = 1.0  # masked images are 0 everywhere but one pixel
    torch.manual_seed(0)
    out = GazeMask(p=0.5)(images, gaze)
    masked = int((out[:, 0, 1, 1] == 0).sum())
    half_width = 3.29 * math.sqrt(n * 0.25)  # 99.9 % binomial interval around n/2
    assert abs(masked - n / 2) < half_width
    assert torch.equal(out[out[:, 0, 1, 1] == 0][:, 0, 0, 0], torch.ones(masked))  # the gazed pixel kept


def test_gaze_rejects_bad_probabilities():
    for p in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="p must be a probability"):
            GazeMask(p=p)


def test_hflip_then_gaze_masks_the_flipped_location():
    images = torch.ones(4, 3, 8, 8)
    gaze = torch.zeros(4, 8, 8)
    gaze[:, :, :2] = 1.0  # people looked at the two left columns
    flip, mask = HorizontalFlip(p=1.0), GazeMask(p=1.0)
    out, extras = apply_transforms([flip, mask], images, {"gaze": gaze})
    assert torch.equal(extras["gaze"], gaze.flip(-1))
    assert torch.count_nonzero(out[..., :6]) == 0  # the image is dark where the flipped map is 0 …
    assert torch.equal(out[..., 6:], torch.ones(4, 3, 8, 2))  # … and kept on the right


def test_hflip_moves_boxes_swaps_side_relations_and_caption_words():
    info = DatasetInfo(name="s", predicates=["left of", "right of", "above", "below"])
    images = torch.rand(2, 3, 10, 10)
    boxes = torch.tensor([[[1, 2, 4, 5], [-1, -1, -1, -1]]] * 2, dtype=torch.int16)
    relations = torch.tensor([[[-1, 0], [1, -1]], [[-1, 2], [3, -1]]], dtype=torch.int8)
    captions = ["a red circle to the left of a blue square", "a small square above a circle"]
    out, moved = HorizontalFlip(p=1.0, dataset_info=info)(images, obj_bbox=boxes, relations=relations,
                                                            captions=captions)
    assert torch.equal(out, images.flip(-1))
    assert moved["obj_bbox"][0, 0].tolist() == [6, 2, 9, 5] and moved["obj_bbox"][0, 1].tolist() == [-1] * 4
    assert moved["relations"].tolist() == [[[-1, 1], [0, -1]], [[-1, 2], [3, -1]]]
    assert moved["captions"] == ["a red circle to the right of a blue square", captions[1]]
    assert swap_sides("Right and left; leftover") == "Left and right; leftover"
    unflipped = HorizontalFlip(p=0.0, dataset_info=info)(images, obj_bbox=boxes, relations=relations,
                                                         captions=captions)
    assert torch.equal(unflipped[0], images) and unflipped[1]["captions"] == captions
    assert torch.equal(unflipped[1]["relations"], relations)


def test_transforms_are_reproducible_under_the_torch_seed():
    images, gaze = _batch(n=64)
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outs.append(apply_transforms([HorizontalFlip(), GazeMask()], images, {"gaze": gaze})[0])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_transforms_are_registered_and_listed():
    assert {"gaze", "hflip"} <= set(harness.available("transform")["transform"])
    assert harness.create("transform", "gaze", p=0.3).p == 0.3


# --- in the runner ---------------------------------------------------------------------------------


def _shapes(epochs=2, **train):
    return {"name": "tf", "dataset": {"name": "shapes", "train_size": 64, "val_size": 16, "test_size": 32,
                                      "image_size": 32},
            "seeds": [0],
            "defaults": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                      "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                         "embed_dim": 8, "train": {"epochs": epochs, "batch_size": 16, **train}},
            "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
            "evaluators": [{"name": "retrieval"}]}


def test_transforms_run_at_every_training_step_and_never_at_evaluation(tmp_path, toy_config):
    toy.TRANSFORM_CALLS.clear()
    toy_config["eval_splits"] = ["val", "test"]
    toy_config["defaults"]["train"].update(transforms=[{"name": "counting"}], val_every=1, epochs=3)
    outcome = run(toy_config, tmp_path, progress=False)
    assert outcome.ok, [r.error for r in outcome.results]
    steps = 3 * (64 // 16)  # epochs × steps per epoch: none for the val curves or the final scores
    assert toy.TRANSFORM_CALLS == [(True, 16)] * steps
    assert ("transform", "counting") in {(p.kind, p.name) for p in outcome.results[0].providers}


def test_an_identity_transform_changes_nothing_else_of_the_run(tmp_path, toy_config):
    plain = run(toy_config, tmp_path / "a", progress=False).results[0]
    toy_config["defaults"]["train"]["transforms"] = [{"name": "counting", "noise": 0.0}]
    same = run(toy_config, tmp_path / "b", progress=False).results[0]
    # its random draws come from a stream of their own: batches, captions and dropout are unchanged
    assert [h["loss"] for h in same.history] == [h["loss"] for h in plain.history]
    assert same.metrics == plain.metrics


def test_a_run_with_random_transforms_is_reproducible(tmp_path):
    config = _shapes(transforms=[{"name": "hflip"}, {"name": "gaze", "p": 0.5}])
    first = run(config, tmp_path / "a", progress=False).results[0]
    second = run(config, tmp_path / "b", progress=False).results[0]
    assert first.status == "ok", first.error
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert first.metrics == second.metrics
    config["defaults"]["train"]["transforms"] = []
    plain = run(config, tmp_path / "c", progress=False).results[0]  # same seed: only transforms differ
    assert [h["loss"] for h in plain.history] != [h["loss"] for h in first.history]


def test_a_transform_needing_gaze_on_a_dataset_without_gaze_is_a_config_error(tmp_path, toy_config):
    toy_config["methods"][0]["train"] = {"transforms": [{"name": "gaze"}]}
    with pytest.raises(ConfigError, match=r"needs the per-image gaze") as info:
        run(toy_config, tmp_path, progress=False)
    assert info.value.field == "methods[infonce].train.transforms[0]"
    toy_config["methods"][0]["train"] = {"transforms": [{"name": "gaze", "p": 2}]}
    with pytest.raises(ConfigError, match="p must be a probability") as info:
        run(toy_config, tmp_path, progress=False)
    assert info.value.field == "methods[infonce].train.transforms[0]"
    toy_config["methods"][0]["train"] = {"transforms": [{"name": "gaz"}]}
    with pytest.raises(ConfigError, match="did you mean 'gaze'"):
        run(toy_config, tmp_path, progress=False)
    assert not list(tmp_path.rglob("seed-*.json"))


def test_train_split_metrics_are_reported_with_a_train_prefix(tmp_path):
    config = _shapes(epochs=1)
    config["eval_splits"] = ["train", "val", "test"]
    config["report"] = {"metrics": ["train/retrieval/rsum", "val/retrieval/rsum", "retrieval/rsum"]}
    result = run(config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    for prefix in ("train/", "val/", ""):
        assert f"{prefix}retrieval/rsum" in result.metrics
    # the train split is scored as it is (64 images), not through the training transforms
    assert result.chance["train/retrieval/t2i_R@1"] == pytest.approx(100 / 64)


class _DtypeSpy(torch.nn.Module):
    """An image encoder that records the dtype ``prepare`` receives."""

    modality, output_dim = "image", 4

    def __init__(self):
        super().__init__()
        self.seen = []
        self.linear = torch.nn.Linear(3, 4)

    def prepare(self, raw):
        self.seen.append(torch.as_tensor(raw).dtype)
        return torch.as_tensor(raw).float().mean(dim=(2, 3)) / 255.0

    def forward(self, x):
        return self.linear(x)


def test_make_batch_feeds_moved_captions_and_extras_and_the_raw_dtype_to_the_model():
    from harness.model import DualEncoder
    from harness.training import make_batch

    dataset = harness.create("dataset", "shapes", train_size=8, val_size=0, test_size=1, image_size=32,
                             cache=False)
    split = dataset.split("train")
    text = harness.create("encoder", "gru", embed_dim=4, dataset_info=dataset.info)
    model = DualEncoder(_DtypeSpy(), text)
    index = np.arange(4)
    # each image's first caption that names a side, when it has one
    captions = np.array([next((j for j in split.texts_of_image()[i] if swap_sides(split.texts[j]) !=
                               split.texts[j]), split.texts_of_image()[i][0]) for i in index])
    flip = HorizontalFlip(p=1.0, dataset_info=dataset.info)
    batch, extras = make_batch(model, split, index, captions, ["obj_bbox", "relations"],
                               list(dataset.info.class_names), torch.device("cpu"), [flip], 0)
    swapped = [swap_sides(split.texts[j]) for j in captions]
    assert swapped != [split.texts[j] for j in captions]
    assert torch.equal(batch["texts"]["tokens"], text.prepare(swapped)["tokens"])
    boxes = torch.as_tensor(split.extras["obj_bbox"][index])
    real = (boxes >= 0).all(-1)
    assert torch.equal(extras["obj_bbox"][..., 0][real], (32 - boxes[..., 2])[real])
    relations = torch.as_tensor(split.extras["relations"][index]).long()
    mirrored = torch.where(relations >= 0, torch.tensor([1, 0, 2, 3])[relations.clamp_min(0)], relations)
    assert torch.equal(extras["relations"].long(), mirrored)
    # the encoder sees the dataset's own uint8, as at evaluation, and exactly the flipped pixels
    assert model.image_encoder.seen == [torch.uint8]
    expected = torch.as_tensor(split.images[index]).flip(-1).float().mean(dim=(2, 3)) / 255.0
    assert torch.equal(batch["images"], expected)
