"""Result files made to order for the leaderboard tests (no training needed)."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path

from harness.results import DatasetRecord, Provenance, RunResult, result_path, write_result

CONFIG = {"name": "infonce", "embed_dim": 16,
          "encoders": {"image": {"name": "small-cnn"}, "text": {"name": "gru"}},
          "loss": {"name": "infonce", "temperature": 0.07}, "train": {"epochs": 2}}
METRICS = ["retrieval/t2i_R@1", "retrieval/t2i_medr"]


def make_result(method: str = "infonce", seed: int = 0, *, benchmark: str = "bench",
                metrics: dict | None = None, temperature: float = 0.07, fingerprint: str = "f" * 32,
                status: str = "ok", index: int = 0, error: str | None = None) -> RunResult:
    config = copy.deepcopy(CONFIG)
    config["name"], config["loss"]["temperature"] = method, temperature
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    return RunResult(
        benchmark=benchmark, method=method, method_index=index, seed=seed, status=status, error=error,
        metrics=(metrics if metrics is not None else {}) if status == "ok" else {},
        higher_is_better={"retrieval/t2i_R@1": True, "retrieval/t2i_medr": False},
        units={"retrieval/t2i_R@1": "%"}, report_metrics=METRICS, config=config,
        dataset=DatasetRecord(name="shapes", params={"train_size": 64}, fingerprint=fingerprint),
        evaluators=[{"name": "retrieval"}], eval_splits=["test"], providers=[],
        history=[{"epoch": 0, "loss": 3.0, "lr": 0.001, "seconds": 1.0},
                 {"epoch": 1, "loss": 2.5, "lr": 0.0005, "seconds": 1.0}],
        provenance=Provenance(harness_version="0.1.0", git_sha="abc123def4567890", git_dirty=True,
                              python="3.11.7", torch="2.4.0", cuda=None, device="cpu",
                              platform="Linux", started_at=now, finished_at=now, duration_s=12.5))


def write(folder: Path, result: RunResult, machine: str | None = None) -> Path:
    """Write ``result`` as ``harness run`` would, under ``folder`` (or ``folder/machine``)."""
    out = folder / machine if machine else folder
    path = result_path(out, result.benchmark, result.method, result.seed)
    write_result(path, result)
    return path


def scores(r_at_1: float, medr: float) -> dict:
    return {"retrieval/t2i_R@1": r_at_1, "retrieval/t2i_medr": medr}
