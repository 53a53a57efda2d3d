"""The streaming data pipeline: images decoded on demand, batches read through DataLoader workers, the
same batches and transforms whatever the number of workers."""

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

import harness
from harness.data import Split
from harness.loader import TrainBatches, data_loader, prepared_chunks, resolve_workers
from harness.sources import GazeMaps, ImageFiles, ResizedImages, decode_image, square_geometry

import real_formats as rf


def test_image_files_decode_resize_and_centre_crop_as_torchvision_does(tmp_path):
    from PIL import Image
    from torchvision.transforms import v2

    path = rf.write_image(tmp_path / "a.png", np.random.default_rng(0), (50, 31))
    reference = v2.Compose([v2.Resize(16), v2.CenterCrop(16), v2.PILToTensor()])(Image.open(path).convert("RGB"))
    images = ImageFiles([path, path], 16)
    assert images[0].dtype == torch.uint8 and torch.equal(images[0], reference)
    assert torch.equal(images[np.array([1, 0])], torch.stack([reference, reference]))
    grey = rf.write_image(tmp_path / "g.png", np.random.default_rng(1), (20, 20), mode="L")
    assert ImageFiles([grey], 8)[0].shape == (3, 8, 8)  # greyscale files become RGB


def test_jpegs_decoded_at_reduced_scale_stay_close_to_a_full_decode(tmp_path):
    from PIL import Image
    from torchvision.transforms import v2

    y, x = np.mgrid[0:480, 0:640]
    smooth = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    full = v2.Compose([v2.Resize(64), v2.CenterCrop(64), v2.PILToTensor()])(Image.open(tmp_path / "big.jpg"))
    fast = decode_image(tmp_path / "big.jpg", 64)
    assert fast.shape == full.shape == (3, 64, 64)
    assert (fast.float() - full.float()).abs().mean() < 2.0  # of 255


def test_a_box_moves_into_the_crop_with_square_geometry(tmp_path):
    from PIL import Image

    pixels = np.zeros((60, 100, 3), dtype=np.uint8)
    pixels[20:40, 50:70] = 255  # a white box at x 50-70, y 20-40 of a 100 x 60 image
    Image.fromarray(pixels).save(tmp_path / "box.png")
    crop = ImageFiles([tmp_path / "box.png"], 30)[0][0].float()
    sx, sy, left, top = square_geometry(100, 60, 30)
    x0, x1 = round(50 * sx - left), round(70 * sx - left)
    y0, y1 = round(20 * sy - top), round(40 * sy - top)
    assert crop[y0 + 1:y1 - 1, x0 + 1:x1 - 1].min() > 200  # inside the moved box: white
    outside = crop.clone()
    outside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = 0
    assert outside.max() < 30


def test_gaze_maps_are_cropped_like_their_images_and_missing_ones_are_uniform(tmp_path):
    from PIL import Image

    saliency = np.zeros((60, 100), dtype=np.uint8)
    saliency[:, 50:] = 255  # right half attended
    Image.fromarray(saliency, "L").save(tmp_path / "m.png")
    maps = GazeMaps([str(tmp_path / "m.png"), None], 10)
    batch = maps[np.arange(2)]
    assert batch.dtype == torch.float32 and batch.shape == (2, 10, 10) and maps.missing == 1
    assert batch[0, :, :4].max() == 0 and batch[0, :, 6:].min() == 1.0
    assert torch.equal(batch[1], torch.ones(10, 10))


def test_lazy_sources_index_like_arrays():
    images = ResizedImages(np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4) * 2, 8)
    assert images[1].shape == (3, 8, 8) and images[np.array([1, 0, 1])].shape == (3, 3, 8, 8)
    assert torch.equal(images[-1], images[1]) and torch.equal(images[np.array([False, True])][0], images[1])
    assert images[np.array([], dtype=int)].shape == (0, 3, 8, 8)
    with pytest.raises(IndexError):
        images[np.array([2])]
    assert images.fingerprint() != ResizedImages(np.zeros((2, 3, 4, 4), np.uint8), 8).fingerprint()


def test_split_fingerprint_of_image_files_hashes_names_and_sizes_not_pixels(tmp_path):
    rng = np.random.default_rng(0)
    a = rf.write_image(tmp_path / "a" / "x.png", rng)
    b = rf.write_image(tmp_path / "b" / "x.png", rng)
    first = Split("test", ImageFiles([a], 8, root=tmp_path / "a"), ["x"], [0]).fingerprint()
    moved = Split("test", ImageFiles([b], 8, root=tmp_path / "b"), ["x"], [0]).fingerprint()
    assert first == moved  # same relative name and size: the folder may move
    rf.write_image(b, rng, (41, 30))
    assert Split("test", ImageFiles([b], 8, root=tmp_path / "b"), ["x"], [0]).fingerprint() != first


def test_auto_workers_read_files_in_workers_and_arrays_in_process(tmp_path):
    rng = np.random.default_rng(0)
    files = Split("train", ImageFiles([rf.write_image(tmp_path / "a.png", rng)], 8), ["a"], [0])
    memory = Split("train", np.zeros((1, 3, 8, 8), np.uint8), ["a"], [0])
    assert resolve_workers("auto", memory) == 0
    assert 1 <= resolve_workers("auto", files) <= 8
    assert resolve_workers(3, memory) == 3 and resolve_workers(0, files) == 0


def _load(index, captions, seed):
    return {"index": torch.as_tensor(index), "noise": torch.rand(2, generator=torch.Generator().manual_seed(
        seed)) if seed is not None else torch.zeros(2)}


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_follow_each_epochs_plan_and_never_touch_the_global_stream(workers):
    batches = TrainBatches(_load, steps=3, batch_size=2, workers=workers, device=torch.device("cpu"))
    state = torch.get_rng_state()
    try:
        for epoch in range(2):
            rows = [np.array([epoch, s]) for s in range(3)]
            got = list(batches.epoch(rows, rows, [7, None, epoch]))
            assert [b["index"].tolist() for b in got] == [r.tolist() for r in rows]
            assert torch.equal(got[1]["noise"], torch.zeros(2))  # seed None: no transforms
            assert not torch.equal(got[0]["noise"], torch.zeros(2))
    finally:
        batches.close()
    assert torch.equal(torch.get_rng_state(), state)
    assert not multiprocessing.active_children()  # close() ended the persistent workers


def test_closing_train_batches_mid_epoch_stops_the_workers_at_once():
    batches = TrainBatches(_load, steps=4, batch_size=2, workers=2, device=torch.device("cpu"))
    epoch = batches.epoch([np.array([s, s]) for s in range(4)], [np.zeros(2, int)] * 4, [None] * 4)
    assert next(epoch)["index"].tolist() == [0, 0]  # a run that stops here (diverged)
    assert len(multiprocessing.active_children()) == 2
    batches.close()
    assert not multiprocessing.active_children()


def test_evaluation_chunks_are_prepared_in_order_by_workers():
    items = list(range(10))
    out = list(prepared_chunks(items, lambda xs: torch.tensor(xs) * 2, 4, 2, torch.device("cpu")))
    assert [c.tolist() for c in out] == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    assert data_loader(torch.utils.data.TensorDataset(torch.zeros(2)), 0, torch.device("cpu")).pin_memory is False


def _stream_config(root: Path, workers, transforms=(), epochs: int = 2) -> dict:
    return {
        "name": "stream",
        "dataset": {"name": "image-text-files", "path": str(root / "pairs.jsonl"), "images": str(root / "images"),
                    "image_size": 16},
        "seeds": [0],
        "defaults": {
            "encoders": {"image": {"name": "small-cnn", "channels": [4, 4]},
                         "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
            "embed_dim": 8,
            "train": {"epochs": epochs, "batch_size": 8, "device": "cpu", "workers": workers,
                      "transforms": list(transforms)},
        },
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
        "evaluators": [{"name": "retrieval"}],
        "report": {"metrics": ["retrieval/rsum"]},
    }


def test_a_streamed_run_is_the_same_with_any_number_of_workers(tmp_path):
    rf.image_text_folder(tmp_path / "data", 30, "jsonl")
    transforms = [{"name": "hflip", "p": 0.5}, {"name": "random-resized-crop"}, {"name": "color-jitter"}]
    runs = {}
    for workers in (0, 2):
        outcome = harness.run(_stream_config(tmp_path / "data", workers, transforms),
                              out_dir=tmp_path / f"w{workers}", progress=False)
        result = outcome.results[0]
        assert result.status == "ok", result.error
        runs[workers] = (result.metrics, [h["loss"] for h in result.history], result.dataset.fingerprint)
    assert runs[0] == runs[2]
    assert not multiprocessing.active_children()  # persistent workers end with their stage


def test_workers_leave_in_memory_runs_unchanged(tmp_path, toy_config):
    toy_config["defaults"]["train"]["transforms"] = [{"name": "hflip", "p": 0.5}, {"name": "cutout"}]
    runs = []
    for workers in ("auto", 0, 2):
        toy_config["defaults"]["train"]["workers"] = workers
        result = harness.run(toy_config, out_dir=tmp_path / str(workers), progress=False).results[0]
        runs.append((result.metrics, [h["loss"] for h in result.history]))
    assert runs[0] == runs[1] == runs[2]


def test_workers_is_an_execution_setting_that_does_not_make_results_stale(tmp_path, toy_config):
    first = harness.run(toy_config, out_dir=tmp_path, progress=False).results[0]
    toy_config["defaults"]["train"]["workers"] = 2
    again = harness.run(toy_config, out_dir=tmp_path, progress=False).results[0]
    assert again.provenance.started_at == first.provenance.started_at  # skipped as already done


def test_gaze_maps_reach_the_gaze_transform_in_a_streamed_run(tmp_path):
    root = tmp_path / "data"
    rf.image_text_folder(root, 20, "jsonl")
    rng = np.random.default_rng(1)
    for image in sorted((root / "images" / "photos").glob("*.jpg"))[:15]:  # 5 images get no map
        rf.write_image(tmp_path / "maps" / "train" / f"{image.stem}.png", rng, mode="L")
    config = _stream_config(root, 2, [{"name": "gaze", "p": 1.0}], epochs=1)
    config["dataset"]["gaze_maps"] = str(tmp_path / "maps")
    with pytest.warns(UserWarning, match=r"gaze_maps: \d+ of \d+ \w+ images have no map"):
        result = harness.run(config, out_dir=tmp_path / "runs", progress=False).results[0]
    assert result.status == "ok", result.error
    with pytest.warns(UserWarning, match="no map"):
        dataset = harness.create("dataset", "image-text-files", path=str(root / "pairs.jsonl"),
                                 images=str(root / "images"), gaze_maps=str(tmp_path / "maps"), gaze_size=8)
    assert sum(dataset.gaze_missing.values()) == 5
    assert dataset.split("train").extras["gaze"][np.arange(3)].shape == (3, 8, 8)


def test_gaze_maps_are_the_png_files_and_mask_the_images_they_belong_to(tmp_path):
    """What reaches the transform: an image with a PNG gets that map (grey levels / 255, read at
    ``gaze_size``), one without gets a uniform map; in a training batch the ``gaze`` transform darkens a
    mapped image by its own map and leaves an unmapped one unchanged."""
    from PIL import Image

    from harness.batches import float_images, load_batch
    from harness_plugins.transforms.gaze import GazeMask, normalized_maps

    root = tmp_path / "data"
    rf.image_text_folder(root, 8, "jsonl")
    rng = np.random.default_rng(2)
    images = sorted((root / "images" / "photos").glob("*.jpg"))
    for image in images[:6]:
        rf.write_image(tmp_path / "maps" / f"{image.stem}.png", rng, size=(16, 16), mode="L")
    with pytest.warns(UserWarning, match="no map"):
        dataset = harness.create("dataset", "image-text-files", path=str(root / "pairs.jsonl"),
                                 images=str(root / "images"), gaze_maps=str(tmp_path / "maps"), gaze_size=16,
                                 image_size=16)
    split = dataset.split("train")
    gaze = split.extras["gaze"]
    mapped = [i for i, p in enumerate(gaze.paths) if p is not None]
    unmapped = [i for i, p in enumerate(gaze.paths) if p is None]
    assert mapped and unmapped
    i = mapped[0]
    png = np.asarray(Image.open(gaze.paths[i]).convert("L"), dtype=np.float32) / 255.0  # 16x16: no resize
    assert torch.allclose(gaze[i], torch.from_numpy(png), atol=1e-6)
    assert torch.equal(gaze[unmapped[0]], torch.ones(16, 16))
    index = np.array([i, unmapped[0]])
    captions = np.array([split.texts_of_image()[k][0] for k in index])
    loaded = load_batch(split, index, captions, 123, prepare_images=lambda x: x, prepare_texts=lambda t: t,
                        extras_wanted=["gaze"], transforms=[GazeMask(p=1.0)])
    raw = float_images(split.images[index])
    maps = normalized_maps(gaze[index], 16, 16)
    expected = (raw * maps).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(loaded["images"], expected)
    assert not torch.equal(loaded["images"][0], split.images[index][0])  # the mapped image is masked
    assert torch.equal(loaded["images"][1], split.images[index][1])  # uniform map: unchanged
