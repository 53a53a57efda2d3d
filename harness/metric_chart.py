"""The report metrics as bars with 95 % confidence intervals (``metrics-ci.png``, and on the
leaderboard), from result files alone.

One panel per metric, one bar per configuration (:func:`harness.rows.group_runs`): the mean over
``ok`` seeds with the interval of :func:`harness.significance.compare_with_best` as its error bar, the best
bar outlined, ``†`` after the methods not significantly worse than it, the number of seeds beside each
bar, chance as a dashed line, and rows without an ``ok`` value marked ``×`` with their statuses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.results import RunResult
from harness.rows import MethodRow, default_metrics, directions, group_runs, units
from harness.significance import compare_with_best

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = 3
PANEL_WIDTH, ROW_HEIGHT = 4.6, 0.26
BAR, WORSE, BEST, FAILED = "#4c78a8", "#b4c8df", "#1b3a5c", "#c0392b"  # tied, worse, best's edge


def metric_chart(results: Sequence[RunResult], metrics: Sequence[str] | None = None) -> Figure | None:
    """The figure for one benchmark's results (``None`` without a metric to draw)."""
    import matplotlib
    from matplotlib.figure import Figure

    results = list(results)
    metrics = [m for m in (metrics or default_metrics(results)) if any(m in r.metrics for r in results)]
    if not results or not metrics:
        return None
    rows = group_runs(results)
    higher, unit = directions(results), units(results)
    columns = min(COLUMNS, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    height = 0.9 + ROW_HEIGHT * len(rows)
    with matplotlib.rc_context({"font.size": 7, "axes.titlesize": 8}):
        fig = Figure(figsize=(PANEL_WIDTH * columns, height * lines + 0.5), layout="constrained")
        fig.suptitle("report metrics: mean over ok seeds with its 95 % confidence interval "
                     "(outlined: best; dark, †: not significantly worse; n: seeds)", fontsize=8)
        axes = fig.subplots(lines, columns, squeeze=False).ravel()
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        for ax, metric in zip(axes, metrics):
            _panel(ax, rows, metric, higher.get(metric, True), unit.get(metric), results)
    return fig


def _panel(ax, rows: list[MethodRow], metric: str, higher: bool, unit: str | None,
           results: list[RunResult]) -> None:
    cells = compare_with_best(rows, metric, higher)
    labels = []
    for i, (row, cell) in enumerate(zip(rows, cells)):
        labels.append(row.label + (" †" if cell.tied else ""))
        if cell.mean is None:
            ax.annotate(f"× {row.status()}" if row.status() != "ok" else "not reported", (0.02, i),
                        xycoords=("axes fraction", "data"), va="center", fontsize=6,
                        color=FAILED if row.status() != "ok" else "0.5")
            continue
        error = None if cell.ci is None else [[cell.mean - cell.ci[0]], [cell.ci[1] - cell.mean]]
        ax.barh(i, cell.mean, height=0.7, xerr=error, capsize=2, error_kw={"linewidth": 0.8},
                color=BAR if cell.tied else WORSE, alpha=0.95 if row.status() == "ok" else 0.5,
                edgecolor=BEST if cell.best else "none", linewidth=1.6 if cell.best else 0)
        ax.annotate(f"n={cell.n}", (cell.ci[1] if cell.ci else cell.mean, i), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=5.5, color="0.35")
    for value in sorted({r.chance[metric] for r in results if metric in r.chance}):
        ax.axvline(value, color="0.35", linestyle="--", linewidth=0.9, label="chance")
    ax.set_yticks(range(len(rows)), labels)
    for tick, row in zip(ax.get_yticklabels(), rows):
        if row.status() != "ok":
            tick.set_color(FAILED)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_title(f"{metric} {'↑' if higher else '↓'}")
    ax.set_xlabel(unit or "value")
    ax.grid(axis="x", alpha=0.3)


def save_metric_chart(results: Sequence[RunResult], path: str | Path,
                      metrics: Sequence[str] | None = None) -> Path | None:
    figure = metric_chart(results, metrics)
    if figure is None:
        return None
    figure.savefig(path, dpi=110)
    return Path(path)
