"""The ``processes`` launcher's fork server, started as early as possible: this module imports neither
torch nor the plugins, so that ``harness run`` can start the server before importing them itself and
the server's imports (seconds on a small machine) overlap this process's own and its validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

#: what the fork server imports before forking workers: torch, the harness and every installed plugin
FORK_SERVER_PRELOAD = ["harness_plugins.launchers._preload"]


def start_fork_server() -> bool:
    """Start multiprocessing's fork server now (a no-op when it runs), importing
    :data:`FORK_SERVER_PRELOAD` in the background while this process goes on, so that worker processes
    forked from it later start at once. False where there is no fork server (not POSIX)."""
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.set_forkserver_preload(FORK_SERVER_PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return True


def start_if_processes(config: str | Path | Mapping[str, Any], overrides: Iterable[str],
                       launcher: str | None) -> None:
    """Start the fork server when the run will use the ``processes`` launcher: ``launcher`` (the command
    line's) or else the benchmark's ``launcher.name``. A benchmark that cannot be read starts nothing:
    validation then says why."""
    if launcher is None:
        from harness.config import load_benchmark
        try:
            launcher = load_benchmark(config, list(overrides))[0].launcher.name
        except Exception:
            return
    if launcher == "processes":
        start_fork_server()
