"""Local launchers: ``inline`` (one job after another in this process) and ``processes`` (up to ``jobs``
runs at once in worker processes, the CPU cores split between them, or one GPU each)."""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from typing import Any, Callable, Iterator

from harness import hookimpl
from harness.forkserver import start_fork_server
from harness.launchers import Launcher, Task, cpu_count, failed_result, run_task
from harness.results import RunResult


class Inline(Launcher):
    """One job after another in this process (the default)."""

    def launch(self, tasks: list[Task], run_here: Callable[[Task], Any]) -> Iterator[tuple[Task, Any]]:
        for task in tasks:
            yield task, run_here(task)


class Processes(Launcher):
    """Up to ``jobs`` runs at once, each in its own worker process. On a CPU the cores are split between
    the workers (torch threads = cores // jobs, unless a job sets ``train.threads``); with ``gpus``
    (default: every visible CUDA device) worker k sees only GPU k mod gpus. Results are the same files
    as ``inline``'s; with equal thread counts (set ``train.threads``) the same metrics too.

    ``start``: how workers start. ``auto`` (default): on a CPU-only run, forked from a fork server
    that imported torch, the harness and every installed plugin once (``harness run`` starts it before
    validating the benchmark, so that the imports overlap), so a worker starts at once instead of
    importing them again (seconds per worker on a small machine); spawned when the workers use GPUs.
    Never forked from this process itself: a fork of a process whose OpenMP threads have run
    deadlocks in the child's first parallel region. Or ``spawn``, ``forkserver``."""

    def __init__(self, jobs: int = 2, gpus: int | None = None, start: str = "auto"):
        if int(jobs) < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        methods = [m for m in multiprocessing.get_all_start_methods() if m != "fork"]
        if start != "auto" and start not in methods:
            raise ValueError(f"start must be auto or one of {', '.join(methods)}, got {start!r}")
        self.jobs = int(jobs)
        self.gpus = gpus
        self.start = start

    def _gpus(self) -> int:
        if self.gpus is not None:
            return int(self.gpus)
        try:
            import torch
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:  # pragma: no cover
            return 0

    def launch(self, tasks: list[Task], run_here: Callable[[Task], Any]) -> Iterator[tuple[Task, Any]]:
        if not tasks:
            return
        workers = min(self.jobs, len(tasks))
        threads = max(1, cpu_count() // workers)
        gpus = self._gpus()
        context = multiprocessing.get_context(self._start_method(gpus))

        def make_pool(slot: int) -> futures.ProcessPoolExecutor:
            # this process's environment as it is now (a fork server's children would otherwise see
            # the server's, from when it started), with the worker's GPU
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(slot % gpus)} if gpus else {})}
            return futures.ProcessPoolExecutor(1, mp_context=context, initializer=_set_env, initargs=(env,))

        # one single-worker pool per slot, so that each worker keeps its own GPU for all its runs
        pools = [make_pool(slot) for slot in range(workers)]
        pending: dict[futures.Future, tuple[Task, int]] = {}
        queue = list(tasks)

        def submit(slot: int) -> None:
            if queue:
                task = queue.pop(0)
                pending[pools[slot].submit(run_task, task.to_dict(), threads)] = (task, slot)

        try:
            for slot in range(workers):
                submit(slot)
            while pending:
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    task, slot = pending.pop(future)
                    try:
                        result = RunResult.model_validate_json(future.result())
                    except Exception as exc:  # the worker died (killed, out of memory)
                        result = failed_result(task.job, f"worker process failed: {type(exc).__name__}: "
                                                         f"{exc}")
                        from harness.results import write_result
                        write_result(task.path, result)
                        pools[slot].shutdown(wait=False, cancel_futures=True)
                        pools[slot] = make_pool(slot)
                    submit(slot)
                    yield task, result
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)


    def _start_method(self, gpus: int) -> str:
        if self.start != "auto":
            return self.start
        if gpus:
            return "spawn"
        return "forkserver" if start_fork_server() else "spawn"


def _set_env(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)


@hookimpl
def register_launchers(register):
    register("inline", Inline)
    register("processes", Processes)
