"""Every benchmark file shipped in benchmarks/ validates (components built on the dataset, one forward
pass per method), except those that need local real data, which fail with one clear config error."""

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.validation import prepare

from conftest import ROOT

NEEDS_LOCAL_DATA = {"coco-grounding.yaml", "podguzova-coco.yaml"}
FILES = sorted((ROOT / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_benchmark_files_validate(path: Path):
    if path.name in NEEDS_LOCAL_DATA:
        with pytest.raises(ConfigError) as info:
            prepare(path)
        assert info.value.field == "dataset.name" and "unknown dataset" in str(info.value)
        return
    spec, _, _ = prepare(path)  # raises ConfigError naming the field if anything is off
    assert spec.methods and spec.report.metrics
