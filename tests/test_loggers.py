"""Experiment loggers (tensorboard, csv, mlflow): the files they write, read back; and that no logger,
however badly it behaves, changes a result."""

import contextlib
import csv
import importlib.util
import subprocess
import sys

import pytest

import harness.results
import harness.runner
from harness.errors import ConfigError
from harness.runner import run

import harness_test_loggers as test_loggers
from conftest import ROOT, cli_env, harness_cmd


def _quiet(messages=None):
    return {"progress": False, "echo": (messages.append if messages is not None else lambda m: None)}


def _history_without_time(result):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


def test_tensorboard_event_files_hold_step_epoch_and_final_scalars(tmp_path, toy_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    toy_config["defaults"]["train"]["epochs"] = 3  # 4 steps per epoch: steps 0 and 10 are logged
    toy_config["eval_splits"] = ["val", "test"]
    toy_config["defaults"]["train"]["val_every"] = 1
    toy_config["loggers"] = [{"name": "tensorboard", "dir": str(tmp_path / "tb")}]
    result = run(toy_config, tmp_path / "runs", **_quiet()).results[0]
    assert result.status == "ok", result.error

    events = EventAccumulator(str(tmp_path / "tb" / "toy" / "infonce" / "seed-0")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/lr", "epoch/loss", "epoch/lr", "epoch/seconds",
            "val/retrieval/rsum", "final/retrieval/t2i_R@1", "final/val/retrieval/rsum"} <= tags
    assert [e.step for e in events.Scalars("step/loss")] == [0, 10]
    epoch_loss = events.Scalars("epoch/loss")
    assert [e.step for e in epoch_loss] == [0, 1, 2]
    assert [e.value for e in epoch_loss] == pytest.approx([h["loss"] for h in result.history])
    assert [e.value for e in events.Scalars("epoch/lr")] == pytest.approx([h["lr"] for h in result.history])
    final = events.Scalars("final/retrieval/t2i_R@1")
    assert [(e.step, e.value) for e in final] == [(3, pytest.approx(result.metrics["retrieval/t2i_R@1"]))]
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]


def test_tensorboard_defaults_to_a_folder_in_the_benchmarks_results(tmp_path, toy_config):
    toy_config["loggers"] = [{"name": "tensorboard"}]
    run(toy_config, tmp_path, **_quiet())
    folder = tmp_path / "toy" / "tensorboard" / "infonce" / "seed-0"
    assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())


def test_csv_logger_writes_one_row_per_epoch_beside_the_result(tmp_path, toy_config):
    toy_config["defaults"]["train"]["epochs"] = 3
    toy_config["loggers"] = [{"name": "csv"}]
    result = run(toy_config, tmp_path, **_quiet()).results[0]
    with open(tmp_path / "toy" / "infonce" / "seed-0.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "loss", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["loss"]) for r in rows] == [h["loss"] for h in result.history]
    assert [float(r["seconds"]) for r in rows] == [h["seconds"] for h in result.history]


def test_csv_logger_names_stages(tmp_path, toy_config):
    toy_config["methods"] = [{"name": "staged", "stages": [
        {"name": "warm", "loss": {"name": "infonce"}, "train": {"epochs": 1}},
        {"name": "tune", "loss": {"name": "infonce", "temperature": 0.2}, "train": {"epochs": 1}}]}]
    toy_config["loggers"] = [{"name": "csv", "dir": str(tmp_path / "csv")}]
    run(toy_config, tmp_path / "runs", **_quiet())
    with open(tmp_path / "csv" / "toy" / "staged" / "seed-0.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["epoch"], r["stage"]) for r in rows] == [("0", "warm"), ("1", "tune")]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="MLflow is not installed (pip install 'multimodal-harness[mlflow]')")
def test_mlflow_logger_records_a_run_per_seed_in_a_local_file_store(tmp_path, toy_config):
    from mlflow.tracking import MlflowClient

    toy_config["seeds"] = [0, 1]
    toy_config["loggers"] = [{"name": "mlflow"}]
    outcome = run(toy_config, tmp_path, **_quiet())
    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("toy")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["infonce seed=0", "infonce seed=1"]
    for mlrun in runs:
        result = next(r for r in outcome.results if mlrun.info.run_name.endswith(f"={r.seed}"))
        assert mlrun.info.status == "FINISHED"
        assert mlrun.data.params["loss.name"] == "infonce"
        assert mlrun.data.metrics["final/retrieval/t2i_R_at_1"] == pytest.approx(
            result.metrics["retrieval/t2i_R@1"])
        losses = client.get_metric_history(mlrun.info.run_id, "loss")
        assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(
            [h["loss"] for h in result.history])


def test_mlflow_logger_without_mlflow_is_a_config_error(tmp_path, toy_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    toy_config["loggers"] = [{"name": "mlflow"}]
    with pytest.raises(ConfigError) as info:
        run(toy_config, tmp_path, **_quiet())
    assert info.value.field == "loggers[mlflow]" and "multimodal-harness[mlflow]" in str(info.value)


def _dropout_config(toy_config):
    # dropout draws from torch's global generator during training: any stray draw would show
    toy_config["defaults"]["encoders"]["image"]["head"] = {"hidden": [8], "dropout": 0.5}
    toy_config["defaults"]["train"]["epochs"] = 6
    toy_config["plugins"].append("harness_test_loggers")
    return toy_config


@pytest.mark.parametrize("isolated", [True, False])
def test_a_logger_never_changes_a_result(tmp_path, toy_config, monkeypatch, isolated):
    toy_config = _dropout_config(toy_config)
    plain = run(toy_config, tmp_path / "plain", **_quiet()).results[0]
    if not isolated:  # the control: without the isolation, this test would see the vandal's draws
        monkeypatch.setattr(harness.runner, "isolated_rng", contextlib.nullcontext)
    toy_config["loggers"] = [{"name": "vandal"}, {"name": "tensorboard"}, {"name": "csv"},
                             {"name": "unstartable"}]
    messages = []
    test_loggers.CALLS.clear()
    logged = run(toy_config, tmp_path / "logged", **_quiet(messages)).results[0]
    assert {"on_run_start", "on_step_end", "on_epoch_end", "on_run_end"} <= set(test_loggers.CALLS)
    same = logged.metrics == plain.metrics and _history_without_time(logged) == _history_without_time(plain)
    assert same is isolated
    assert logged.status == "ok" and logged.seed == 0 and logged.config == plain.config
    stored = harness.results.read_result(tmp_path / "logged" / "toy" / "infonce" / "seed-0.json")
    assert stored.metrics == logged.metrics and stored.status == "ok"
    if isolated:
        # reported once (not once per epoch), and the others kept logging
        broke = [m for m in messages if "vandal breaks" in m]
        assert broke == ["warning: plugin 'logger vandal (infonce seed=0)' raised in on_epoch_end: "
                         "RuntimeError: vandal breaks in on_epoch_end (its later errors in on_epoch_end "
                         "are not shown)"]
        assert [m for m in messages if "unstartable" in m] == [
            "warning: logger unstartable (infonce seed=0) could not start, the run goes on without it: "
            f"PermissionError: cannot write beside {tmp_path / 'logged' / 'toy' / 'infonce' / 'seed-0.json'}"]
        assert (tmp_path / "logged" / "toy" / "infonce" / "seed-0.csv").exists()
        assert (tmp_path / "logged" / "toy" / "tensorboard" / "infonce" / "seed-0").is_dir()


def test_loggers_are_not_part_of_a_results_configuration(tmp_path, toy_config):
    messages = []
    run(toy_config, tmp_path, **_quiet())
    toy_config["loggers"] = [{"name": "csv"}]
    run(toy_config, tmp_path, **_quiet(messages))  # the finished run is reused, not stale
    assert any("already done" in m for m in messages)


def test_loggers_work_in_worker_processes(tmp_path, toy_config):
    toy_config["seeds"] = [0, 1]
    toy_config["loggers"] = [{"name": "csv"}]
    toy_config["launcher"] = {"name": "processes", "jobs": 2}
    outcome = run(toy_config, tmp_path, **_quiet())
    assert outcome.ok
    for seed in (0, 1):
        assert (tmp_path / "toy" / "infonce" / f"seed-{seed}.csv").read_text().startswith("epoch,loss")


@pytest.mark.parametrize("loggers, field, words", [
    ([{"name": "tensorbord"}], "loggers[tensorbord].name", "did you mean 'tensorboard'"),
    ([{"name": "csv", "folder": "x"}], "loggers[csv].folder", "valid parameters: dir"),
    ([{"name": "tensorboard", "dir": 3}], "loggers[tensorboard].dir", "expected a string or null, got 3"),
    ([{"name": "csv"}, {"name": "csv"}], "loggers", "repeated: csv"),
])
def test_logger_config_errors_name_the_field(tmp_path, toy_config, loggers, field, words):
    toy_config["loggers"] = loggers
    with pytest.raises(ConfigError) as info:
        run(toy_config, tmp_path, **_quiet())
    assert info.value.field == field and words in str(info.value)
    assert not (tmp_path / "toy").exists()


def test_loggers_from_the_command_line(tmp_path):
    out = subprocess.run([*harness_cmd(), "run", "benchmarks/smoke.yaml", "--out", str(tmp_path),
                          "--set", "loggers=[{name: csv}]"], capture_output=True, text=True,
                         env=cli_env(), timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "smoke" / "infonce" / "seed-0.csv").read_text().startswith("epoch,loss,lr,seconds\n0,")
