"""The multimodal autoencoder (Ngiam et al. 2011): its loss by hand, the dropped modality, its targets,
cross-modal reconstruction better than chance, and a run with retrieval and the linear probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness
from harness.data import DatasetInfo
from harness.runner import run
from harness_plugins.datasets.shapes import ShapesDataset
from harness_plugins.encoders.small import BagOfWords, Pixels
from harness_plugins.fusion import MultimodalAutoencoder

VECTORS = DatasetInfo(name="two-view", image_shape=(12,), text_kind="vector", text_dim=10)


def test_loss_reconstructs_both_modalities_from_the_mean_of_the_present_codes():
    torch.manual_seed(0)
    ae = MultimodalAutoencoder(p_drop=0.5, hidden=[8], embed_dim=4, dataset_info=VECTORS,
                               text_weight=2.0).double()
    g = torch.Generator().manual_seed(1)
    f, gy = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    x, y = torch.rand(6, 12, generator=g, dtype=torch.float64), torch.rand(6, 10, generator=g, dtype=torch.float64)
    torch.manual_seed(7)
    value = ae(f, gy, images=x, texts=y)
    torch.manual_seed(7)
    u = torch.rand(6)
    # u < p/2: the image is missing (text code alone); p/2 ≤ u < p: the text is missing; else both
    code = torch.stack([gy[b] if u[b] < 0.25 else f[b] if u[b] < 0.5 else (f[b] + gy[b]) / 2
                        for b in range(6)])
    rx, ry = ae.decoder_image(code), ae.decoder_text(code)
    want = ((rx - x) ** 2).mean() + 2.0 * ((ry - y) ** 2).mean()
    torch.testing.assert_close(value, want)
    assert (u < 0.25).any() and ((u >= 0.25) & (u < 0.5)).any() and (u >= 0.5).any()  # all three cases


def test_p_drop_decides_how_often_a_modality_is_missing():
    ae = MultimodalAutoencoder(p_drop=0.0, hidden=[], embed_dim=4, dataset_info=VECTORS).double()
    f, gy = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    x, y = torch.rand(5, 12, dtype=torch.float64), torch.rand(5, 10, dtype=torch.float64)
    rx, ry = ae.reconstruct((f + gy) / 2)
    torch.testing.assert_close(ae(f, gy, images=x, texts=y), F.mse_loss(rx, x) + F.mse_loss(ry, y))
    # p_drop = 1: never both; a missing text leaves the image's code, and the reverse
    ae.p_drop = 1.0
    torch.manual_seed(0)
    u = torch.rand(5)
    torch.manual_seed(0)
    code = torch.where((u < 0.5)[:, None], gy, f)
    rx, ry = ae.reconstruct(code)
    torch.testing.assert_close(ae(f, gy, images=x, texts=y), F.mse_loss(rx, x) + F.mse_loss(ry, y))
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="p_drop must be a probability"):
            MultimodalAutoencoder(p_drop=bad, dataset_info=VECTORS)


def test_targets_are_pooled_pixels_and_word_counts_of_the_captions():
    info = ShapesDataset(train_size=1, val_size=0, test_size=1, image_size=32, cache=False).info
    ae = MultimodalAutoencoder(image_size=4, embed_dim=8, dataset_info=info)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    prepared = Pixels(size=4, dataset_info=info).prepare(images)
    captions = ["a red circle", "a blue square left of a red circle", "there is a green cross"]
    t_x, t_y = ae.targets(prepared, captions=captions)
    torch.testing.assert_close(t_x, Pixels(size=4, dataset_info=info)(prepared))
    words = BagOfWords(dataset_info=info)
    torch.testing.assert_close(t_y, words(words.prepare(captions)))
    assert ae.dims == (3 * 16, words.output_dim)
    with pytest.raises(ValueError, match="needs the captions"):
        ae.targets(prepared)


def test_either_modality_alone_reconstructs_the_other_better_than_chance():
    """Two views of a latent z; trained with one view often dropped, the code of x alone predicts y on
    held-out pairs far better than the training mean of y does (and the reverse)."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 12, generator=g), torch.randn(4, 10, generator=g)

    def views(n):
        z = torch.randn(n, 4, generator=g)
        return z @ A + 0.1 * torch.randn(n, 12, generator=g), torch.tanh(z @ B) + 0.1 * torch.randn(n, 10, generator=g)

    x, y = views(512)
    x_test, y_test = views(256)
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    h = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    ae = MultimodalAutoencoder(hidden=[32], embed_dim=8, dataset_info=VECTORS)
    params = [*f.parameters(), *h.parameters(), *ae.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    for step in range(400):
        b = torch.randint(0, 512, (64,), generator=g)
        loss = ae(f(x[b]), h(y[b]), images=x[b], texts=y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        y_from_x = ae.reconstruct(f(x_test))[1]
        x_from_y = ae.reconstruct(h(y_test))[0]
        chance_y = F.mse_loss(y.mean(0).expand_as(y_test), y_test)
        chance_x = F.mse_loss(x.mean(0).expand_as(x_test), x_test)
        assert F.mse_loss(y_from_x, y_test) < 0.5 * chance_y
        assert F.mse_loss(x_from_y, x_test) < 0.5 * chance_x


def test_registered_and_sized_by_the_dataset():
    ae = harness.create("loss", "multimodal-ae", embed_dim=16, dataset_info=VECTORS)
    assert isinstance(ae, MultimodalAutoencoder) and ae.p_drop == pytest.approx(2 / 3)
    assert ae.decoder_image[0].in_features == 16 and ae.dims == (12, 10)
    with pytest.raises(ValueError, match="needs the dataset's info"):
        MultimodalAutoencoder()
    with pytest.raises(ValueError, match="pooled codes of one size"):
        ae(torch.zeros(2, 16), torch.zeros(2, 8), images=torch.zeros(2, 12), texts=torch.zeros(2, 10))


def test_a_run_on_tiny_shapes_embeds_each_side_alone_for_retrieval_and_the_probe(tmp_path):
    config = {
        "name": "mae",
        "dataset": {"name": "shapes", "train_size": 256, "val_size": 0, "test_size": 64, "image_size": 32},
        "seeds": [0],
        "defaults": {"embed_dim": 16, "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "lr": 3e-3}},
        "methods": [{"name": "mae", "loss": {"name": "multimodal-ae", "hidden": [64]},
                     "encoders": {"image": {"name": "pixels", "size": 8, "head": {"hidden": [64]}},
                                  "text": {"name": "bag-of-words", "head": {"hidden": [64]}}}},
                    {"name": "mae-cnn", "loss": {"name": "multimodal-ae", "p_drop": 0.5},
                     "encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                  "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}}}],
        "evaluators": [{"name": "retrieval", "ks": [1, 5]}, {"name": "linear-probe"}],
        "report": {"metrics": ["retrieval/rsum", "linear-probe/accuracy"]},
    }
    outcome = run(config, tmp_path, progress=False, echo=lambda m: None)
    for result in outcome.results:
        assert result.status == "ok", result.error
        assert 0 <= result.metrics["retrieval/rsum"] <= 600
        assert 0 <= result.metrics["linear-probe/accuracy"] <= 1
        losses = [e["loss"] for e in result.history]
        assert losses[-1] < losses[0]
    assert np.isfinite(outcome.results[0].metrics["retrieval/t2i_medr"])
