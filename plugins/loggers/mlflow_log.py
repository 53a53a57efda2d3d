"""The ``mlflow`` logger (optional: ``pip install 'multimodal-harness[mlflow]'``)."""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

from harness import hookimpl
from harness.loggers import scalars

#: characters MLflow allows in metric and parameter names; others become "_" ("R@1" → "R_at_1")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(name: str) -> str:
    return _UNSAFE.sub("_", name.replace("@", "_at_"))


class MlflowLogger:
    """MLflow runs (local file store by default): config, per-step/epoch loss, lr, final metrics.

    One MLflow run per (method, seed) in experiment ``experiment`` (default: the benchmark's name):
    the method config flattened into parameters, per-step ``step/loss``, per-epoch ``loss``, ``lr``,
    ``seconds`` and val scores, the final metrics, and the run's status. ``tracking_uri`` defaults to
    a local file store, ``mlruns`` in the results folder (``mlflow ui --backend-store-uri URI``).
    Metric names are made MLflow-safe (``retrieval/t2i_R@1`` → ``retrieval/t2i_R_at_1``)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, *,
                 result_path: Path):
        try:
            importlib.import_module("mlflow")
        except ImportError:
            raise ValueError("the mlflow logger needs MLflow: pip install 'multimodal-harness[mlflow]'") \
                from None
        result_path = Path(result_path)
        self.tracking_uri = tracking_uri or f"file:{result_path.absolute().parents[2] / 'mlruns'}"
        self.experiment = experiment
        self.client, self.run_id = None, None

    @hookimpl
    def on_run_start(self, job):
        from mlflow.tracking import MlflowClient
        if self.tracking_uri.startswith("file:"):
            # MLflow 3 asks for an opt-in before using a local file store, which is what was asked for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        name = self.experiment or job.benchmark
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=f"{job.name} seed={job.seed}",
                                     tags={"benchmark": job.benchmark, "method": job.name,
                                           "seed": str(job.seed)})
        self.run_id = run.info.run_id
        for key, value in _flatten(job.method).items():
            self.client.log_param(self.run_id, mlflow_key(key), value)

    @hookimpl
    def on_step_end(self, job, step, logs):
        if self.run_id is not None:
            for key, value in scalars(logs).items():
                self.client.log_metric(self.run_id, f"step/{mlflow_key(key)}", value, step=step)

    @hookimpl
    def on_epoch_end(self, job, epoch, logs):
        if self.run_id is not None:
            for key, value in scalars(logs).items():
                self.client.log_metric(self.run_id, mlflow_key(key), value, step=epoch)

    @hookimpl
    def on_run_end(self, job, result):
        if self.run_id is None:
            return
        for key, value in scalars(result.metrics).items():
            self.client.log_metric(self.run_id, f"final/{mlflow_key(key)}", value,
                                   step=len(result.history))
        self.client.set_terminated(self.run_id, "FINISHED" if result.status == "ok" else "FAILED")
        self.run_id = None

    def close(self):
        if self.run_id is not None:  # the run ended without on_run_end (an error while writing)
            self.client.set_terminated(self.run_id, "KILLED")
            self.run_id = None


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"loss": {"name": "infonce"}}`` → ``{"loss.name": "infonce"}``; lists as JSON."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out
