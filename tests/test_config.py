import pytest

from harness.config import apply_overrides, expand_sweep, load_benchmark, merge_defaults
from harness.errors import ConfigError
from harness.registry import load_plugins
from harness.validation import validate_components


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
    (MINIMAL.replace("lr: 0.01", "lr: -1"), "methods[a].train.lr", "greater than 0"),
    (MINIMAL.replace("epochs: 3", "epochs: three"), "methods[a].train.epochs", "integer"),
    (MINIMAL.replace("{name: a, loss: {name: infonce, temperature: 0.1}}", "{name: a}"),
     "methods[a]", "exactly one of 'loss'"),
    (MINIMAL.replace("name: b", "name: a"), "methods", "names must be unique; repeated: a"),
    (MINIMAL + "evaluators: [{name: retrieval}, {name: retrieval, ks: [1]}]\n", "evaluators", "repeated"),
    (MINIMAL + "eval_splits: [train]\n", "eval_splits[0]", "'val' or 'test'"),
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
    assert info.value.field == "methods[a].loss.temprature"
    assert "did you mean 'temperature'" in str(info.value)


def test_unknown_component_names_the_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL.replace("name: gru", "name: gruu"))
    assert info.value.field == "methods[a].encoders.text.name"
    assert "did you mean 'gru'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL.replace("dataset: {name: toy}", "dataset: {name: toy, sise: 3}"))
    assert info.value.field == "dataset.sise"


def test_report_metrics_must_name_a_benchmark_evaluator(tmp_path):
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, MINIMAL + "report: {metrics: [retreival/t2i_R@1]}\n")
    assert info.value.field == "report.metrics" and "retrieval" in str(info.value)


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
    assert info.value.field == "report.metrics"
