"""Training in stages (pretrain, then fine-tune with another loss, learning rate and frozen parts) and
trainable task heads in method configs."""

import pytest
import torch

from harness.errors import ConfigError
from harness.runner import run
from harness.training import load_checkpoint


def _weights(path, prefix):
    state = load_checkpoint(path)["model"]
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_a_frozen_part_does_not_change_in_its_stage_and_history_records_stages(tmp_path, toy_config):
    toy_config["defaults"]["train"]["checkpoint"] = True
    pretrain = {"name": "pretrain", "loss": {"name": "infonce"}, "train": {"epochs": 2}}
    finetune = {"name": "finetune", "loss": {"name": "infonce", "temperature": 0.5},
                "train": {"epochs": 2, "lr": 0.05}, "freeze": ["image_encoder"]}
    toy_config["methods"] = [{"name": "staged", "stages": [pretrain, finetune]},
                             {"name": "pretrain-only", "stages": [pretrain]}]
    outcome = run(toy_config, tmp_path, progress=False)
    assert outcome.ok, [r.error for r in outcome.results]
    staged = next(r for r in outcome.results if r.method == "staged")
    assert [(h["epoch"], h["stage"]) for h in staged.history] == [
        (0, "pretrain"), (1, "pretrain"), (2, "finetune"), (3, "finetune")]
    assert staged.history[2]["lr"] != staged.history[0]["lr"]
    both = tmp_path / "toy" / "staged" / "seed-0.pt"
    first = tmp_path / "toy" / "pretrain-only" / "seed-0.pt"
    # the first stage is the same computation in both methods; the second froze the image encoder
    # (batch-norm statistics included) and trained only the text encoder
    image_after, image_before = _weights(both, "image_encoder."), _weights(first, "image_encoder.")
    assert image_after.keys() == image_before.keys()
    assert all(torch.equal(image_after[k], image_before[k]) for k in image_after)
    text_after, text_before = _weights(both, "text_encoder."), _weights(first, "text_encoder.")
    assert any(not torch.equal(text_after[k], text_before[k]) for k in text_after)
    assert set(load_checkpoint(both)["stages"]) == {"pretrain", "finetune"}


def test_a_single_loss_method_trains_exactly_as_one_unnamed_stage(tmp_path, toy_config):
    plain = run(toy_config, tmp_path / "a", progress=False).results[0]
    toy_config["methods"] = [{"name": "infonce", "stages": [{"name": "only", "loss": {"name": "infonce"}}]}]
    staged = run(toy_config, tmp_path / "b", progress=False).results[0]
    assert [h["loss"] for h in staged.history] == [h["loss"] for h in plain.history]
    assert staged.metrics == plain.metrics
    assert "stage" not in plain.history[0] and staged.history[0]["stage"] == "only"


def test_heads_are_built_trained_saved_and_handed_to_the_loss(tmp_path, toy_config):
    toy_config["defaults"]["train"].update(checkpoint=True, epochs=3, lr=0.05)
    toy_config["methods"] = [{"name": "headed", "loss": {"name": "head-scaled"},
                              "heads": {"scale": {"name": "scale-head"}}}]
    result = run(toy_config, tmp_path, progress=False).results[0]
    assert result.status == "ok", result.error
    assert ("head", "scale-head") in {(p.kind, p.name) for p in result.providers}
    scale = load_checkpoint(tmp_path / "toy" / "headed" / "seed-0.pt")["model"]["heads.scale.scale"]
    assert float(scale) != 1.0  # trained from its initial value towards 2


@pytest.mark.parametrize("method, field, words", [
    ({"name": "m", "stages": [{"name": "s", "loss": {"name": "infonce"}, "freeze": ["image_encodr"]}]},
     "methods[m].stages[s].freeze", "no part named 'image_encodr'"),
    ({"name": "m", "stages": [{"name": "s", "loss": {"name": "infonse"}}]},
     "methods[m].stages[s].loss.name", "did you mean 'infonce'"),
    ({"name": "m", "loss": {"name": "infonce"}, "heads": {"h": {"name": "scale-head", "size": 3}}},
     "methods[m].heads.h.size", "no parameter 'size'"),
    ({"name": "m", "stages": [{"name": "s", "loss": {"name": "infonce"}, "train": {"lr": -1}}]},
     "methods[m]", "stage 's': train.lr"),
])
def test_bad_stages_and_heads_are_config_errors_before_training(tmp_path, toy_config, method, field, words):
    toy_config["methods"] = [method]
    with pytest.raises(ConfigError) as info:
        run(toy_config, tmp_path, progress=False)
    assert info.value.field == field and words in str(info.value)
    assert not (tmp_path / "toy").exists()


def test_adding_heads_leaves_the_rest_of_the_run_unchanged(tmp_path, toy_config):
    """Heads draw their initial weights from their own seed: a method with a head its loss never uses
    trains exactly as the same method without it (so staged methods share their first stage)."""
    # attention over the CNN's locations has dropout: it draws from torch's global generator every step
    toy_config["defaults"]["encoders"]["image"].update(pool="mean", attention_layers=1, heads=2)
    plain = run(toy_config, tmp_path / "a", progress=False).results[0]
    toy_config["methods"] = [{"name": "infonce", "loss": {"name": "infonce"},
                              "heads": {"unused": {"name": "linear-head"}}}]
    headed = run(toy_config, tmp_path / "b", progress=False).results[0]
    assert [h["loss"] for h in headed.history] == [h["loss"] for h in plain.history]
    assert headed.metrics == plain.metrics
