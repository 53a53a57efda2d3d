"""The ``submitit`` launcher: each job submitted through ``submitit.AutoExecutor`` — to Slurm, or with
``cluster: local`` to submitit's local executor (subprocesses on this machine, which is how the tests run
it). A job that is preempted or reaches its time limit is requeued by submitit and, with
``train.checkpoint_every``, continues from its last mid-run checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import hookimpl
from harness.errors import ConfigError
from harness.launchers import Launcher, Task, cpu_count, failed_result
from harness.results import RunResult, write_result

#: a day: submitit's local executor otherwise ends a job after 2 minutes
LOCAL_TIMEOUT_MIN = 24 * 60


class Submitit(Launcher):
    """Jobs on a cluster through ``submitit.AutoExecutor``, submitted as one job array.

    ``cluster``: ``slurm``, ``local`` or ``debug`` (default: what submitit detects); ``folder``: where
    submitit keeps its job files and logs (default: ``.submitit`` in the benchmark's results folder,
    which must be on storage the jobs share). Slurm settings: ``partition``, ``gpus_per_node``,
    ``cpus_per_task`` (also the torch threads of each job), ``mem_gb``, ``timeout_min``,
    ``array_parallelism`` (jobs running at once), ``max_num_timeout`` (requeues after time limits) and
    any other ``slurm_*`` option of submitit (``slurm_account``, ``slurm_qos``, ``slurm_constraint``…)."""

    def __init__(self, cluster: str | None = None, folder: str | None = None, partition: str | None = None,
                 gpus_per_node: int | None = None, cpus_per_task: int | None = None,
                 mem_gb: float | None = None, timeout_min: int | None = None,
                 array_parallelism: int | None = None, max_num_timeout: int = 3, **slurm_options: Any):
        if importlib.util.find_spec("submitit") is None:
            raise ValueError("the submitit launcher needs the submitit package: "
                             "pip install 'multimodal-harness[cluster]'")
        unknown = sorted(key for key in slurm_options if not key.startswith("slurm_"))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} (submitit's own Slurm options start "
                             "with slurm_)")
        for name, value in (("gpus_per_node", gpus_per_node), ("cpus_per_task", cpus_per_task),
                            ("timeout_min", timeout_min), ("array_parallelism", array_parallelism)):
            if value is not None and int(value) < (0 if name == "gpus_per_node" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.cluster, self.folder, self.max_num_timeout = cluster, folder, int(max_num_timeout)
        self.cpus_per_task = cpus_per_task
        self.array_parallelism = array_parallelism
        parameters = {"gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task, "mem_gb": mem_gb,
                      "timeout_min": timeout_min, "slurm_partition": partition,
                      "slurm_array_parallelism": array_parallelism, **slurm_options}
        self.parameters = {key: value for key, value in parameters.items() if value is not None}

    def _executor(self, tasks: list[Task]):
        import submitit

        folder = Path(self.folder) if self.folder else tasks[0].path.parents[1] / ".submitit"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster,
                                         slurm_max_num_timeout=self.max_num_timeout)
        parameters = dict(self.parameters)
        if executor.cluster == "local" and "timeout_min" not in parameters:
            parameters["timeout_min"] = LOCAL_TIMEOUT_MIN
        try:
            executor.update_parameters(name=f"harness-{tasks[0].job.benchmark}", **parameters)
        except (NameError, AssertionError, ValueError) as exc:  # submitit's ways of refusing an option
            raise ConfigError(f"submitit refused the launcher options: {exc}", field="launcher") from None
        return executor

    def _threads(self, n_tasks: int) -> int | None:
        """torch threads per job: the Slurm CPUs of one job, or this machine's cores split between the
        jobs that the local executor runs at once."""
        if self.cpus_per_task is not None:
            return int(self.cpus_per_task)
        if self.cluster in ("local", "debug"):
            return max(1, cpu_count() // min(n_tasks, self.array_parallelism or n_tasks))
        return None

    def submit(self, tasks: list[Task]) -> list[tuple[Task, Any]]:
        """Submit every task as one job array; returns each task with its submitit job."""
        from harness_plugins.launchers._submitit_job import RunTask

        executor = self._executor(tasks)
        threads = self._threads(len(tasks))
        with executor.batch():
            jobs = [executor.submit(RunTask(), task.to_dict(), threads) for task in tasks]
        return list(zip(tasks, jobs))

    def collect(self, submitted: list[tuple[Task, Any]]) -> Iterator[tuple[Task, RunResult]]:
        """Each task with its result as its job finishes; a job that failed without writing its result
        (cancelled, out of memory, out of requeues) gets a ``failed`` result naming its log."""
        import submitit

        task_of = {id(job): task for task, job in submitted}
        for job in submitit.helpers.as_completed([job for _, job in submitted]):
            task = task_of[id(job)]
            try:
                result = RunResult.model_validate_json(job.result())
            except Exception as exc:
                result = failed_result(task.job, f"submitit job {job.job_id} failed: {type(exc).__name__}: "
                                                 f"{str(exc)[-2000:]} (logs: {job.paths.folder})")
                write_result(task.path, result)
            yield task, result

    def launch(self, tasks: list[Task], run_here: Callable[[Task], Any]) -> Iterator[tuple[Task, Any]]:
        if tasks:
            yield from self.collect(self.submit(tasks))


@hookimpl
def register_launchers(register):
    register("submitit", Submitit)
