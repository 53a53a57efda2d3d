"""What a submitit job runs. Kept apart from the launcher so that importing the launcher plugin never
needs submitit; a job imports this module, and submitit with it."""

from __future__ import annotations

from typing import Any

import submitit

from harness.launchers import run_task


class RunTask(submitit.helpers.Checkpointable):
    """Runs one task in the job. On preemption or time-out submitit calls the inherited ``checkpoint``,
    which requeues the same task: the rerun continues from the job's last mid-run checkpoint
    (``train.checkpoint_every``), or starts over without one."""

    def __call__(self, task: dict[str, Any], threads: int | None) -> str:
        return run_task(task, threads)
