import subprocess
import sys
import textwrap

import pytest
import torch

import harness
from harness.errors import UnknownComponentError
from harness.registry import DuplicateComponentError, PluginImportError, Registry, load_plugins

from conftest import TESTS, cli_env, harness_cmd


def test_create_builds_a_registered_component_with_params():
    loss = harness.create("loss", "infonce", temperature=0.5)
    assert loss.temperature == 0.5
    value = loss(torch.eye(3), torch.eye(3))
    assert value.ndim == 0


def test_available_lists_every_kind_and_bundled_names():
    everything = harness.available()
    assert set(everything) == {"encoder", "loss", "sampler", "evaluator", "dataset", "estimator", "head",
                               "launcher", "transform", "fusion", "logger"}
    assert "infonce" in everything["loss"]
    assert "retrieval" in everything["evaluator"]
    assert harness.available("encoder") == {"encoder": everything["encoder"]}


def test_unknown_kind_lists_kinds_with_did_you_mean():
    with pytest.raises(UnknownComponentError) as info:
        harness.create("losses", "infonce")
    assert "did you mean 'loss'" in str(info.value)
    assert "encoder" in str(info.value) and "estimator" in str(info.value)


def test_unknown_name_lists_available_with_did_you_mean():
    with pytest.raises(UnknownComponentError) as info:
        harness.create("loss", "infonse")
    assert "did you mean 'infonce'" in str(info.value)
    assert "available:" in str(info.value)


def test_unknown_param_lists_valid_params_with_did_you_mean():
    with pytest.raises(UnknownComponentError) as info:
        harness.create("loss", "infonce", temprature=0.1)
    message = str(info.value)
    assert "temprature" in message and "did you mean 'temperature'" in message
    assert "valid parameters: " in message


def test_missing_required_param_is_named():
    registry = Registry(entry_points=False)

    class Needs:
        """Needs a parameter."""

        def __init__(self, size):
            self.size = size

    class Plugin:
        @harness.hookimpl
        def register_losses(self, register):
            register("needs", Needs)

    registry.add_plugin(Plugin(), "needs-plugin")
    with pytest.raises(UnknownComponentError, match="needs parameter"):
        registry.create("loss", "needs")
    assert registry.create("loss", "needs", size=3).size == 3


def test_duplicate_names_across_plugins_name_both_plugins():
    class First:
        @harness.hookimpl
        def register_losses(self, register):
            register("same", torch.nn.Identity)

    class Second:
        @harness.hookimpl
        def register_losses(self, register):
            register("same", torch.nn.Identity)

    registry = Registry(entry_points=False)
    registry.add_plugin(First(), "first-plugin")
    registry.add_plugin(Second(), "second-plugin")
    with pytest.raises(DuplicateComponentError) as info:
        registry.available()
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)


def test_a_named_plugin_module_that_fails_to_import_is_an_error():
    """The user asked for the module by name: an import failure raises, it is not a mere warning."""
    with pytest.raises(PluginImportError, match="no_such_plugin_module.*ModuleNotFoundError"):
        load_plugins(["harness_test_plugin", "no_such_plugin_module"])
    registry = load_plugins([])  # the failed module is not remembered; the good one still loads
    assert "toy" in registry.available("dataset")["dataset"]
    assert "infonce" in registry.available("loss")["loss"]


def test_registration_hook_that_raises_is_isolated():
    class Broken:
        @harness.hookimpl
        def register_losses(self, register):
            raise RuntimeError("cannot register")

    registry = Registry()
    registry.add_plugin(Broken(), "broken-registrar")
    assert "infonce" in registry.available("loss")["loss"]
    assert any(e.name == "broken-registrar" and "cannot register" in e.error
               for e in registry.load_errors)


def test_broken_entry_point_plugin_is_reported_by_the_cli(tmp_path):
    """A distribution whose entry point fails to import: `harness plugins` reports it, lists the rest."""
    dist = tmp_path / "harness_broken-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-broken\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text("[harness]\nbroken = harness_broken_plugin\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{tmp_path}:{TESTS / 'fixtures' / 'broken_plugin'}:{env['PYTHONPATH']}"
    out = subprocess.run([*harness_cmd(), "plugins"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "broken" in out.stdout and "FAILED" in out.stdout
    assert "deliberately broken" in out.stdout + out.stderr
    assert "encoders" in out.stdout and "register_encoders" in out.stdout
    assert "Traceback" not in out.stderr


def test_list_shows_plugin_and_description():
    out = subprocess.run([*harness_cmd(), "list", "loss"], capture_output=True, text=True,
                         env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if " infonce " in f" {l} ")
    assert "losses" in line and "InfoNCE" in line
    assert "small-cnn" not in out.stdout  # only the asked kind


def test_list_unknown_kind_exits_2():
    out = subprocess.run([*harness_cmd(), "list", "lossez"], capture_output=True, text=True,
                         env=cli_env(), timeout=120)
    assert out.returncode == 2
    assert "did you mean 'loss'" in out.stderr and "Traceback" not in out.stderr


def test_cli_plugin_option_loads_module():
    out = subprocess.run([*harness_cmd(), "--plugin", "harness_test_plugin", "list", "dataset"],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "toy" in out.stdout and "harness_test_plugin" in out.stdout
    out = subprocess.run([*harness_cmd(), "plugins", "-p", "harness_test_plugin"],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    assert "harness_test_plugin" in out.stdout and "--plugin" in out.stdout
    assert "on_run_end" in out.stdout


def test_a_misspelt_hook_is_an_error_not_a_silent_no_op(tmp_path, monkeypatch):
    (tmp_path / "misspelt_plugin.py").write_text(
        "from harness import hookimpl\n\n@hookimpl\ndef register_lossez(register):\n"
        "    register('never', object)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginImportError, match="register_lossez match no hook.*did you mean 'register_losses'"):
        load_plugins(["misspelt_plugin"])
    registry = Registry()
    registry.add_plugin(__import__("misspelt_plugin"), "misspelt")  # an object: reported, not raised
    assert any(e.name == "misspelt" and "register_lossez" in e.error for e in registry.load_errors)
    assert "never" not in registry.available("loss")["loss"]


def test_loading_the_bundled_plugins_does_not_import_torchvision_or_sklearn_metrics():
    # every `harness` command loads every plugin; torchvision (~1 s: it loads torch._dynamo) and
    # sklearn.metrics are imported where they are used, not at plugin load
    code = ("import sys; from harness.registry import default_registry; default_registry(); "
            "print(sorted(m for m in ('torchvision', 'sklearn.metrics') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
