"""Launchers run a benchmark's pending jobs somewhere: in this process, in local worker processes, on a
cluster. A job is fully described by its serializable :class:`harness.jobs.Job`, and its only output is
its result file, so every launcher gives the same files and the table is built from them.

A launcher is registered with ``register_launchers`` and built with its options (``--launcher-opt
KEY=VALUE`` or the benchmark's ``launcher:``); :meth:`Launcher.launch` takes the tasks and yields each
task with its result as runs finish (in any order).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.jobs import Job


@dataclass
class Task:
    """One pending job: where its result goes and what the process that runs it must load."""

    index: int  # position in the benchmark's job list (for "[i/n]" lines and ordering)
    job: Job
    path: Path  # the result file to write
    plugins: list[str]  # modules given with --plugin (the job's own `plugins:` travel in the job)
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "job": self.job.model_dump(mode="json"), "path": str(self.path),
                "plugins": list(self.plugins), "progress": self.progress}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Task":
        return cls(index=data["index"], job=Job.model_validate(data["job"]), path=Path(data["path"]),
                   plugins=list(data["plugins"]), progress=data["progress"])


class Launcher:
    """Runs tasks. ``run_here(task)`` executes one task in the calling process and writes its result
    file (what the inline launcher does, and what worker processes call)."""

    def launch(self, tasks: list[Task], run_here: Callable[[Task], Any]) -> Iterator[tuple[Task, Any]]:
        raise NotImplementedError


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_task(data: dict[str, Any], threads: int | None = None) -> str:
    """Entry point of a worker process: rebuild the registry, run one task, write its result file and
    return it as JSON. ``threads`` caps torch's CPU threads unless the job sets ``train.threads``."""
    import torch

    from harness.registry import load_plugins
    from harness.runner import run_task_here

    task = Task.from_dict(data)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        load_plugins([*task.plugins, *task.job.plugins])
        result = run_task_here(task)
    except Exception as exc:  # e.g. a plugin that imports in the parent but not here
        result = failed_result(task.job, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        from harness.results import write_result
        write_result(task.path, result)
    return result.model_dump_json()


def failed_result(job: Job, error: str, trace: str | None = None):
    """A ``failed`` result for a job that never got to run (its worker died or could not start)."""
    from harness.results import RunResult, provenance, to_jsonable
    now = datetime.now(timezone.utc)
    return RunResult(benchmark=job.benchmark, method=job.name, method_index=job.method_index, seed=job.seed,
                     status="failed", error=error, traceback=trace, report_metrics=job.report_metrics,
                     config=to_jsonable(job.method), evaluators=to_jsonable(job.evaluators),
                     eval_splits=job.eval_splits, plugins=job.plugins, providers=job.providers,
                     sweep=job.sweep, provenance=provenance(now, now, 0.0, None))
