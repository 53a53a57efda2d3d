"""Plots beside the table, built from result files alone (``plots.png``, rebuilt by ``harness plot``).

One figure in up to three sections, each a grid of small panels (at most four across):

- **training loss**: one panel per method (a swept method's variants share its panel), each on its own
  y scale, integer epochs; the mean over ``ok`` seeds with their min–max band;
- **validation curves**: one panel per validation metric the histories record (``train.val_every``);
- **metrics**: one panel per report metric (all of them). A sweep (variants of one method over one
  numeric key) is a line of the metric against the swept value with a ±std band; other methods are
  horizontal bars with std error bars. Chance levels are dashed lines; failed and diverged runs are
  marked ``×`` and named, never left out.

Rows come from :func:`harness.rows.group_runs`: seeds are averaged only within one configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.results import RunResult
from harness.rows import MethodRow, default_metrics, directions, group_runs

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLUMNS = 4  # panels across, at most
PANEL_WIDTH = 4.2  # inches per panel column
LOSS_HEIGHT, VAL_HEIGHT, METRIC_HEIGHT = 2.6, 3.2, 3.0
BAR_HEIGHT = 0.24  # inches per bar in a metric panel
FAILED_COLOUR = "#c0392b"
CHANCE_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0, "zorder": 1}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
FONTS = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 11}


@dataclass
class Sweep:
    """The variants of one swept method over one numeric key, sorted by the swept value."""

    name: str
    key: str
    rows: list[MethodRow]
    values: list[float]


@dataclass
class Plot:
    """The drawn figure and its panels by role, for callers (and tests) that inspect it."""

    figure: Figure
    loss_axes: dict[str, Axes] = field(default_factory=dict)  # method (or swept method) -> panel
    val_axes: dict[str, Axes] = field(default_factory=dict)  # val metric -> panel
    metric_axes: dict[str, list[Axes]] = field(default_factory=dict)  # metric -> its axes
    sweeps: list[Sweep] = field(default_factory=list)


def plot_results(results: Sequence[RunResult], path: str | Path,
                 metrics: Sequence[str] | None = None) -> Path | None:
    """Write the figure of :func:`build_figure` as a PNG. Returns the path, or ``None`` when there is
    nothing to plot."""
    plot = build_figure(results, metrics)
    if plot is None:
        return None
    path = Path(path)
    plot.figure.savefig(path, dpi=110)
    return path


def build_figure(results: Sequence[RunResult], metrics: Sequence[str] | None = None) -> Plot | None:
    """The figure for ``results`` (normally one benchmark's), ``metrics`` defaulting to the report's.
    ``None`` when there is nothing to draw."""
    import matplotlib
    from matplotlib.figure import Figure

    results = list(results)
    if not results:
        return None
    metrics = list(metrics) if metrics is not None else default_metrics(results)
    rows = group_runs(results)
    style = _Style(rows, several_benchmarks=len({r.benchmark for r in results}) > 1)
    sweeps, plain = _sweeps(rows, style)
    loss_groups = {name: members for name, members in style.groups.items()
                   if any(_trained(row) for row in members)}
    val_metrics = _val_metrics(results, metrics)
    sweep_keys = list(dict.fromkeys(s.key for s in sweeps))
    metric_span = len(sweep_keys) + (1 if plain else 0)

    # sections: (kind, panel count, columns one panel spans, height of a row of panels)
    sections = []
    if loss_groups:
        sections.append(("loss", len(loss_groups), 1, LOSS_HEIGHT))
    if val_metrics:
        sections.append(("val", len(val_metrics), 2, VAL_HEIGHT))
    if metrics and metric_span:
        height = max(METRIC_HEIGHT, 1.2 + BAR_HEIGHT * len(plain)) if plain else METRIC_HEIGHT
        sections.append(("metric", len(metrics), metric_span, height))
    if not sections:
        return None
    columns = min(COLUMNS, max(n * span for _, n, span, _ in sections))
    layout = []
    for kind, n, span, height in sections:
        per_row = max(1, columns // span)
        # panels keep their width (a lone metric is not stretched across the figure); a val panel may
        # widen, for its curves
        layout.append((kind, n, min(per_row, n) if kind == "val" else per_row, math.ceil(n / per_row),
                       height))
    heights = [rows_ * height + 0.45 for _, _, _, rows_, height in layout]

    with matplotlib.rc_context(FONTS):
        fig = Figure(figsize=(PANEL_WIDTH * columns, sum(heights) + 0.5), layout="constrained")
        plot = Plot(fig, sweeps=sweeps)
        benchmarks = ", ".join(dict.fromkeys(r.benchmark for r in results))
        fig.suptitle(f"{benchmarks}: {len(rows)} configuration(s), {len(results)} run(s)",
                     fontweight="bold")
        parts = fig.subfigures(len(layout), 1, height_ratios=heights, squeeze=False)[:, 0]
        for part, (kind, n, per_row, n_rows, _) in zip(parts, layout):
            if kind == "loss":
                part.suptitle("training loss per method (mean over ok seeds, band: min–max)")
                for ax, (name, members) in zip(_grid(part, n, per_row, n_rows), loss_groups.items()):
                    _loss_panel(ax, name, members, style)
                    plot.loss_axes[name] = ax
            elif kind == "val":
                part.suptitle("validation curves (mean over ok seeds; band: min–max when few)")
                for ax, metric in zip(_grid(part, n, per_row, n_rows), val_metrics):
                    _val_panel(ax, metric, rows, results, style)
                    plot.val_axes[metric] = ax
                _section_legend(part, [ax for ax in plot.val_axes.values()])
            else:
                part.suptitle("metrics (mean ± std over ok seeds)")
                cells = part.subfigures(n_rows, per_row, squeeze=False).ravel()
                higher = directions(results)
                for cell in cells[n:]:
                    cell.set_visible(False)
                for cell, metric in zip(cells, metrics):
                    plot.metric_axes[metric] = _metric_panel(cell, metric, sweeps, sweep_keys, plain,
                                                             results, style, higher.get(metric))
                _section_legend(part, [ax for axes in plot.metric_axes.values() for ax in axes])
    return plot


class _Style:
    """Colours per method group (a swept method's variants are one group), line styles per variant,
    display labels; the same everywhere in the figure."""

    def __init__(self, rows: list[MethodRow], several_benchmarks: bool):
        self.prefix = several_benchmarks
        self.groups: dict[str, list[MethodRow]] = {}
        for row in rows:
            self.groups.setdefault(self.group(row), []).append(row)
        from matplotlib import colormaps
        palette = colormaps["tab10" if len(self.groups) <= 10 else "tab20"].colors
        self.colours = {name: palette[i % len(palette)] for i, name in enumerate(self.groups)}

    def group(self, row: MethodRow) -> str:
        name = row.sweep.base if row.sweep is not None else row.method
        return f"{row.benchmark}: {name}" if self.prefix else name

    def label(self, row: MethodRow) -> str:
        return f"{row.benchmark}: {row.label}" if self.prefix else row.label

    def variant(self, row: MethodRow) -> str:
        """The row within its group: the swept values, or its label."""
        if row.sweep is not None and row.sweep.values:
            return ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in row.sweep.values.items())
        return self.label(row)

    def colour(self, row: MethodRow):
        return self.colours[self.group(row)]

    def line(self, row: MethodRow) -> dict[str, Any]:
        i = self.groups[self.group(row)].index(row)
        return {"color": self.colour(row), "linestyle": LINESTYLES[i % len(LINESTYLES)],
                "marker": MARKERS[i % len(MARKERS)]}


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problems(row: MethodRow) -> str:
    """``"1 failed, 1 diverged"``: the seeds that did not finish ok ('' when all did)."""
    counts = {s: sum(r.status == s for r in row.runs) for s in ("diverged", "failed")}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def _trained(row: MethodRow) -> bool:
    return any(r.history for r in row.runs) or any(r.config.get("loss") for r in row.runs)


def _sweeps(rows: list[MethodRow], style: _Style) -> tuple[list[Sweep], list[MethodRow]]:
    """Sweeps drawn as lines (every variant of the method swept over the same single numeric key,
    at distinct values, at least two), and the rows drawn as bars (all others)."""
    by_base: dict[str, list[MethodRow]] = {}
    for row in rows:
        if row.sweep is not None:
            by_base.setdefault(style.group(row), []).append(row)
    sweeps, swept = [], set()
    for name, members in by_base.items():
        keys = {tuple(m.sweep.values) for m in members}
        if len(keys) != 1 or len(next(iter(keys))) != 1:
            continue
        (key,) = next(iter(keys))
        values = [m.sweep.values[key] for m in members]
        if len(members) < 2 or not all(map(_number, values)) or len(set(values)) != len(values):
            continue  # e.g. a stale configuration of one grid point: two rows at one x
        order = sorted(range(len(members)), key=lambda i: values[i])
        sweeps.append(Sweep(name, key, [members[i] for i in order], [float(values[i]) for i in order]))
        swept.update(id(m) for m in members)
    return sweeps, [row for row in rows if id(row) not in swept]


def _val_metrics(results: list[RunResult], metrics: list[str]) -> list[str]:
    """The validation metrics to draw curves of: the report's ``val/`` metrics, or else the val
    counterparts of its metrics; only those some history records."""
    wanted = [m for m in metrics if m.startswith("val/")] or [f"val/{m}" for m in metrics]
    recorded = {k for r in results for h in r.history for k in h}
    return [m for m in dict.fromkeys(wanted) if m in recorded]


def _chance(results: list[RunResult], metric: str) -> list[float]:
    return sorted({round(float(r.chance[metric]), 9) for r in results
                   if r.chance.get(metric) is not None and math.isfinite(r.chance[metric])})


def _unit(results: list[RunResult], metric: str) -> str:
    units = {r.units[metric] for r in results if r.units.get(metric)}
    return f" ({', '.join(sorted(units))})" if units else ""


def _grid(part, n: int, per_row: int, n_rows: int) -> list[Axes]:
    axes = part.subplots(n_rows, per_row, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _series(run: RunResult, key: str) -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of one history key, 1-based epochs, finite values only."""
    points = [(int(h["epoch"]) + 1, float(h[key])) for h in run.history
              if _number(h.get(key)) and "epoch" in h]
    return [p[0] for p in points], [p[1] for p in points]


def _curves(ax: Axes, row: MethodRow, key: str, style: _Style, label: str, band: bool = True) -> bool:
    """Draw ``row``'s curve of ``key``: the mean over ok seeds (with a min–max band when ``band``) when
    they share epochs, else each seed. Seeds that failed or diverged are drawn thin and dotted, ending
    in ``×``. Returns whether anything was drawn."""
    line = style.line(row)
    drawn = False
    series = [s for s in (_series(r, key) for r in row.ok) if s[0]]
    if series and all(s[0] == series[0][0] for s in series):
        x, ys = np.array(series[0][0]), np.array([s[1] for s in series])
        ax.plot(x, ys.mean(axis=0), label=label, markersize=3, linewidth=1.4, **line)
        if band and len(series) > 1:
            ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=line["color"], alpha=0.15,
                            linewidth=0)
        drawn = True
    elif series:  # seeds of one configuration with different epochs: never truncated to a common length
        for i, (x, y) in enumerate(series):
            ax.plot(x, y, label=f"{label} (seeds)" if i == 0 else None, markersize=2, linewidth=0.9,
                    **line)
        drawn = True
    # seeds that did not finish: thin, dotted, ending in × (see _keep_scale)
    for run in row.runs:
        if run.status == "ok":
            continue
        x, y = _series(run, key)
        if x:
            ax.plot(x, y, color=line["color"], linestyle=":", linewidth=0.9,
                    label=None if drawn else label, gid="unfinished")
            ax.plot(x[-1:], y[-1:], marker="x", color=FAILED_COLOUR, markersize=7, markeredgewidth=2,
                    linestyle="none", clip_on=False, gid="unfinished-end")
            drawn = True
    return drawn


def _keep_scale(ax: Axes) -> None:
    """Curves of seeds that failed or diverged (often a blow-up) do not set a panel's y scale when
    finished curves are there: the y range is theirs, the others are clipped and their final ``×``
    is pinned to the edge."""
    ys = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()
          if line.get_gid() not in ("unfinished", "unfinished-end")]
    ys += [path.vertices[:, 1] for coll in ax.collections for path in coll.get_paths()]
    ys = [y[np.isfinite(y)] for y in ys]
    ys = [y for y in ys if y.size]
    if not ys:
        return
    lo, hi = min(map(np.min, ys)), max(map(np.max, ys))
    ends = [line for line in ax.get_lines() if line.get_gid() == "unfinished-end"]
    if all(lo <= line.get_ydata()[0] <= hi for line in ends):
        others = [line for line in ax.get_lines() if line.get_gid() == "unfinished"]
        if all(np.all((np.asarray(l.get_ydata()) >= lo) & (np.asarray(l.get_ydata()) <= hi))
               for l in others):
            return
    pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)
    for line in ends:
        line.set_ydata([min(max(float(line.get_ydata()[0]), lo), hi)])


def _epoch_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _loss_panel(ax: Axes, name: str, members: list[MethodRow], style: _Style) -> None:
    notes = []
    for row in members:
        problems = _problems(row)
        label = style.variant(row) + (f" ({problems})" if problems else "")
        if not _curves(ax, row, "loss", style, label) and problems:
            notes.append(f"{style.variant(row)}: {problems}, no curve")
    title = name
    if len(members) == 1 and _problems(members[0]):
        title += f" ({_problems(members[0])})"
    ax.set_title(title)
    if len(members) == 1 and not members[0].ok:
        ax.title.set_color(FAILED_COLOUR)
    _keep_scale(ax)
    _epoch_axis(ax)
    if notes:
        ax.text(0.5, 0.5, "× " + "\n× ".join(notes), transform=ax.transAxes, ha="center",
                va="center", color=FAILED_COLOUR, fontsize=8)
        if not ax.lines:
            ax.set_xticks([])
            ax.set_yticks([])
    ax.set_ylabel("loss")
    if len(ax.get_legend_handles_labels()[1]) > 1:
        ax.legend(fontsize=6, loc="upper right")


def _val_panel(ax: Axes, metric: str, rows: list[MethodRow], results: list[RunResult],
               style: _Style) -> None:
    curved = [row for row in rows if any(_series(r, metric)[0] for r in row.runs)]
    for row in curved:  # bands only while they stay readable
        problems = _problems(row)
        _curves(ax, row, metric, style, style.label(row) + (f" ({problems})" if problems else ""),
                band=len(curved) <= 4)
    for value in _chance(results, metric):
        ax.axhline(value, label="chance", gid="chance", **CHANCE_STYLE)
    _keep_scale(ax)
    ax.set_title(metric)
    ax.set_ylabel(metric.rsplit("/", 1)[-1] + _unit(results, metric))
    _epoch_axis(ax)


def _metric_panel(cell, metric: str, sweeps: list[Sweep], keys: list[str], plain: list[MethodRow],
                  results: list[RunResult], style: _Style, higher: bool | None) -> list[Axes]:
    """One metric's panel: an axis per swept key (metric against the swept value), and one of bars
    for the rows that are not part of a sweep."""
    arrow = {True: "  (↑ better)", False: "  (↓ better)"}.get(higher, "")
    cell.suptitle(metric + arrow, fontsize=9)
    widths = [1.0] * len(keys) + ([1.4] if plain else [])
    axes = list(cell.subplots(1, len(widths), squeeze=False, width_ratios=widths)[0])
    label = metric.rsplit("/", 1)[-1] + _unit(results, metric)
    chance = _chance(results, metric)
    for ax, key in zip(axes, keys):
        _sweep_axis(ax, key, [s for s in sweeps if s.key == key], metric, style)
        for value in chance:
            ax.axhline(value, label="chance", gid="chance", **CHANCE_STYLE)
        ax.set_ylabel(label)
    if plain:
        ax = axes[-1]
        _bar_axis(ax, plain, metric, style)
        for value in chance:
            ax.axvline(value, label="chance", gid="chance", **CHANCE_STYLE)
        ax.set_xlabel(label)
    return axes


def _sweep_axis(ax: Axes, key: str, sweeps: list[Sweep], metric: str, style: _Style) -> None:
    from matplotlib.transforms import blended_transform_factory
    below = blended_transform_factory(ax.transData, ax.transAxes)
    xs = sorted({x for s in sweeps for x in s.values})
    last = xs[-1] if xs else None
    for sweep in sweeps:
        colour = style.colours[sweep.name]
        stats = [row.mean_std(metric) for row in sweep.rows]
        mean = np.array([s[0] if s else np.nan for s in stats])
        std = np.array([s[1] if s else np.nan for s in stats])
        ax.plot(sweep.values, mean, color=colour, marker="o", markersize=4, linewidth=1.5,
                label=sweep.name, gid=f"sweep:{sweep.name}")
        ax.fill_between(sweep.values, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        for row, x, m in zip(sweep.rows, sweep.values, mean):
            problems = _problems(row)
            if np.isnan(m):  # no ok seed with this metric: marked at the bottom of the axis
                ax.plot([x], [0.04], transform=below, marker="x", color=FAILED_COLOUR, markersize=8,
                        markeredgewidth=2, linestyle="none", clip_on=False)
                ax.annotate(problems or "n/a", (x, 0.04), xycoords=below, fontsize=6,
                            color=FAILED_COLOUR, **_beside(x == last))
            elif problems:
                ax.annotate(problems, (x, m), fontsize=6, color=FAILED_COLOUR, **_beside(x == last))
    if xs and xs[0] > 0 and xs[-1] / xs[0] >= 10:
        ax.set_xscale("log")
    if 1 < len(xs) <= 8:
        ax.set_xticks(xs, [_fmt(x) for x in xs])
        ax.minorticks_off()
    ax.set_xlabel(key)
    ax.grid(alpha=0.3)


def _beside(at_right_edge: bool) -> dict[str, Any]:
    """Annotation placement next to a point, inward at the axis' right edge."""
    return {"xytext": (-5 if at_right_edge else 5, 4), "textcoords": "offset points",
            "ha": "right" if at_right_edge else "left"}


def _bar_axis(ax: Axes, rows: list[MethodRow], metric: str, style: _Style) -> None:
    from matplotlib.transforms import blended_transform_factory
    ticks = []
    for i, row in enumerate(rows):
        problems = _problems(row)
        ticks.append(style.label(row) + (f"  ({problems})" if problems else ""))
        stats = row.mean_std(metric)
        if stats is None:
            where = blended_transform_factory(ax.transAxes, ax.transData)
            if row.ok:  # finished runs that do not report this metric (no relation heads): grey, no ×
                ax.annotate("not reported", (0.02, i), xycoords=where, va="center", fontsize=6, color="0.5")
                continue
            # nothing to average: an empty hatched slot and the reason, in place of a bar
            ax.axhspan(i - 0.35, i + 0.35, color=FAILED_COLOUR, alpha=0.08, linewidth=0)
            ax.annotate("× " + problems, (0.02, i), xycoords=where, va="center", fontsize=7,
                        color=FAILED_COLOUR, fontweight="bold")
            continue
        mean, std = stats
        ax.barh(i, mean, xerr=std if len(row.values(metric)) > 1 else None, height=0.7,
                color=style.colour(row), alpha=0.85 if not problems else 0.55,
                hatch="///" if problems else None, edgecolor=FAILED_COLOUR if problems else None,
                linewidth=0, capsize=2, error_kw={"linewidth": 0.8})
    ax.set_yticks(range(len(rows)), ticks)
    for tick, row in zip(ax.get_yticklabels(), rows):
        if _problems(row):
            tick.set_color(FAILED_COLOUR)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.grid(axis="x", alpha=0.3)


def _section_legend(part, axes: list[Axes]) -> None:
    """One legend for a section: sweep lines / curves by name, chance, the failed marker."""
    from matplotlib.lines import Line2D
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    failed = any(isinstance(a, Line2D) and a.get_marker() == "x" and a.get_color() == FAILED_COLOUR
                 for ax in axes for a in ax.get_lines()) or any(
        t.get_text().startswith("× ") for ax in axes for t in ax.texts)
    if "chance" in handles:
        handles["chance"] = handles.pop("chance")  # after the methods
    if failed:
        handles["failed / diverged (no ok seed)"] = Line2D([], [], marker="x", color=FAILED_COLOUR,
                                                           markeredgewidth=2, linestyle="none")
    if handles:
        part.legend(list(handles.values()), list(handles), loc="outside lower center",
                    ncols=min(len(handles), 6), frameon=False)
