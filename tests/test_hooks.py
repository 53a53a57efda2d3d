"""Every hook is documented and exercised here (a test named ``test_hook_<name>``)."""

import inspect
import sys

import torch

import harness
from harness import hookspecs
from harness.registry import KINDS, Registry, load_plugins
from harness.runner import run

import harness_test_plugin as toy

HOOKS = [name for name, fn in vars(hookspecs).items()
         if callable(fn) and hasattr(fn, "harness_spec")]


def test_every_hook_is_documented():
    assert len(HOOKS) >= 11
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 30, f"hook {name} has no documentation"


def test_every_hook_has_a_test():
    tests = {n for n in dir(sys.modules[__name__]) if n.startswith("test_hook_")}
    missing = [h for h in HOOKS if f"test_hook_{h}" not in tests]
    assert not missing, f"hooks without a test: {missing}"


def test_every_registration_kind_maps_to_a_hook():
    assert set(KINDS.values()) <= set(HOOKS)


def _registered_by(hook: str, plugin: str) -> dict:
    registry = load_plugins([plugin])
    kind = next(k for k, h in KINDS.items() if h == hook)
    return {n: c for n, c in registry.components[kind].items() if c.plugin == plugin}


def test_hook_register_encoders():
    registry = Registry()
    found = registry.components["encoder"]
    assert {"small-cnn", "gru", "mlp", "pixels", "bag-of-words"} <= set(found)
    assert found["small-cnn"].plugin == "encoders"


def test_hook_register_losses():
    assert set(_registered_by("register_losses", "harness_test_plugin")) == {
        "nan-loss", "exploding", "slow-mse", "labelled", "recorder", "max-mean", "token-mse",
        "head-scaled", "hard-exit"}


def test_hook_register_samplers():
    registry = load_plugins(["harness_test_plugin"])
    sampler = registry.create("sampler", "counting")
    assert isinstance(sampler, toy.CountingSampler)


def test_hook_register_evaluators():
    assert "embedding-norm" in _registered_by("register_evaluators", "harness_test_plugin")


def test_hook_register_datasets():
    registry = load_plugins(["harness_test_plugin"])
    dataset = registry.create("dataset", "toy", size=16)
    assert len(dataset.split("train")) == 16


def test_hook_register_heads():
    registry = load_plugins(["harness_test_plugin"])
    assert "scale-head" in registry.available("head")["head"]
    head = registry.create("head", "scale-head")
    assert [n for n, _ in head.named_parameters()] == ["scale"]


def test_hook_register_transforms():
    assert "counting" in _registered_by("register_transforms", "harness_test_plugin")
    assert {"gaze", "hflip"} <= set(Registry().available("transform")["transform"])
    transform = load_plugins(["harness_test_plugin"]).create("transform", "counting", noise=0.0)
    images = torch.rand(2, 3, 4, 4)
    assert torch.equal(transform(images), images)


def test_hook_register_fusions():
    registry = Registry()
    assert {"concat", "sum", "product", "bilinear", "mlb", "mutan", "mcb"} <= set(registry.available("fusion")["fusion"])
    assert registry.components["fusion"]["mcb"].plugin == "fusion"
    mcb = registry.create("fusion", "mcb", x_dim=8, y_dim=6, dim=32)  # x_dim, y_dim: context parameters
    assert mcb(torch.rand(2, 8), torch.rand(2, 6)).shape == (2, 32)
    assert "x_dim" not in registry.get("fusion", "mcb").parameters()


def test_hook_register_launchers():
    registry = Registry()
    assert {"inline", "processes", "submitit"} <= set(registry.available("launcher")["launcher"])
    assert registry.create("launcher", "processes", jobs=3).jobs == 3
    assert registry.create("launcher", "submitit", partition="gpu").parameters == {"slurm_partition": "gpu"}


def test_hook_register_estimators():
    assert "lstsq" in _registered_by("register_estimators", "harness_test_plugin")


def _run_toy(tmp_path, toy_config, **extra):
    toy.EVENTS.clear()
    toy_config["methods"].append({"name": "counted", "loss": {"name": "infonce"},
                                  "sampler": {"name": "counting"}})
    toy_config.update(extra)
    return run(toy_config, tmp_path, progress=False, echo=lambda m: None)


def test_hook_on_benchmark_start(tmp_path, toy_config):
    _run_toy(tmp_path, toy_config)
    assert toy.EVENTS[0] == ("benchmark_start", "toy", 2)


def test_hook_on_run_start(tmp_path, toy_config):
    _run_toy(tmp_path, toy_config)
    assert [e for e in toy.EVENTS if e[0] == "run_start"] == [("run_start", "infonce", 0),
                                                             ("run_start", "counted", 0)]


def test_hook_on_epoch_end(tmp_path, toy_config):
    _run_toy(tmp_path, toy_config)
    epochs = [e for e in toy.EVENTS if e[0] == "epoch_end" and e[1] == "infonce"]
    assert [e[2] for e in epochs] == [0, 1]
    assert all(isinstance(e[3], float) for e in epochs)
    # the sampler's after_step ran on every step of the counted method (64 / 16 = 4 steps × 2 epochs)
    assert [e for e in toy.EVENTS if e[0] == "sampler_step"][-1] == ("sampler_step", 8)


def test_hook_on_step_end(tmp_path, toy_config):
    toy_config["defaults"]["train"]["epochs"] = 6  # 4 steps per epoch: 24 steps, 0 … 23
    _run_toy(tmp_path, toy_config)
    steps = [e for e in toy.EVENTS if e[0] == "step_end" and e[1] == "infonce"]
    assert [e[2] for e in steps] == [0, 10, 20]  # every STEP_HOOK_EVERY-th step, across epochs
    assert [e[4] for e in steps] == [0, 2, 5]  # the epoch each step was in
    assert all(isinstance(e[3], float) for e in steps)


def test_hook_register_loggers():
    registry = Registry()
    assert {"tensorboard", "csv", "mlflow"} <= set(registry.available("logger")["logger"])
    assert registry.get("logger", "csv").plugin == "loggers"


def test_hook_on_run_end(tmp_path, toy_config):
    _run_toy(tmp_path, toy_config)
    assert [e for e in toy.EVENTS if e[0] == "run_end"] == [("run_end", "infonce", "ok"),
                                                           ("run_end", "counted", "ok")]


def test_hook_on_benchmark_end(tmp_path, toy_config):
    outcome = _run_toy(tmp_path, toy_config)
    assert toy.EVENTS[-1] == ("benchmark_end", "toy", 2)
    assert len(outcome.results) == 2


def test_lifecycle_hook_that_raises_is_reported_not_fatal(tmp_path, toy_config):
    toy_config["plugins"].append("harness_test_badlogger")
    messages = []
    outcome = run(toy_config, tmp_path, progress=False, echo=messages.append)
    assert outcome.ok
    assert any("harness_test_badlogger" in m and "logger is down" in m for m in messages)
