import subprocess

import pytest

from harness.config import (DefaultsSpec, MethodSpec, apply_overrides, expand_sweep, load_benchmark,
                            merge_defaults)
from harness.errors import ConfigError
from harness.registry import load_plugins
from harness.validation import validate_components

from conftest import ROOT, cli_env, harness_cmd


def _write(tmp_path, text, name="bench.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
name: mini
dataset: {name: toy}
defaults:
  encoders: {image: {name: small-cnn}, text: {name: gru}}
  train: {epochs: 3, lr: 0.01}
methods:
  - {name: a, loss: {name: infonce, temperature: 0.1}}
  - {name: b, loss: {name: infonce}, train: {epochs: 1}}
"""


def test_defaults_are_merged_into_each_method(tmp_path):
    spec, file = load_benchmark(_write(tmp_path, MINIMAL))
    a, b = spec.methods
    assert (a.train.epochs, a.train.lr) == (3, 0.01)
    assert (b.train.epochs, b.train.lr) == (1, 0.01)
    assert a.encoders.image.name == "small-cnn" and a.loss.params == {"temperature": 0.1}
    assert file.endswith("bench.yaml") and spec.seeds == [0]


def test_a_differently_named_component_replaces_the_default_whole():
    merged = merge_defaults({"encoders": {"image": {"name": "small-cnn", "channels": [4]}}},
                            {"encoders": {"image": {"name": "pixels", "size": 8}}})
    assert merged["encoders"]["image"] == {"name": "pixels", "size": 8}
    merged = merge_defaults({"encoders": {"image": {"name": "small-cnn", "channels": [4]}}},
                            {"encoders": {"image": {"embed": 3}}})
    assert merged["encoders"]["image"] == {"name": "small-cnn", "channels": [4], "embed": 3}


def test_overrides_by_path_index_and_name():
    data = {"defaults": {"train": {"epochs": 3}}, "methods": [{"name": "a"}, {"name": "b"}]}
    out = apply_overrides(data, ["defaults.train.epochs=7", "methods.b.loss.temperature=0.5",
                                 "methods.0.embed_dim=32", "seeds=[1, 2]"])
    assert out["defaults"]["train"]["epochs"] == 7
    assert out["methods"][1]["loss"] == {"temperature": 0.5}
    assert out["methods"][0]["embed_dim"] == 32
    assert out["seeds"] == [1, 2]
    assert data["defaults"]["train"]["epochs"] == 3  # the input is not mutated


@pytest.mark.parametrize("override, field", [("nokey", "--set"), ("methods.zzz.lr=1", "methods.zzz"),
                                             ("methods.a.x.y=1", "methods.a.x.y")])
def test_bad_overrides_name_the_field(override, field):
    data = {"methods": [{"name": "a", "x": 3}]}
    with pytest.raises(ConfigError) as info:
        apply_overrides(data, [override], "f.yaml")
    assert info.value.field == field and info.value.file == "f.yaml"


def test_sweep_expands_a_grid_into_named_variants(tmp_path):
    text = MINIMAL.replace("- {name: b, loss: {name: infonce}, train: {epochs: 1}}",
                           "- {name: b, loss: {name: infonce}, sweep: {loss.temperature: [0.05, 0.1],"
                           " train.lr: [0.001, 0.01]}}")
    spec, _ = load_benchmark(_write(tmp_path, text))
    names = [m.name for m in spec.methods]
    assert names == ["a", "b@temperature=0.05,lr=0.001", "b@temperature=0.05,lr=0.01",
                     "b@temperature=0.1,lr=0.001", "b@temperature=0.1,lr=0.01"]
    last = spec.methods[-1]
    assert last.loss.params == {"temperature": 0.1} and last.train.lr == 0.01


def test_sweep_labels_use_full_paths_when_leaves_collide():
    variants = expand_sweep({"name": "m", "sweep": {"loss.margin": [1], "sampler.margin": [2]}})
    assert variants[0]["name"] == "m@loss.margin=1,sampler.margin=2"


def test_sweep_needs_lists():
    with pytest.raises(ConfigError, match="non-empty list") as info:
        expand_sweep({"name": "m", "sweep": {"loss.t": 3}}, "f.yaml", "methods[m]")
    assert info.value.field == "methods[m].sweep.loss.t"


@pytest.mark.parametrize("text, field, words", [
    ("name: x\ndataset: {name: toy}\nmethods: []\n", "methods", "at least 1"),
    (MINIMAL + "bogus: 1\n", "bogus", "unknown field"),
    # a bad default is reported where it was written, not in each method it is merged into
    (MINIMAL.replace("lr: 0.01", "lr: -1"), "defaults.train.lr", "greater than 0"),
    (MINIMAL.replace("epochs: 3", "epochs: three"), "defaults.train.epochs", "integer"),
    (MINIMAL.replace("epochs: 1}", "epochs: -1}"), "methods[b].train.epochs", "greater than 0"),
    (MINIMAL.replace("{name: a, loss: {name: infonce, temperature: 0.1}}", "{name: a}"),
     "methods[a]", "exactly one of 'loss'"),
    (MINIMAL.replace("name: b", "name: a"), "methods", "names must be unique; repeated: a"),
    (MINIMAL + "evaluators: [{name: retrieval}, {name: retrieval, ks: [1]}]\n", "evaluators", "repeated"),
    (MINIMAL + "eval_splits: [training]\n", "eval_splits[0]", "'val', 'test' or 'train'"),
    (MINIMAL.replace("name: mini", "name: ../../etc"), "name", "pattern"),
    (MINIMAL + "seeds: [1, 1]\n", "seeds", "unique"),
])
def test_schema_errors_name_file_and_field(tmp_path, text, field, words):
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, text))
    assert info.value.file.endswith("bench.yaml")
    if field:
        assert info.value.field == field, str(info.value)
    assert words in str(info.value)


def test_yaml_tags_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_benchmark(_write(tmp_path, text))
    assert not marker.exists()


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, "name: x\nmethods: [\n  - a: b\n"))
    assert info.value.field.startswith("line ")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_benchmark(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_benchmark(_write(tmp_path, "- 1\n- 2\n"))


def _validate(tmp_path, text):
    spec, file = load_benchmark(_write(tmp_path, text))
    validate_components(spec, load_plugins(["harness_test_plugin"]), file)


def test_component_params_are_checked_against_signatures(tmp_path):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL.replace("temperature: 0.1", "temprature: 0.1"))
    assert info.value.field == "methods[a].loss.temprature" and info.value.line == 8
    assert "did you mean 'temperature'" in str(info.value)
    assert "methods[a].loss.temprature (line 8): " in str(info.value)


def test_unknown_component_names_the_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL.replace("name: gru", "name: gruu"))
    assert info.value.field == "defaults.encoders.text.name"  # written in defaults, not in a method
    assert "did you mean 'gru'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL.replace("dataset: {name: toy}", "dataset: {name: toy, sise: 3}"))
    assert info.value.field == "dataset.sise"


def test_report_metrics_must_name_a_benchmark_evaluator(tmp_path):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL + "report: {metrics: [retreival/t2i_R@1]}\n")
    assert info.value.field == "report.metrics[0]" and "retrieval" in str(info.value)


def test_context_params_are_not_user_params(tmp_path):
    _validate(tmp_path, MINIMAL)  # gru's dataset_info / embed_dim come from the runner
    with pytest.raises(ConfigError, match="has no parameter 'dataset_info'"):
        _validate(tmp_path, MINIMAL.replace("{name: gru}", "{name: gru, dataset_info: 1}"))


@pytest.mark.parametrize("old, new, field, words", [
    ("temperature: 0.1", "temperature: -1", "methods[a].loss", "temperature must be > 0"),
    ("dataset: {name: toy}", "dataset: {name: toy, size: -4}", "dataset", "negative"),
    ("{name: b, loss: {name: infonce}", "{name: b, loss: {name: triplet, reduction: avg}",
     "methods[b].loss", "reduction must be 'mean' or 'sum'"),
    # a bad loss value is the loss's problem even when a sampler is there too
    ("{name: b, loss: {name: infonce}", "{name: b, sampler: {name: moco}, loss: {name: infonce, temperature: 0}",
     "methods[b].loss", "temperature"),
    ("{name: b, loss: {name: infonce}", "{name: b, sampler: {name: moco, momentum: 2}, loss: {name: infonce}",
     "methods[b].sampler", "momentum"),
])
def test_parameter_values_are_checked_by_building_components(tmp_path, old, new, field, words):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL.replace(old, new))
    assert info.value.field == field, str(info.value)
    assert words in str(info.value)


def test_evaluator_values_are_checked(tmp_path):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL + "evaluators: [{name: retrieval, ks: [0]}]\n")
    assert info.value.field == "evaluators[retrieval]" and "ks" in str(info.value)


def test_forward_check_catches_encoders_and_loss_that_do_not_fit(tmp_path):
    text = MINIMAL.replace("{name: b, loss: {name: infonce}", "{name: b, loss: {name: exploding}")
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, text)
    assert info.value.field == "methods[b]" and "boom from ExplodingLoss" in str(info.value)
    spec, file = load_benchmark(_write(tmp_path, text))
    # harness run leaves this to the run itself, which records it as failed (tests/test_runner.py)
    validate_components(spec, load_plugins(["harness_test_plugin"]), file, forward_check=False)


def test_lbfgs_rejects_minibatch_only_options(tmp_path):
    lbfgs = MINIMAL.replace("{name: b, loss: {name: infonce}, train: {epochs: 1}}",
                            "{name: b, loss: {name: infonce}, train: {optimizer: lbfgs, grad_clip: 1.0}}")
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, lbfgs)
    assert info.value.field == "methods[b].train.grad_clip"
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, lbfgs.replace("grad_clip: 1.0", "epochs: 1").replace(
            "loss: {name: infonce}, train: {optimizer", "loss: {name: infonce}, sampler: {name: moco}, train: {optimizer"))
    assert info.value.field == "methods[b].sampler" and "whole split" in str(info.value)


def test_report_metrics_may_name_a_val_metric_when_val_is_evaluated(tmp_path):
    _validate(tmp_path, MINIMAL + "eval_splits: [val, test]\nreport: {metrics: [val/retrieval/rsum]}\n")
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL + "report: {metrics: [val/retrieval/rsum]}\n")
    assert info.value.field == "report.metrics[0]"


# --- issue 8: errors in `defaults` are reported once, where they were written -----------------------

TWO_METHODS = """\
name: issue8
plugins: [harness_test_plugin]
dataset: {name: toy, size: 64}
defaults:
  encoders: {image: {name: small-cnn, channels: [8, 8]}, text: {name: gru, word_dim: 8, hidden_dim: 8}}
  train:
    epochs: 0
    batch_size: 16
methods:
  - {name: infonce, loss: {name: infonce}}
  - name: siglip
    loss: {name: infonce, temperature: 0.5}
    train: {lr: 0.01}
"""


def test_a_bad_default_is_one_error_at_defaults_with_its_line(tmp_path):
    path = _write(tmp_path, TWO_METHODS)
    with pytest.raises(ConfigError) as info:
        load_benchmark(path)
    err = info.value
    assert (err.file, err.field, err.line, err.override) == (str(path), "defaults.train.epochs", 7, None)
    assert str(err) == f"{path}: defaults.train.epochs (line 7): Input should be greater than 0 (got 0)"


def test_a_bad_default_through_the_cli_is_one_line_and_exit_2(tmp_path):
    path = _write(tmp_path, TWO_METHODS)
    out = subprocess.run([*harness_cmd(), "validate", str(path)], capture_output=True, text=True,
                         env=cli_env(), timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        f"harness: error: {path}: defaults.train.epochs (line 7): Input should be greater than 0 (got 0)"]
    assert "Traceback" not in out.stderr and "methods[" not in out.stderr


def test_a_set_typo_in_defaults_names_the_set_and_the_field_it_meant(tmp_path):
    path = _write(tmp_path, TWO_METHODS.replace("epochs: 0", "epochs: 2"))
    with pytest.raises(ConfigError) as info:
        load_benchmark(path, ["defaults.train.epoch=1"])
    err = info.value
    assert (err.field, err.override, err.line) == ("defaults.train.epoch", "defaults.train.epoch=1", None)
    assert str(err) == (f"{path}: defaults.train.epoch (from --set defaults.train.epoch=1): unknown field "
                        "(did you mean 'epochs'?)")
    out = subprocess.run([*harness_cmd(), "validate", str(path), "--set", "defaults.train.epoch=1"],
                         capture_output=True, text=True, env=cli_env(), timeout=300, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.splitlines() == [f"harness: error: {err}"], out.stderr


def test_a_set_value_is_blamed_on_the_set_not_on_the_line_it_replaced(tmp_path):
    path = _write(tmp_path, TWO_METHODS.replace("epochs: 0", "epochs: 2"))
    with pytest.raises(ConfigError) as info:
        load_benchmark(path, ["methods.1.train.lr=0"])
    assert info.value.field == "methods[siglip].train.lr"
    assert "(from --set methods.1.train.lr=0): Input should be greater than 0" in str(info.value)
    with pytest.raises(ConfigError) as info:  # a --set of a whole mapping covers the fields inside it
        load_benchmark(path, ["defaults.train={epochs: 0}"])
    assert info.value.field == "defaults.train.epochs"
    assert info.value.override == "defaults.train={epochs: 0}"


def test_an_error_inside_one_method_stays_at_that_method_with_its_line(tmp_path):
    text = TWO_METHODS.replace("epochs: 0", "epochs: 2").replace("{lr: 0.01}", "{lr: 0.01, batch_sise: 4}")
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, text))
    err = info.value
    assert (err.field, err.line) == ("methods[siglip].train.batch_sise", 13)
    assert "(line 13): unknown field (did you mean 'batch_size'?)" in str(err)
    text = TWO_METHODS.replace("epochs: 0", "epochs: 2").replace("name: siglip", "name: sig/lip")
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, text))
    assert (info.value.field, info.value.line) == ("methods[sig/lip].name", 11)


def test_unknown_fields_in_defaults_and_at_the_top_get_a_did_you_mean(tmp_path):
    ok = TWO_METHODS.replace("epochs: 0", "epochs: 2")
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, ok.replace("  encoders:", "  encoder:")))
    assert (info.value.field, info.value.line) == ("defaults.encoder", 5)
    assert "unknown field (did you mean 'encoders'?)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, ok.replace("defaults:", "defualts:")))
    assert "defualts (line 4): unknown field (did you mean 'defaults'?)" in str(info.value)
    with pytest.raises(ConfigError) as info:  # a method's name cannot have a default
        load_benchmark(_write(tmp_path, ok.replace("  train:\n", "  name: x\n  train:\n")))
    assert info.value.field == "defaults.name" and "unknown field" in str(info.value)


def test_defaults_take_any_part_of_a_method_but_its_name():
    assert set(DefaultsSpec.model_fields) == set(MethodSpec.model_fields) - {"name"}


def test_a_bad_value_in_defaults_is_checked_with_the_methods_types(tmp_path):
    ok = TWO_METHODS.replace("epochs: 0", "epochs: 2")
    for old, new, field in [("train:\n", "embed_dim: 0\n  train:\n", "defaults.embed_dim"),
                            ("{image: {name: small-cnn", "{image: {nam: small-cnn", None),
                            ("  encoders: {", "  loss: 3\n  encoders: {", "defaults.loss"),
                            ("text: {name: gru", "sound: {name: gru", "defaults.encoders.sound")]:
        text = ok.replace(old, new, 1)
        if field is None:  # a default component may leave its name to the methods: methods[…] say so
            with pytest.raises(ConfigError) as info:
                load_benchmark(_write(tmp_path, text))
            assert info.value.field == "methods[infonce].encoders.image.name", str(info.value)
            continue
        with pytest.raises(ConfigError) as info:
            load_benchmark(_write(tmp_path, text))
        assert info.value.field == field and info.value.line, str(info.value)


def test_a_sweep_value_points_at_its_sweep_key(tmp_path):
    text = TWO_METHODS.replace("epochs: 0", "epochs: 2").replace(
        "train: {lr: 0.01}", "sweep: {train.lr: [0.01, 0]}")
    with pytest.raises(ConfigError) as info:
        load_benchmark(_write(tmp_path, text))
    assert (info.value.field, info.value.line) == ("methods[siglip@lr=0].train.lr", 13)


def _validate_two(tmp_path, text):
    spec, file = load_benchmark(_write(tmp_path, text))
    validate_components(spec, load_plugins(["harness_test_plugin"]), file)


def test_a_bad_default_component_parameter_is_reported_at_defaults(tmp_path):
    text = TWO_METHODS.replace("epochs: 0", "epochs: 1").replace(
        "  train:\n", "  loss: {name: infonce, temprature: 0.1}\n  train:\n")
    with pytest.raises(ConfigError) as info:
        _validate_two(tmp_path, text)
    assert (info.value.field, info.value.line) == ("defaults.loss.temprature", 6)
    assert "did you mean 'temperature'" in str(info.value)
    # a bad value and an unknown name of a default encoder, the same way
    with pytest.raises(ConfigError) as info:
        _validate_two(tmp_path, text.replace("temprature", "temperature").replace("name: gru", "name: gruu"))
    assert info.value.field == "defaults.encoders.text.name" and "did you mean 'gru'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _validate_two(tmp_path, text.replace("temprature: 0.1", "temperature: -1"))
    assert info.value.field == "defaults.loss" and "temperature must be > 0" in str(info.value)


def test_a_method_that_names_another_component_or_completes_a_default_is_unaffected(tmp_path):
    text = TWO_METHODS.replace("epochs: 0", "epochs: 1")
    # the methods name the default's loss and the method's own parameters apply
    _validate_two(tmp_path, text.replace("  train:\n",
                                         "  loss: {name: infonce, temperature: 0.1}\n  train:\n"))
    # a default without a name is completed by each method
    _validate_two(tmp_path, text.replace("  train:\n", "  loss: {temperature: 0.2}\n  train:\n"))
    # a default that no method keeps is still the user's to fix, but a method's own component is built
    # at the method's path
    with pytest.raises(ConfigError) as info:
        _validate_two(tmp_path, text.replace("{name: infonce, temperature: 0.5}",
                                             "{name: triplet, reduction: avg}"))
    assert info.value.field == "methods[siglip].loss" and info.value.line == 12


def test_a_default_component_may_leave_required_parameters_to_the_methods(tmp_path, monkeypatch):
    (tmp_path / "issue8_margin_plugin.py").write_text(
        "import torch\nimport harness\n\n\n"
        "class MarginLoss(torch.nn.Module):\n"
        "    \"\"\"A loss with a required margin.\"\"\"\n\n"
        "    def __init__(self, margin: float):\n        super().__init__()\n        self.margin = margin\n\n"
        "    def forward(self, image_emb, text_emb):\n"
        "        return (image_emb - text_emb).pow(2).mean() * self.margin\n\n\n"
        "@harness.hookimpl\ndef register_losses(register):\n    register('needs-margin', MarginLoss)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = TWO_METHODS.replace("epochs: 0", "epochs: 1").replace(
        "  train:\n", "  loss: {name: needs-margin}\n  train:\n").replace(
        "{name: infonce}", "{margin: 0.2}").replace("{name: infonce, temperature: 0.5}", "{margin: 0.1}")
    spec, file = load_benchmark(_write(tmp_path, text))
    registry = load_plugins(["harness_test_plugin", "issue8_margin_plugin"])
    validate_components(spec, registry, file)
    # its parameter names are still checked once, at defaults
    spec, file = load_benchmark(_write(tmp_path, text.replace("{name: needs-margin}",
                                                              "{name: needs-margin, margn: 1}")))
    with pytest.raises(ConfigError) as info:
        validate_components(spec, registry, file)
    assert info.value.field == "defaults.loss.margn" and "did you mean 'margin'" in str(info.value)
