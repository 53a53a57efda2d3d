"""``harness reproduce`` (rerun a result file's job, compare metric by metric) and ``harness lock``."""

import json
import platform
import shutil
import statistics
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

import harness
from harness.cli import main
from harness.reproduce import INTEGER_FLOOR, ROUND_OFF, allowed_difference, choose, compare
from harness.results import RunResult, read_result, result_files

from conftest import ROOT


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory):
    """Two seeds of the toy benchmark, run once for the module; tests copy them before editing."""
    config = {
        "name": "toy", "plugins": ["harness_test_plugin"], "dataset": {"name": "toy", "size": 64},
        "seeds": [0, 1],
        "defaults": {"encoders": {"image": {"name": "small-cnn", "channels": [8, 8]},
                                  "text": {"name": "gru", "word_dim": 8, "hidden_dim": 8}},
                     "embed_dim": 8, "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "threads": 1}},
        "methods": [{"name": "infonce", "loss": {"name": "infonce"}}],
        "evaluators": [{"name": "retrieval"}],
    }
    out = tmp_path_factory.mktemp("toy-results")
    outcome = harness.run(config, out_dir=out, progress=False)
    assert outcome.ok
    return out / "toy"


def _copy(toy_results, tmp_path) -> Path:
    target = tmp_path / "toy"
    shutil.copytree(toy_results, target)
    return target / "infonce"


def _shift(data: dict, metric: str, by: float) -> None:
    data["metrics"][metric] += by


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_fresh_run_reproduces_exactly(toy_results, capsys):
    path = toy_results / "infonce" / "seed-0.json"
    assert main(["reproduce", str(path)]) == 0
    out = capsys.readouterr().out
    metrics = len(read_result(path).metrics)
    assert f"environment: the same (fingerprint {read_result(path).provenance.environment.fingerprint})" in out
    assert "identical values" in out
    assert f"reproduced: {metrics} of {metrics} metrics within tolerance ({metrics} identical)" in out
    assert "reproduced: 1 of 1 result file(s)" in out


def test_a_tampered_metric_exits_1_naming_it(toy_results, tmp_path, capsys):
    folder = _copy(toy_results, tmp_path)
    _edit(folder / "seed-0.json", lambda d: _shift(d, "retrieval/t2i_R@1", 0.5))
    assert main(["reproduce", str(folder / "seed-0.json")]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("retrieval/t2i_R@1 "))
    assert "OUTSIDE" in line and "-0.5" in line
    assert sum("OUTSIDE" in line for line in out.splitlines()) == 1  # every other metric reproduced
    assert f"{folder / 'seed-0.json'}: retrieval/t2i_R@1" in out


def test_another_environment_is_judged_by_the_committed_seeds_spread(toy_results, tmp_path, capsys):
    folder = _copy(toy_results, tmp_path)
    seeds = [read_result(folder / f"seed-{s}.json").metrics for s in (0, 1)]
    metric = next(m for m in seeds[0]  # a continuous metric that differs between the seeds
                  if not float(2 * seeds[0][m]).is_integer() and seeds[0][m] != seeds[1][m])
    gap = seeds[1][metric] - seeds[0][metric]

    def committed_elsewhere(shift):
        """Seed 0 as if made in another environment, its value moved by ``shift`` (towards seed 1);
        returns whether that is within 1.5 × the sample std of the two committed seeds."""
        def change(data):
            data["provenance"]["environment"]["fingerprint"] = "0" * 16
            data["metrics"][metric] = seeds[0][metric] + shift
        _edit(folder / "seed-0.json", change)
        return abs(shift) <= 1.5 * statistics.stdev([seeds[0][metric] + shift, seeds[1][metric]])

    assert committed_elsewhere(0.3 * gap)  # the premise: within the spread
    assert main(["reproduce", str(folder / "seed-0.json")]) == 0
    out = capsys.readouterr().out
    assert "environment: different (fingerprint 0000000000000000 in the file" in out
    assert "auto, another environment: within 1.5 × the sample std of the 2 committed seeds" in out
    assert not committed_elsewhere(3 * gap)
    assert main(["reproduce", str(folder / "seed-0.json")]) == 1
    assert f"seed-0.json: {metric}" in capsys.readouterr().out


def test_a_folder_with_sample_checks_n_files_drawn_with_a_printed_seed(toy_results, capsys):
    files = result_files([toy_results])
    assert main(["reproduce", str(toy_results), "--sample", "1", "--sample-seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "sampled 1 of 2 result files with seed 7" in out
    assert f"== {choose(files, 1, 7)[0]}:" in out and out.count("== ") == 1
    assert main(["reproduce", str(toy_results), "--sample", "1"]) == 0  # a fresh seed, printed
    assert "sampled 1 of 2 result files with seed " in capsys.readouterr().out


def test_absolute_tolerance(toy_results, tmp_path, capsys):
    folder = _copy(toy_results, tmp_path)
    _edit(folder / "seed-0.json", lambda d: _shift(d, "retrieval/rsum", 0.25))
    assert main(["reproduce", str(folder / "seed-0.json"), "--tolerance", "0.3"]) == 0
    assert "|difference| ≤ 0.3 for every metric" in capsys.readouterr().out
    assert main(["reproduce", str(folder / "seed-0.json"), "--tolerance", "0.2"]) == 1


@pytest.mark.parametrize("write, words", [
    (lambda p: p.write_text('{"benchmark": "toy", '), ["not valid JSON", "line 1"]),
    (lambda p: p.write_text('{"name": "left-pad", "version": "1.0.0"}'),
     ["not a harness result file", "lacks schema_version"]),
    (lambda p: p.write_text("[1, 2]"), ["not a harness result file"]),
    (lambda p: p.write_bytes(b"\xff\xfe{}"), ["not UTF-8"]),
    (lambda p: _edit(p, lambda d: d.update(seed="zero")), ["seed:", "integer"]),
    (lambda p: _edit(p, lambda d: d.update(schema_version=7)), ["schema_version: 7"]),
    (lambda p: _edit(p, lambda d: d.update(status="failed")), ["status 'failed'", "no metrics"]),
    (lambda p: _edit(p, lambda d: d.update(evaluators=None)), ["older harness", "evaluators"]),
])
def test_bad_input_exits_2_naming_the_file_before_anything_runs(toy_results, tmp_path, capsys, write, words):
    folder = _copy(toy_results, tmp_path)
    bad = folder / "seed-1.json"
    write(bad)
    assert main(["reproduce", str(folder / "seed-0.json"), str(bad)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "==" not in captured.out  # nothing was rerun
    assert f"harness: error: {bad}: " in captured.err
    for word in words:
        assert word in captured.err


@pytest.mark.parametrize("args, words", [
    (["--tolerance", "-1"], ["--tolerance", "non-negative"]),
    (["--tolerance", "loose"], ["--tolerance", "'loose'"]),
    (["--sample", "0"], ["--sample", "positive"]),
])
def test_bad_options_exit_2(toy_results, capsys, args, words):
    assert main(["reproduce", str(toy_results), *args]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words)


def test_missing_paths_and_empty_folders_exit_2(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path / "nowhere.json")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path)]) == 2
    assert f"{tmp_path}: no result files" in capsys.readouterr().err


# --- the tolerance rules --------------------------------------------------------------------------

def test_allowed_difference_rules():
    assert allowed_difference(5.0, 9.0, [5.0, 6.0], same_environment=True, absolute=2.5) == 2.5
    assert allowed_difference(5.0, 5.0, [5.0, 6.0, 7.0], same_environment=True, absolute=None) == 0.0
    # another environment: 1.5 × the seeds' sample std ...
    assert allowed_difference(10.2, 11.7, [10.2, 12.2, 14.2], False, None) == pytest.approx(3.0)
    # ... at least 1 for integer-valued metrics (medians of ranks are whole or half numbers) ...
    assert allowed_difference(9.0, 10.0, [9.0, 9.0, 9.0], False, None) == INTEGER_FLOOR
    assert allowed_difference(132.5, 133.0, [132.5, 132.5], False, None) == INTEGER_FLOOR
    # ... and float round-off for continuous ones without spread (seed-independent closed forms)
    assert allowed_difference(5.08, 5.08, [5.08, 5.08, 5.08], False, None) == pytest.approx(5.08 * ROUND_OFF)


def test_compare_names_missing_and_non_finite_metrics():
    stored = json.loads((ROOT / "results" / "shapes" / "linear-cca" / "seed-0.json").read_text())
    committed = RunResult.model_validate({**stored, "metrics": {"a": 1.0, "b": None, "c": 2.0, "e": 3.0}})
    rerun = RunResult.model_validate({**stored, "metrics": {"a": 1.0, "b": None, "d": 3.0, "e": None}})
    checks = {c.metric: c for c in compare(committed, rerun, [committed], True, None)}
    assert checks["a"].ok and checks["b"].ok  # equal, and non-finite on both sides
    assert not checks["c"].ok and checks["c"].missing == "in the rerun"
    assert not checks["d"].ok and checks["d"].missing == "in the file"
    assert not checks["e"].ok  # finite before, non-finite now


# --- CI smoke: a committed result of a closed-form method reproduces exactly ------------------------

def test_committed_closed_form_result_reproduces_exactly(capsys):
    """A change that silently alters committed numbers fails here: linear CCA on `shapes` (about 5 s)."""
    path = ROOT / "results" / "shapes" / "linear-cca" / "seed-0.json"
    assert main(["reproduce", str(path), "--tolerance", "0"]) == 0, capsys.readouterr().out
    metrics = len(read_result(path).metrics)
    assert f"({metrics} identical)" in capsys.readouterr().out


# --- harness lock -----------------------------------------------------------------------------------

def test_lock_pins_the_recorded_environment(toy_results, tmp_path, capsys):
    target = tmp_path / "requirements-lock.txt"
    assert main(["lock", str(toy_results), "-o", str(target)]) == 0
    text = target.read_text()
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)  # pip reads it
            pins[requirement.name] = str(requirement.specifier)
    installed = read_result(toy_results / "infonce" / "seed-0.json").provenance.environment.installed
    assert pins["torch"] == f"=={metadata.version('torch')}"
    assert pins["numpy"] == f"=={metadata.version('numpy')}"
    assert set(pins) == set(installed) - {"multimodal-harness"}
    assert "# multimodal-harness" in text and "pytest" not in pins  # the checkout itself; no dev tools
    assert f"Python {platform.python_version()}" in text and "pip install -r" in text


def test_lock_refuses_files_from_different_environments(toy_results, tmp_path, capsys):
    folder = _copy(toy_results, tmp_path)
    _edit(folder / "seed-1.json", lambda d: d["provenance"]["environment"]["installed"].update(torch="0.0.1"))
    assert main(["lock", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "different environments: torch" in err and "0.0.1 in" in err and "seed-1.json" in err


def test_lock_of_files_that_predate_environments_checks_their_torch_and_python(tmp_path, capsys):
    folder = tmp_path / "old" / "linear-cca"
    folder.mkdir(parents=True)
    committed = ROOT / "results" / "shapes" / "linear-cca" / "seed-0.json"

    def write(torch_version):
        data = json.loads(committed.read_text())
        data["provenance"].update(torch=torch_version, python=platform.python_version())
        (folder / "seed-0.json").write_text(json.dumps(data))

    write(torch.__version__)  # as this environment: its pins stand for the file's
    assert main(["lock", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"torch=={metadata.version('torch')}" in out and "predate full environment records" in out
    write("0.0.1+cpu")
    assert main(["lock", str(folder)]) == 2
    assert "produced with torch 0.0.1+cpu" in capsys.readouterr().err
