"""Bad input as a new user writes it: every problem is one line naming the file and the full field path
(exit 2, no traceback), including binary files and parameters of the wrong type."""

import subprocess

import pytest

import harness
from harness.config import load_benchmark
from harness.errors import ConfigError
from harness.param_types import check_param_types, describe
from harness.registry import load_plugins
from harness.validation import validate_components

from conftest import ROOT, cli_env, harness_cmd

BENCH = """name: mini
dataset: {name: toy, size: 32}
defaults:
  encoders: {image: {name: small-cnn, channels: [4, 4]}, text: {name: gru, word_dim: 4, hidden_dim: 4}}
  train: {epochs: 1, batch_size: 8, device: cpu}
methods:
  - {name: infonce, loss: {name: infonce, temperature: 0.1}}
evaluators: [{name: retrieval, ks: [1, 5]}]
plugins: [harness_test_plugin]
"""


def _write(tmp_path, text, name="bench.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli(*args):
    return subprocess.run([*harness_cmd(), *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), timeout=300, cwd=ROOT)


def _validate(tmp_path, text):
    spec, file = load_benchmark(_write(tmp_path, text))
    validate_components(spec, load_plugins(["harness_test_plugin"]), file)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_binary_benchmark_file_is_one_line_naming_it_and_exit_2(tmp_path, command):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(b"name: x\n\xba\xff\x00\x9c binary \xfe")
    out = _cli(command, path, *(["--out", tmp_path / "runs"] if command == "run" else []))
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        f"harness: error: {path}: not a UTF-8 text file (byte 0xba at offset 8, line 2); save it as "
        f"UTF-8 YAML"]
    assert not (tmp_path / "runs").exists()


def test_a_latin1_file_names_the_line_of_the_first_bad_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_benchmark(path)
    assert info.value.file == str(path) and "line 2" in info.value.message


@pytest.mark.parametrize("old, new, field, message", [
    # every kind of component, bundled and third-party (toy, lstsq, counting come from a test plugin)
    ("temperature: 0.1", "temperature: hot", "methods[infonce].loss.temperature",
     "expected a number, got 'hot'"),
    ("ks: [1, 5]", "ks: [1, five]", "evaluators[retrieval].ks[1]", "expected an integer, got 'five'"),
    ("size: 32", "size: big", "dataset.size", "expected an integer, got 'big'"),
    ("word_dim: 4", "word_dim: [4]", "defaults.encoders.text.word_dim",
     "expected an integer or null, got [4]"),
    ("loss: {name: infonce, temperature: 0.1}", "loss: {name: slow-mse, delay: soon}",
     "methods[infonce].loss.delay", "expected a number, got 'soon'"),
    ("loss: {name: infonce, temperature: 0.1}",
     "loss: {name: infonce}, sampler: {name: moco, size: lots}", "methods[infonce].sampler.size",
     "expected an integer, got 'lots'"),
    ("train: {epochs: 1,", "train: {transforms: [{name: counting, noise: loud}], epochs: 1,",
     "defaults.train.transforms[0].noise", "expected a number, got 'loud'"),
    # a boolean or a quoted number is a mistake, not a number
    ("temperature: 0.1", "temperature: true", "methods[infonce].loss.temperature",
     "expected a number, got True"),
    ("temperature: 0.1", "temperature: '0.1'", "methods[infonce].loss.temperature",
     "expected a number, got '0.1'"),
])
def test_a_parameter_of_the_wrong_type_names_its_field_and_what_was_expected(tmp_path, old, new, field,
                                                                           message):
    assert old in BENCH
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, BENCH.replace(old, new, 1))
    assert info.value.field == field, str(info.value)
    assert info.value.message == message


def test_an_estimator_parameter_of_the_wrong_type(tmp_path):
    text = BENCH.replace("loss: {name: infonce, temperature: 0.1}",
                         "estimator: {name: lstsq, ridge: [1]}").replace(
        "{image: {name: small-cnn, channels: [4, 4]}, text: {name: gru, word_dim: 4, hidden_dim: 4}}",
        "{image: {name: pixels}, text: {name: bag-of-words}}")
    with pytest.raises(ConfigError) as info:
        _validate(tmp_path, text)
    assert (info.value.field, info.value.message) == ("methods[infonce].estimator.ridge",
                                                       "expected a number, got [1]")


def test_the_cli_prints_the_type_error_as_one_line_with_the_line_number(tmp_path):
    path = _write(tmp_path, BENCH.replace("temperature: 0.1", "temperature: hot"))
    out = _cli("validate", path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"harness: error: {path}: methods[infonce].loss.temperature "
                                       f"(line 7): expected a number, got 'hot'"]


def test_values_that_fit_the_annotation_still_build(tmp_path):
    # an int where a float is annotated, a list where a tuple is: fine, as before
    _validate(tmp_path, BENCH.replace("temperature: 0.1", "temperature: 1"))
    loss = harness.create("loss", "infonce", temperature=1)
    assert loss.temperature == 1.0


def test_the_python_api_names_the_parameter_too():
    with pytest.raises(ConfigError) as info:
        harness.create("loss", "infonce", temperature="hot")
    assert str(info.value) == "temperature: expected a number, got 'hot'"


def test_check_param_types_on_a_third_party_factory_with_unions_and_literals():
    from typing import Literal

    def factory(mode: Literal["sum", "mean"] = "mean", scale: float | None = None, names: list[str] = (),
                anything=None):
        return None

    assert check_param_types(factory, {"scale": 2, "anything": object}) == {"scale": 2.0,
                                                                            "anything": object}
    for params, field, message in [
            ({"mode": "avg"}, "mode", "expected 'sum' or 'mean', got 'avg'"),
            ({"scale": "x"}, "scale", "expected a number or null, got 'x'"),
            ({"names": ["a", 3]}, "names[1]", "expected a string, got 3")]:
        with pytest.raises(ConfigError) as info:
            check_param_types(factory, params)
        assert (info.value.field, info.value.message) == (field, message)
    assert describe(list[int]) == "a list of integers"


def test_an_unresolvable_annotation_is_not_checked():
    def factory(x: "NoSuchType" = 1):  # noqa: F821 - a name only a type checker would see
        return x

    assert check_param_types(factory, {"x": "anything"}) == {"x": "anything"}


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_unknown_dataset_names_the_file_and_dataset_name(tmp_path, command):
    path = _write(tmp_path, BENCH.replace("name: toy, size: 32", "name: laion-400m"))
    out = _cli(command, path, *(["--out", tmp_path / "runs"] if command == "run" else []))
    assert out.returncode == 2
    [line] = out.stderr.splitlines()
    assert line.startswith(f"harness: error: {path}: dataset.name (line 2): unknown dataset 'laion-400m'")


def test_an_unknown_dataset_in_a_dict_config_names_dataset_name(tmp_path, toy_config):
    toy_config["dataset"] = {"name": "laion-400m"}
    with pytest.raises(ConfigError) as info:
        harness.run(toy_config, out_dir=tmp_path)
    assert info.value.field == "dataset.name"
    assert str(info.value).startswith("dataset.name: unknown dataset 'laion-400m'")
