import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

import harness.runner
from harness.cli import main
from harness.results import read_result

from conftest import ROOT, TESTS, cli_env, harness_cmd


def _harness(*args, env=None, timeout=300):
    return subprocess.run([*harness_cmd(), *args], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=ROOT)


def test_console_script_and_module_entry_agree():
    script = subprocess.run([str(ROOT / ".venv" / "bin" / "harness"), "--help"], capture_output=True,
                            text=True) if (ROOT / ".venv" / "bin" / "harness").exists() else None
    module = _harness("--help")
    assert module.returncode == 0 and "validate" in module.stdout and "table" in module.stdout
    if script is not None:
        assert script.stdout == module.stdout.replace("__main__.py", "harness")


def test_validate_ok_resolves_every_component(tmp_path, toy_config):
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(toy_config))
    out = _harness("validate", str(path), "--set", "seeds=[0,1,2]")
    assert out.returncode == 0, out.stderr
    assert "1 method(s) × 3 seed(s) = 3 run(s)" in out.stdout
    assert "infonce: small-cnn + gru, loss infonce" in out.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("mutate, words", [
    (lambda c: c["defaults"]["train"].update(lr="fast"), ["defaults.train.lr", "number"]),
    (lambda c: c["methods"][0]["loss"].update(tau=1), ["methods[infonce].loss.tau", "temperature"]),
    (lambda c: c.update(seeds="zero"), ["seeds"]),
    (lambda c: c["methods"][0].update(loss={"name": "infonse"}), ["did you mean 'infonce'"]),
])
def test_bad_config_exits_2_naming_file_and_field_without_traceback(tmp_path, toy_config, mutate, words):
    mutate(toy_config)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(toy_config))
    for command in ("validate", "run"):
        out = _harness(command, str(path), "--out", str(tmp_path / "o")) if command == "run" \
            else _harness(command, str(path))
        assert out.returncode == 2, out.stderr
        assert str(path) in out.stderr and "Traceback" not in out.stderr
        for w in words:
            assert w in out.stderr
    assert not (tmp_path / "o").exists()  # nothing ran


def test_bad_cli_use_exits_2():
    assert _harness("frobnicate").returncode == 2
    assert _harness("run").returncode == 2
    out = _harness("validate", "does-not-exist.yaml")
    assert out.returncode == 2 and "cannot read" in out.stderr and "Traceback" not in out.stderr
    out = _harness("validate", "benchmarks/smoke.yaml", "--set", "novalue")
    assert out.returncode == 2 and "--set" in out.stderr


def test_run_exit_code_1_when_a_run_fails_and_others_finish(tmp_path, toy_config):
    toy_config["methods"].append({"name": "boom", "loss": {"name": "exploding"}})
    path = tmp_path / "mixed.yaml"
    path.write_text(json.dumps(toy_config))
    out = _harness("run", str(path), "--out", str(tmp_path / "o"), "--no-progress")
    assert out.returncode == 1
    assert read_result(tmp_path / "o" / "toy" / "infonce" / "seed-0.json").status == "ok"
    assert read_result(tmp_path / "o" / "toy" / "boom" / "seed-0.json").status == "failed"
    assert "1 failed" in out.stdout  # the printed table shows it


def test_third_party_plugin_installed_with_pip_provides_a_loss(tmp_path, toy_config):
    """pip-install the fixture package (entry point group "harness") and run a benchmark with its loss."""
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(TESTS / "fixtures" / "example_plugin")],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = cli_env()
    env["PYTHONPATH"] = f"{target}:{env['PYTHONPATH']}"
    plugins = _harness("plugins", env=env)
    line = next(l for l in plugins.stdout.splitlines() if l.startswith("example "))
    assert "1.2.3" in line and "entry point" in line and "register_losses" in line
    toy_config["methods"] = [{"name": "third-party", "loss": {"name": "example-margin", "margin": 0.1}}]
    path = tmp_path / "third.yaml"
    path.write_text(json.dumps(toy_config))
    out = _harness("run", str(path), "--out", str(tmp_path / "o"), "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    result = read_result(tmp_path / "o" / "toy" / "third-party" / "seed-0.json")
    assert result.status == "ok" and result.config["loss"] == {"name": "example-margin", "margin": 0.1}
    # without the install, the same benchmark is rejected up front with a clear message
    missing = _harness("validate", str(path))
    assert missing.returncode == 2 and "unknown loss 'example-margin'" in missing.stderr


def test_closed_pipe_is_not_a_traceback():
    """`harness list | head -1`: the reader is gone before the listing is written."""
    proc = subprocess.Popen([*harness_cmd(), "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(), cwd=ROOT)
    proc.stdout.close()  # closed before the child writes (it needs ~1 s to import torch)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


@pytest.fixture
def fake_run(monkeypatch):
    """``harness.runner.run`` replaced by a recorder: proves whether the CLI would have trained."""
    calls = []

    def run(config, out_dir, **kwargs):
        calls.append(out_dir)
        return SimpleNamespace(table="table", directory=out_dir, ok=True)

    monkeypatch.setattr(harness.runner, "run", run)
    return calls


@pytest.mark.parametrize("out", ["file", "file/sub"])
def test_run_with_unusable_out_exits_2_before_training(tmp_path, fake_run, capsys, out):
    (tmp_path / "file").write_text("")
    assert main(["run", "benchmarks/smoke.yaml", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path / out}" in err
    assert fake_run == []  # nothing trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_run_default_out_is_runs_not_the_committed_results(tmp_path, monkeypatch, toy_config, capsys):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy_config))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "toy.yaml", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "toy" / "infonce" / "seed-0.json").is_file()
    assert not (tmp_path / "results").exists()
    assert "default: runs" in _harness("run", "--help").stdout
