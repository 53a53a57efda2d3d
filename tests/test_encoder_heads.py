"""Teacher heads on any encoder (Podguzova & Nguyen 2020's student–teacher encoders): an encoder's
``head`` option stacks a registered head (the ``mlp`` by default) on it, ending at ``embed_dim``."""

import pytest
import torch
from torch import nn

import harness
from harness.components import TokenFeatures
from harness.errors import ConfigError
from harness.model import HeadedEncoder
from harness.runner import run
from harness.training import load_checkpoint

from harness_plugins.encoders.heads import MLPHead, mlp_layers


def test_mlp_head_has_the_requested_layers_activation_and_output_size():
    head = harness.create("head", "mlp", hidden=[32, 16], activation="leaky_relu", dropout=0.2,
                          negative_slope=0.1, input_dim=40, embed_dim=100)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.LeakyReLU, nn.Dropout, nn.Linear, nn.LeakyReLU, nn.Dropout, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head.net if isinstance(m, nn.Linear)] == [
        (40, 32), (32, 16), (16, 100)]
    assert head.net[1].negative_slope == 0.1 and head.net[2].p == 0.2
    assert head(torch.randn(5, 40)).shape == (5, 100) and head.output_dim == 100
    linear = MLPHead(hidden=[], input_dim=8, embed_dim=4)
    assert [type(m) for m in linear.net] == [nn.Linear]
    for activation, cls in (("relu", nn.ReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh)):
        assert isinstance(mlp_layers(4, [3], 2, activation)[1], cls)


def test_mlp_head_rejects_bad_parameters():
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPHead(activation="swish", input_dim=4)
    with pytest.raises(ValueError, match="hidden must be a list of positive"):
        MLPHead(hidden=[0], input_dim=4)
    with pytest.raises(ValueError, match="dropout must be in"):
        MLPHead(dropout=1.0, input_dim=4)
    with pytest.raises(ValueError, match="needs input_dim"):
        MLPHead()


def _config(image=None, text=None):
    return {"name": "heads", "dataset": {"name": "shapes", "train_size": 64, "val_size": 16,
                                         "test_size": 32, "image_size": 32},
            "seeds": [0],
            "defaults": {"encoders": {"image": image or {"name": "small-cnn", "channels": [8, 8]},
                                      "text": text or {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                         "embed_dim": 12, "train": {"epochs": 1, "batch_size": 16, "checkpoint": True}},
            "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
            "evaluators": [{"name": "retrieval"}]}


def test_encoders_with_heads_train_and_save_student_and_teacher(tmp_path):
    config = _config(
        image={"name": "small-cnn", "channels": [8, 8], "output_dim": 40,
               "head": {"hidden": [24], "activation": "leaky_relu", "dropout": 0.1}},
        text={"name": "gru", "word_dim": 8, "hidden_dim": 8, "head": {"name": "mlp", "hidden": []}})
    result = run(config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    state = load_checkpoint(tmp_path / "heads" / "infonce" / "seed-0.pt")["model"]
    assert state["image_encoder.base.project.weight"].shape == (40, 8 * 8 * 8)  # the student: 40-d
    assert state["image_encoder.head.net.0.weight"].shape == (24, 40)
    assert state["image_encoder.head.net.3.weight"].shape == (12, 24)  # the teacher ends at embed_dim
    assert state["text_encoder.head.net.0.weight"].shape == (12, 12)
    providers = {(p.kind, p.name) for p in result.providers}
    assert ("head", "mlp") in providers and ("encoder", "small-cnn") in providers


def test_a_head_maps_token_features_token_by_token():
    base = harness.create("encoder", "small-cnn", pool="none", channels=[4, 4], embed_dim=6,
                          dataset_info=harness.create("dataset", "shapes", train_size=4, val_size=0,
                                                      test_size=1, image_size=32, cache=False).info)
    encoder = HeadedEncoder(base, MLPHead(hidden=[5], input_dim=6, embed_dim=3))
    out = encoder(encoder.prepare(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)))
    assert isinstance(out, TokenFeatures) and out.features.shape == (2, 64, 3)
    assert encoder.output_dim == 3 and encoder.modality == "image"


@pytest.mark.parametrize("image, field, message", [
    ({"name": "small-cnn", "output_dim": 40}, "defaults.encoders.image.output_dim", "without a `head`"),
    ({"name": "small-cnn", "head": {"activation": "swish"}}, "defaults.encoders.image.head",
     "activation must be one of"),
    ({"name": "small-cnn", "head": {"hiden": [3]}}, "defaults.encoders.image.head.hiden", "did you mean"),
    ({"name": "small-cnn", "head": [3]}, "defaults.encoders.image.head", "must be a mapping"),
    ({"name": "pixels", "output_dim": 4, "head": {}}, "defaults.encoders.image.output_dim",
     "fixed output size"),
])
def test_bad_head_options_are_config_errors_naming_the_field(tmp_path, image, field, message):
    with pytest.raises(ConfigError, match=message) as info:
        run(_config(image=image), tmp_path, progress=False)
    assert info.value.field == field


def test_the_mlp_encoder_and_the_mlp_head_build_the_same_layers():
    from harness.data import DatasetInfo

    torch.manual_seed(0)
    encoder = harness.create("encoder", "mlp", hidden=[8, 5], activation="leaky_relu", dropout=0.2,
                             embed_dim=4, dataset_info=DatasetInfo(name="v", image_shape=(6,)))
    torch.manual_seed(0)
    head = MLPHead(hidden=[8, 5], activation="leaky_relu", dropout=0.2, input_dim=6, embed_dim=4)
    assert [type(m) for m in encoder.net] == [type(m) for m in head.net]
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), head.state_dict().values()))


def test_mlp_head_normalises_hidden_layers_when_asked():
    head = MLPHead(hidden=[8], norm="batch", activation="relu", input_dim=6, embed_dim=3)
    assert [type(m) for m in head.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert isinstance(MLPHead(hidden=[8], norm="layer", input_dim=6).net[1], nn.LayerNorm)
    with pytest.raises(ValueError, match="norm must be one of"):
        MLPHead(norm="group", input_dim=6)


def test_closed_form_methods_refuse_heads_and_transforms(tmp_path):
    config = _config(image={"name": "pixels", "size": 4}, text={"name": "bag-of-words"})
    config["methods"] = [{"name": "cca", "estimator": {"name": "linear-cca", "k": 2},
                          "encoders": {"image": {"head": {"hidden": []}}}}]
    with pytest.raises(ConfigError, match="head would stay untrained") as info:
        run(config, tmp_path, progress=False)
    assert info.value.field == "methods[cca].encoders.image.head"
    config["methods"] = [{"name": "cca", "estimator": {"name": "linear-cca", "k": 2},
                          "train": {"transforms": [{"name": "hflip"}]}}]
    with pytest.raises(ConfigError, match="no training batches to transform") as info:
        run(config, tmp_path, progress=False)
    assert info.value.field == "methods[cca].train.transforms"
