"""Experiment loggers attached to one run, and the isolation that keeps every observer from changing it.

A benchmark lists its loggers (``loggers: [{name: tensorboard}, {name: csv}]``, registered with
``register_loggers``); each run builds them afresh, registers them as plugins for that run only and
unregisters (and closes) them after it, in whatever process runs the job.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from harness.config import ComponentSpec
from harness.jobs import Job
from harness.registry import Registry


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Whatever runs inside leaves Python's, NumPy's and torch's global random streams as they were
    (CUDA's too, once CUDA is in use), so an observer drawing random numbers changes no later batch,
    dropout mask or initialisation."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def logger_plugin_name(name: str, job: Job) -> str:
    """How a run's logger is named among the plugins (and in warnings)."""
    return f"logger {name} ({job.name} seed={job.seed})"


@contextmanager
def attached_loggers(job: Job, result_path: Path, registry: Registry,
                     echo: Callable[[str], None]) -> Iterator[list[Any]]:
    """Build the job's loggers and register them as plugins while the block runs; a logger that
    cannot be built is reported and left out, never an error of the run. Afterwards each is
    unregistered and its ``close()`` called (errors there are reported too)."""
    attached = []
    for comp in job.loggers:
        spec = ComponentSpec.model_validate(comp)
        name = logger_plugin_name(spec.name, job)
        try:
            with isolated_rng():
                logger = registry.get("logger", spec.name).build(spec.params,
                                                                 {"result_path": Path(result_path)})
            registry.pm.register(logger, name=name)
        except Exception as exc:
            echo(f"warning: {name} could not start, the run goes on without it: "
                 f"{type(exc).__name__}: {exc}")
            continue
        attached.append(logger)
    try:
        yield attached
    finally:
        for logger in attached:
            name = registry.pm.get_name(logger)
            registry.pm.unregister(logger)
            try:
                with isolated_rng():
                    getattr(logger, "close", lambda: None)()
            except Exception as exc:
                echo(f"warning: {name} raised in close: {type(exc).__name__}: {exc}")


def run_folder(root: Path, result_path: Path) -> Path:
    """``<root>/<benchmark>/<method>/seed-<n>``: a run's own folder under a logger's ``dir``."""
    result_path = Path(result_path)
    return Path(root) / result_path.parent.parent.name / result_path.parent.name / result_path.stem


def scalars(logs: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a hook's ``logs`` (``epoch`` and ``stage`` are where, not what)."""
    out = {}
    for key, value in logs.items():
        if key in ("epoch", "stage") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if np.isfinite(value):
            out[key] = float(value)
    return out
