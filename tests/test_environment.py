"""The environment in provenance (packages, CPU, torch build, threads, determinism flags, fingerprint),
deterministic mode, and how tables mark results from different environments."""

import csv
import io
import os
from datetime import datetime, timezone
from importlib import metadata

import pytest
import torch

import harness
from harness.environment import (CUBLAS_DETERMINISTIC, capture_environment, differences, installed_closure,
                                 with_imported)
from harness.jobs import run_settings
from harness.results import RunResult, provenance, read_result
from harness.schema import TrainSpec
from harness.tables import build_table

from conftest import ROOT

CPU = torch.device("cpu")


def test_provenance_records_the_environment_of_the_run(tmp_path, toy_config):
    toy_config["defaults"]["train"]["threads"] = 1
    result = harness.run(toy_config, out_dir=tmp_path, progress=False).results[0]
    env = read_result(tmp_path / "toy" / "infonce" / "seed-0.json").provenance.environment
    assert result.status == "ok" and env is not None
    assert env.installed["torch"] == metadata.version("torch")
    assert env.installed["numpy"] == metadata.version("numpy")
    assert env.installed["multimodal-harness"] == harness.__version__
    assert {"torch", "numpy", "multimodal-harness"} <= set(env.imported)  # what the run imported
    assert env.torch_threads == 1  # the run's setting, not the process default
    assert env.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert env.torch_build["version"] == torch.__version__
    assert env.torch_build["blas"] and env.torch_build["parallel"]
    assert env.deterministic["deterministic_algorithms"] is False
    assert env.device == "cpu" and len(env.fingerprint) == 16
    assert torch.get_num_threads() != 1 or os.cpu_count() == 1  # restored after the run


def test_fingerprint_is_stable_within_an_environment_and_names_what_changed():
    with run_settings(TrainSpec(threads=1), CPU):
        one, again = capture_environment(CPU), capture_environment(CPU)
    with run_settings(TrainSpec(threads=2), CPU):
        two = capture_environment(CPU)
    assert one.fingerprint == again.fingerprint
    # which modules a process imported depends on what it ran before: not part of the fingerprint
    assert with_imported(one).fingerprint == one.fingerprint and with_imported(one).imported
    assert two.fingerprint != one.fingerprint
    assert differences(one, two) == ["torch_threads: 1 → 2"]
    newer = one.model_copy(update={"installed": {**one.installed, "numpy": "99.0"}})
    assert differences(one, newer) == [f"numpy {one.installed['numpy']} → 99.0"]


def test_installed_closure_follows_requirements_but_not_unrequested_extras():
    closure = installed_closure(frozenset({"multimodal-harness"}))
    assert {"torch", "pydantic", "pluggy"} <= set(closure)  # direct requirements
    assert "pydantic-core" in closure  # a requirement of a requirement
    assert "pytest" not in closure  # only in the harness's `dev` extra
    assert list(closure) == sorted(closure)


def test_older_result_files_without_an_environment_still_load():
    old = read_result(ROOT / "results" / "shapes" / "linear-cca" / "seed-0.json")
    assert old.provenance.environment is None and old.status == "ok"
    now = datetime.now(timezone.utc)
    new = RunResult(benchmark="b", method="m", seed=0, status="ok", config={"name": "m"},
                    provenance=provenance(now, now, 0.0, "cpu", capture_environment(CPU)))
    assert RunResult.model_validate_json(new.model_dump_json()) == new


def _torch_flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, torch.get_num_threads(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_deterministic_mode_sets_torch_flags_and_restores_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _torch_flags()
    assert before[0] is False
    with run_settings(TrainSpec(deterministic=True, threads=1), CPU):
        assert _torch_flags() == (True, True, False, 1, None)  # cuBLAS's setting only on CUDA
        assert capture_environment(CPU).deterministic["deterministic_algorithms"] is True
    assert _torch_flags() == before
    with pytest.raises(RuntimeError, match="inside"):  # restored when the run raises, too
        with run_settings(TrainSpec(deterministic=True), torch.device("cuda")):
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC
            assert torch.are_deterministic_algorithms_enabled()
            raise RuntimeError("inside")
    assert _torch_flags() == before


def test_a_deterministic_run_records_its_flags_and_leaves_them_off(tmp_path, toy_config):
    toy_config["defaults"]["train"]["deterministic"] = True
    outcome = harness.run(toy_config, out_dir=tmp_path, progress=False)
    result = outcome.results[0]
    assert result.status == "ok", result.error
    assert result.config["train"]["deterministic"] is True
    flags = result.provenance.environment.deterministic
    assert flags["deterministic_algorithms"] and flags["cudnn_deterministic"] and not flags["cudnn_benchmark"]
    assert not torch.are_deterministic_algorithms_enabled()


# --- tables mark results from different environments ---------------------------------------------

def _result(method, seed, value, fingerprint, index=0):
    now = datetime.now(timezone.utc)
    env = None if fingerprint is None else capture_environment(CPU).model_copy(
        update={"fingerprint": fingerprint})
    return RunResult(benchmark="b", method=method, method_index=index, seed=seed, status="ok",
                     metrics={"r/R@1": value}, higher_is_better={"r/R@1": True}, config={"name": method},
                     provenance=provenance(now, now, 0.0, "cpu", env))


def test_table_of_one_environment_has_no_environment_column():
    results = [_result("alpha", s, 10.0 + s, "a" * 16) for s in range(2)]
    assert "environment" not in build_table(results)
    assert "environment" not in build_table(results, fmt="csv")


def test_table_marks_rows_from_different_environments():
    results = [_result("alpha", 0, 10.0, "a" * 16), _result("alpha", 1, 12.0, "b" * 16),
               _result("beta", 0, 20.0, "a" * 16, index=1), _result("beta", 1, 21.0, "a" * 16, index=1),
               _result("gamma", 0, 5.0, None, index=2)]
    table = build_table(results)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["method"].rstrip(" |").endswith("environment")
    assert rows["alpha"].rstrip(" |").endswith("A, B")  # its seeds mix two environments
    assert rows["beta"].rstrip(" |").endswith("A") and rows["gamma"].rstrip(" |").endswith("C")
    note = next(line for line in table.splitlines() if "environments" in line and not line.startswith("|"))
    assert "3 environments" in note and f"A: {'a' * 16}" in note
    assert "C: torch" in note and "no fingerprint recorded" in note
    rows_csv = list(csv.DictReader(io.StringIO(build_table(results, fmt="csv"))))
    assert rows_csv[0]["environment"].count(";") == 1 and rows_csv[0]["environment"].startswith("a" * 16)
    for fmt in ("latex", "html"):  # the other formats take the column and the note too
        text = build_table(results, fmt=fmt)
        assert "environment" in text and "3 environments" in text
