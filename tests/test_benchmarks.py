"""Every benchmark file shipped in benchmarks/ validates (components built on the dataset, one forward
pass per method), except those that need local real data, which fail with one clear config error."""

from pathlib import Path

import pytest

from harness.errors import ConfigError, MissingDataError
from harness.validation import prepare

from conftest import ROOT

NEEDS_LOCAL_DATA = {"coco-grounding.yaml", "podguzova-coco.yaml", "coco.yaml", "flickr30k.yaml"}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = sorted((ROOT / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_benchmark_files_validate(path: Path):
    if path.name in NEEDS_LOCAL_DATA:  # until --set gives the paths: the annotations file is missing
        with pytest.raises(MissingDataError) as info:
            prepare(path)
        assert info.value.field == "dataset.annotations" and "file not found" in str(info.value)
        spec, _, _ = prepare(path, data=False)  # everything else is checked without the data
        assert spec.methods and spec.report.metrics
        return
    if path.name == "fashion-mnist.yaml" and not FASHION_MNIST.is_dir():
        with pytest.raises(MissingDataError) as info:
            prepare(path)
        assert info.value.field == "dataset.directory" and "apt-get install dataset-fashion-mnist" in str(info.value)
        prepare(path, data=False)
        return
    spec, _, _ = prepare(path)  # raises ConfigError naming the field if anything is off
    assert spec.methods and spec.report.metrics


@pytest.mark.parametrize("name, coco", [("coco.yaml", True), ("flickr30k.yaml", False)])
def test_coco_and_flickr30k_validate_on_karpathy_files_given_with_set(tmp_path, name, coco):
    from real_formats import karpathy_file

    annotations = karpathy_file(tmp_path, {"train": 4, "restval": 1, "val": 2, "test": 2}, coco=coco)
    spec, _, _ = prepare(ROOT / "benchmarks" / name, overrides=[
        f"dataset.annotations={annotations}", f"dataset.images={tmp_path / 'images'}",
        "dataset.image_size=64"],  # small images: the same checks, faster
        forward_check=coco)  # the two files share their methods: one forward pass check is enough
    assert [m.name for m in spec.methods] == ["infonce", "vse++", "moco"]
    assert spec.dataset.name == "karpathy" and spec.eval_splits == ["val", "test"]


def test_validate_without_the_data_checks_the_rest_and_says_the_data_is_missing(capsys):
    """`harness validate` on a committed real-data benchmark on a machine without the data: exit 0,
    "data not checked" naming the missing file's field; a wrong parameter is still an error (exit 2)."""
    from harness.cli import main

    path = str(ROOT / "benchmarks" / "coco.yaml")
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert "configuration ok, data not checked" in out and "dataset.annotations" in out
    assert "file not found" in out and "--set dataset.annotations=" in out
    assert main(["validate", path, "--set", "methods.0.loss.temperatur=0.1"]) == 2
    err = capsys.readouterr().err
    assert "methods[infonce].loss.temperatur" in err and "did you mean 'temperature'" in err
    assert main(["validate", path, "--set", "dataset.restval=maybe"]) == 2  # dataset parameters' types too
    assert "dataset.restval" in capsys.readouterr().err


def test_a_folder_given_for_a_file_is_a_config_error_not_missing_data(tmp_path):
    with pytest.raises(ConfigError) as info:
        prepare(ROOT / "benchmarks" / "coco.yaml", overrides=[f"dataset.annotations={tmp_path}"])
    assert not isinstance(info.value, MissingDataError) and "(it is a folder)" in str(info.value)


def test_podguzova_comparison_is_built_from_the_committed_results(capsys):
    """`benchmarks/podguzova_compare.py` prints Tables 2–5, paper / ours, from the result files."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("podguzova_compare",
                                                  ROOT / "benchmarks" / "podguzova_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(ROOT / "results" / "podguzova")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert len(rows) == 16 and all(line.count(" ± ") == 7 for line in rows)  # 3 seeds: every cell has a spread
    assert "| 16 | 0.595 / " in out and "| 1.0 | 0.610 / " in out  # the paper's published values
    assert out.strip() == (ROOT / "results" / "podguzova" / "paper-comparison.md").read_text().strip()


def test_the_train_step_benchmark_reports_throughput_and_mfu_against_a_named_peak():
    import json
    import subprocess
    import sys
    script = Path(__file__).parent.parent / "benchmarks" / "bench_train_step.py"
    done = subprocess.run([sys.executable, str(script), "--size", "tiny", "--steps", "1", "--warmup", "0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["samples_per_s"] > 0 and report["model_tflops_per_step"] > 0
    assert 0 < report["mfu"] < 1 and "TFLOPS" in report["peak"]
