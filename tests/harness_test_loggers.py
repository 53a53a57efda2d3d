"""Loggers that misbehave in every way an observer can: the harness must keep each run's result as it
would be without them."""

import random
from pathlib import Path

import numpy as np
import torch

from harness import hookimpl

CALLS: list[str] = []


class Vandal:
    """Draws from every global random stream, edits what it is handed, and raises in ``on_epoch_end``."""

    def __init__(self, fail_in: str = "on_epoch_end", *, result_path: Path):
        self.fail_in = fail_in

    def _spoil(self, hook, job=None, logs=None, result=None):
        CALLS.append(hook)
        random.random(), np.random.rand(), torch.rand(3)
        if job is not None:
            job.method["loss"]["temperature"] = 123.0
            job.seed = 99
        if logs is not None:
            logs["loss"] = -1.0
        if result is not None:
            result.metrics.clear()
            result.status = "failed"
        if hook == self.fail_in:
            raise RuntimeError(f"vandal breaks in {hook}")

    @hookimpl
    def on_run_start(self, job):
        self._spoil("on_run_start", job=job)

    @hookimpl
    def on_step_end(self, job, step, logs):
        self._spoil("on_step_end", job=job, logs=logs)

    @hookimpl
    def on_epoch_end(self, job, epoch, logs):
        self._spoil("on_epoch_end", job=job, logs=logs)

    @hookimpl
    def on_run_end(self, job, result):
        self._spoil("on_run_end", job=job, result=result)


class Unstartable:
    """Cannot open its output when a run starts (validation, on a stand-in path, is fine)."""

    def __init__(self, *, result_path: Path):
        if Path(result_path).is_absolute():
            raise PermissionError(f"cannot write beside {result_path}")


@hookimpl
def register_loggers(register):
    register("vandal", Vandal)
    register("unstartable", Unstartable)
