"""Regression tests for results that could put wrong or unexplainable numbers in a paper: tables that mix
configurations, plugins missing from provenance, unchecked report metrics, progress-bar noise in logs."""

import copy
import json
import re
import subprocess

import pytest

from harness.errors import ConfigError, HarnessError
from harness.registry import reset_default_registry
from harness.results import load_results, read_result
from harness.runner import run
from harness.tables import build_table, group_runs

from conftest import cli_env, harness_cmd


def _sweep_config(toy_config, values, seeds, epochs):
    toy_config["methods"] = [{"name": "infonce", "loss": {"name": "infonce"},
                              "sweep": {"loss.temperature": values}}]
    toy_config["seeds"] = seeds
    toy_config["defaults"]["train"]["epochs"] = epochs
    return toy_config


def test_run_table_holds_only_this_configuration_and_table_dir_never_mixes_configurations(
        tmp_path, toy_config):
    """The sequence from the issue: a 3-point sweep with seeds 0–1; then 2 points, seeds 0–2, more
    epochs; then seed 0 only, more epochs again, with --overwrite."""
    run(_sweep_config(copy.deepcopy(toy_config), [0.05, 0.1, 0.5], [0, 1], 1), tmp_path, progress=False)
    # different epochs: the finished results of seeds 0-1 are stale, so the run stops before training
    second = _sweep_config(copy.deepcopy(toy_config), [0.05, 0.1], [0, 1, 2], 2)
    with pytest.raises(HarnessError, match=r"train\.epochs: 1 in the file, 2 now"):
        run(second, tmp_path, progress=False)
    run(second, tmp_path, overwrite=True, progress=False)
    messages = []
    outcome = run(_sweep_config(copy.deepcopy(toy_config), [0.05, 0.1], [0], 3), tmp_path,
                  overwrite=True, progress=False, echo=messages.append)

    # --overwrite says what it replaces and what it leaves behind
    said = next(m for m in messages if m.startswith("--overwrite"))
    assert "replacing 2 result file(s)" in said and "leaving 6 other result file(s)" in said
    assert "infonce@temperature=0.5/seed-0.json" in said
    # the run's table: only the 2 planned runs (epochs 3, seed 0), never averaged with epochs-2 seeds
    assert [(row.label, [r.seed for r in row.runs]) for row in group_runs(outcome.results)] == [
        ("infonce@temperature=0.05", [0]), ("infonce@temperature=0.1", [0])]
    lines = [line for line in outcome.table.splitlines() if "infonce@" in line]
    assert len(lines) == 2 and "0.5" not in outcome.table
    assert all(re.search(r"\|\s*1\s*\|\s*ok\s*\|", line) for line in lines), outcome.table  # 1 seed
    assert (tmp_path / "toy" / "table.md").read_text().strip() == outcome.table
    warning = next(m for m in messages if m.startswith("warning:") and "not runs of this" in m)
    assert "6 result file(s)" in warning and "infonce@temperature=0.05/seed-1.json" in warning

    # harness table DIR: one row per configuration, labelled by the first differing field
    rows = {row.label: row for row in group_runs(load_results(tmp_path / "toy"))}
    assert set(rows) == {"infonce@temperature=0.05 [train.epochs=3]",
                         "infonce@temperature=0.05 [train.epochs=2]",
                         "infonce@temperature=0.1 [train.epochs=3]",
                         "infonce@temperature=0.1 [train.epochs=2]", "infonce@temperature=0.5"}
    assert [r.seed for r in rows["infonce@temperature=0.05 [train.epochs=2]"].runs] == [1, 2]
    assert {r.config["train"]["epochs"] for r in rows["infonce@temperature=0.05 [train.epochs=2]"].runs} == {2}
    epochs3 = rows["infonce@temperature=0.05 [train.epochs=3]"]
    seed0 = read_result(tmp_path / "toy" / "infonce@temperature=0.05" / "seed-0.json")
    assert epochs3.mean_std("retrieval/t2i_R@1") == (seed0.metrics["retrieval/t2i_R@1"], 0.0)
    assert "[train.epochs=2]" in build_table(load_results(tmp_path / "toy"))


PLUGIN = '''
import torch
from harness import hookimpl

class ScaledMSE(torch.nn.Module):
    """Mean squared distance of the pairs, times {scale}."""

    def forward(self, image_emb, text_emb):
        return {scale} * (image_emb - text_emb).pow(2).mean()

@hookimpl
def register_losses(register):
    register("scaled-mse", ScaledMSE)
'''


def test_a_plugin_module_is_recorded_with_its_hash_and_an_edit_makes_results_stale(
        tmp_path, toy_config, monkeypatch):
    module = tmp_path / "plugin_src" / "edited_plugin.py"
    module.parent.mkdir()
    module.write_text(PLUGIN.format(scale=1.0))
    monkeypatch.syspath_prepend(str(module.parent))
    toy_config["plugins"].append("edited_plugin")
    toy_config["methods"] = [{"name": "mse", "loss": {"name": "scaled-mse"}}]
    result = run(toy_config, tmp_path / "out", progress=False).results[0]
    providers = {(p.kind, p.name): p for p in result.providers}
    loss = providers[("loss", "scaled-mse")]
    assert loss.plugin == "edited_plugin" and loss.module == "edited_plugin" and len(loss.sha256) == 64
    dataset = providers[("dataset", "toy")]
    assert dataset.module == "harness_test_plugin" and dataset.sha256
    infonce_free = providers[("encoder", "small-cnn")]  # a bundled component: distribution + version
    assert infonce_free.distribution == "multimodal-harness" and infonce_free.version

    messages = []
    reset_default_registry()
    run(toy_config, tmp_path / "out", progress=False, echo=messages.append)
    assert any("already done" in m for m in messages)  # unchanged code: same configuration

    module.write_text(PLUGIN.format(scale=2.0))  # the user edits the plugin's forward
    reset_default_registry()
    with pytest.raises(HarnessError, match=r"providers\.loss scaled-mse\.sha256"):
        run(toy_config, tmp_path / "out", progress=False)


def _install_dist(root, version):
    """A plugin distribution on sys.path: module + dist-info with an entry point (as pip installs it)."""
    (root / "versioned_plugin.py").write_text(PLUGIN.format(scale=1.0))
    for old in root.glob("*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = root / f"versioned_plugin-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: versioned-plugin\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[harness]\nversioned = versioned_plugin\n")


def test_an_entry_point_plugin_is_recorded_with_its_version_and_an_upgrade_makes_results_stale(
        tmp_path, toy_config, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    _install_dist(root, "1.0")
    monkeypatch.syspath_prepend(str(root))
    reset_default_registry()
    toy_config["methods"] = [{"name": "mse", "loss": {"name": "scaled-mse"}}]
    result = run(toy_config, tmp_path / "out", progress=False).results[0]
    loss = next(p for p in result.providers if p.kind == "loss")
    assert (loss.plugin, loss.distribution, loss.version) == ("versioned", "versioned-plugin", "1.0")
    assert json.loads((tmp_path / "out" / "toy" / "mse" / "seed-0.json").read_text())["providers"]

    _install_dist(root, "1.1")
    reset_default_registry()
    with pytest.raises(HarnessError, match=r"version: '1.0' in the file, '1.1' now"):
        run(toy_config, tmp_path / "out", progress=False)


def test_a_result_without_providers_cannot_vouch_for_its_code(tmp_path, toy_config):
    run(toy_config, tmp_path, progress=False)
    path = tmp_path / "toy" / "infonce" / "seed-0.json"
    data = json.loads(path.read_text())
    data["providers"] = None  # as written before providers were recorded
    path.write_text(json.dumps(data))
    with pytest.raises(HarnessError, match="records no providers"):
        run(toy_config, tmp_path, progress=False)


def _cli(*args, tmp_path):
    return subprocess.run([*harness_cmd(), *args], capture_output=True, text=True, env=cli_env(),
                          timeout=300, cwd=tmp_path)


def test_plugin_modules_that_fail_to_import_are_errors_with_exit_2(tmp_path, toy_config):
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(toy_config))
    out = _cli("run", str(path), "-p", "no_such_module", "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--plugin no_such_module" in out.stderr and "ModuleNotFoundError" in out.stderr
    toy_config["plugins"].append("no_such_module")
    path.write_text(json.dumps(toy_config))
    out = _cli("validate", str(path), tmp_path=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{path}: plugins[1]" in out.stderr and "no_such_module" in out.stderr
    assert not (tmp_path / "o").exists()


def test_a_report_metric_the_evaluators_do_not_produce_stops_before_training(tmp_path, toy_config):
    toy_config["report"]["metrics"] = ["retrieval/t2i_R@1", "retrieval/R@1"]
    with pytest.raises(ConfigError) as info:
        run(toy_config, tmp_path, progress=False)
    assert info.value.field == "report.metrics[1]"
    assert "did you mean 'retrieval/t2i_R@1'" in str(info.value) or "did you mean 'retrieval/i2t_R@1'" \
        in str(info.value)
    assert not (tmp_path / "toy").exists()  # nothing trained, nothing written
    toy_config["report"]["metrics"] = ["retrieval/t2i_R@50"]  # a k the evaluator was not asked for
    with pytest.raises(ConfigError, match="does not produce 't2i_R@50'"):
        run(toy_config, tmp_path, progress=False)
    toy_config["evaluators"] = [{"name": "retrieval", "ks": [1, 50]}]
    assert run(toy_config, tmp_path, progress=False).ok
    toy_config["eval_splits"] = ["test"]
    toy_config["report"]["metrics"] = ["val/retrieval/rsum"]  # val is not evaluated
    with pytest.raises(ConfigError, match="report.metrics"):
        run(toy_config, tmp_path, progress=False)


def test_undeclared_evaluator_metrics_are_not_checked(tmp_path, toy_config):
    toy_config["evaluators"] = [{"name": "embedding-norm"}]
    toy_config["report"]["metrics"] = ["embedding-norm/norm"]
    assert run(toy_config, tmp_path, progress=False).ok


def test_results_record_units_and_chance_levels(tmp_path, toy_config):
    result = run(toy_config, tmp_path, progress=False).results[0]
    assert result.units["retrieval/t2i_R@1"] == "%" and "retrieval/t2i_medr" not in result.units
    n_images = 16  # the toy test split; one correct image among 16
    assert result.chance["retrieval/t2i_R@1"] == pytest.approx(100 / n_images)
    assert result.chance["retrieval/t2i_R@10"] == pytest.approx(100 * 10 / n_images)
    # 2 of 32 texts belong to each image: P(neither in a random top 1) = 30/32
    assert result.chance["retrieval/i2t_R@1"] == pytest.approx(100 * 2 / 32)


def test_val_curves_are_recorded_every_val_every_epochs(tmp_path, toy_config):
    toy_config["eval_splits"] = ["val", "test"]
    toy_config["defaults"]["train"].update(epochs=4, val_every=2)
    result = run(toy_config, tmp_path, progress=False).results[0]
    with_val = [h["epoch"] for h in result.history if "val/retrieval/rsum" in h]
    assert with_val == [1, 3]  # every 2 epochs; the last carries the final val scores
    assert result.history[-1]["val/retrieval/rsum"] == result.metrics["val/retrieval/rsum"]


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, toy_config):
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(toy_config))
    out = _cli("run", str(path), "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "step/s" not in out.stderr and "it/s" not in out.stderr
    assert "[1/1] infonce seed=0: ok" in out.stderr  # one line per finished run instead


def test_show_prints_parameters_context_trainable_parameters_and_formula(tmp_path):
    out = _cli("show", "loss", "infonce", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "temperature: float  (default 0.07)" in text
    assert "learnable_temperature: bool  (default False)" in text
    assert "trainable parameters of its own: none" in text
    assert "with learnable_temperature: true: logit_scale" in text and "without weight decay" in text
    assert "L = ½ [CE(S/τ, diag) + CE(Sᵀ/τ, diag)]" in text  # the formula from the docstring
    encoder = _cli("list", "encoder", "small-cnn", tmp_path=tmp_path)
    assert encoder.returncode == 0 and "context parameters (filled in by the runner): dataset_info, " \
        "embed_dim" in encoder.stdout
    bad = _cli("show", "loss", "infonc", tmp_path=tmp_path)
    assert bad.returncode == 2 and "did you mean 'infonce'" in bad.stderr and "Traceback" not in bad.stderr
