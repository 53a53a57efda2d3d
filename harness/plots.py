"""Plots beside the table, built from result files alone: training-loss curves and report metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from harness.results import RunResult
from harness.tables import default_metrics, group_runs


def plot_results(results: Sequence[RunResult], path: str | Path,
                 metrics: Sequence[str] | None = None) -> Path | None:
    """Write a PNG with the mean training loss per epoch of every gradient-trained method (left) and
    the mean ± std of up to four report metrics per method (right). Returns the path, or ``None`` when
    there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    rows = [row for row in group_runs(results) if row.ok]
    metrics = list(metrics or default_metrics(results))[:4]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.5 * (1 + len(metrics)), 3.8),
                             squeeze=False)
    curves = axes[0][0]
    for row in rows:
        histories = [[h["loss"] for h in r.history] for r in row.ok if r.history]
        if histories:
            length = min(map(len, histories))
            curves.plot(np.arange(1, length + 1), np.mean([h[:length] for h in histories], axis=0),
                        marker="o", markersize=3, label=row.label)
    curves.set(title="training loss (mean over seeds)", xlabel="epoch")
    if curves.lines:
        curves.legend(fontsize=7)
    for ax, metric in zip(axes[0][1:], metrics):
        stats = [row.mean_std(metric) for row in rows]
        kept = [(row.label, s) for row, s in zip(rows, stats) if s is not None]
        if kept:
            ax.barh([m for m, _ in kept], [s[0] for _, s in kept], xerr=[s[1] for _, s in kept])
            ax.invert_yaxis()
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
