"""Helpers shared by the benchmark scripts: wall time of one call, the peak resident memory one call adds
(run in a child process so that earlier allocations do not hide it), and a mean ± std cell over seeds."""

from __future__ import annotations

import json
import resource
import time
from typing import Any, Callable


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """``(seconds, result)`` of ``fn(*args)``."""
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def print_peak_delta(fn: Callable[[], Any]) -> None:
    """Run ``fn()`` and print ``{"peak_delta_mb": …, "seconds": …}``: the resident-set high-water mark during the call
    (reset through /proc/self/clear_refs on Linux >= 4.0; else the process's peak so far) minus the
    resident set before it, so the inputs made beforehand are not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, peak = _status_mb("VmRSS"), lambda: _status_mb("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # noqa: E731
    seconds, _ = timed(fn)
    print(json.dumps({"peak_delta_mb": peak() - before, "seconds": seconds}))


def mean_std_cell(values: list[float], digits: int) -> str:
    """``mean ± sample std`` of seeds' values, the value alone for one seed, "–" for none."""
    import numpy as np

    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"
