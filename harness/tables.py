"""Comparison tables built from result files alone (never from memory)."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
from collections import Counter
from typing import Iterable, Literal, Sequence

from tabulate import DataRow, Line, TableFormat, tabulate

from harness.errors import HarnessError, did_you_mean
from harness.results import RunResult, first_difference

Format = Literal["github", "markdown", "latex", "html", "csv"]
FORMATS: tuple[str, ...] = ("github", "latex", "html", "csv")
ALIASES: dict[str, str] = {"markdown": "github"}  # other names accepted for a format

#: most decimals a column gets, however small its spread
MAX_DECIMALS = 6


class MethodRow:
    """All runs of one configuration of one method of one benchmark: their statuses and per-metric
    values over ``ok`` seeds. ``label`` is the method name, followed by the first field where its
    configuration differs from another configuration of the same name (``infonce [train.epochs=5]``)."""

    def __init__(self, method: str, runs: list[RunResult], label: str | None = None):
        self.method = method
        self.label = label or method
        self.benchmark = runs[0].benchmark
        self.runs = sorted(runs, key=lambda r: r.seed)
        self.ok = [r for r in self.runs if r.status == "ok"]
        self.order = min(r.method_index for r in runs)
        self.configuration = runs[0].configuration()
        self.sweep = runs[0].sweep

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.ok
                if r.metrics.get(metric) is not None and math.isfinite(r.metrics[metric])]

    def mean_std(self, metric: str) -> tuple[float, float] | None:
        values = self.values(metric)
        if not values:
            return None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    def status(self) -> str:
        counts = Counter(r.status for r in self.runs)
        if set(counts) == {"ok"}:
            return "ok"
        return ", ".join(f"{counts[s]} {s}" for s in ("ok", "diverged", "failed") if counts[s])


def _key(configuration: dict) -> str:
    return json.dumps(configuration, sort_keys=True, default=str)


def group_runs(results: Iterable[RunResult]) -> list[MethodRow]:
    """One row per (benchmark, method, configuration): runs are averaged only when everything but the
    seed is the same (:meth:`RunResult.configuration`). A method name with several configurations
    gives several rows, each labelled by the first field where it differs from the others."""
    # keyed by benchmark too: two benchmarks' "infonce" runs are different experiments, never one row
    by_config: dict[tuple[str, str], dict[str, list[RunResult]]] = {}
    for r in results:
        by_config.setdefault((r.benchmark, r.method), {}).setdefault(_key(r.configuration()), []).append(r)
    rows = []
    for (_, method), groups in by_config.items():
        if len(groups) == 1:
            rows.append(MethodRow(method, next(iter(groups.values()))))
            continue
        configs = [runs[0].configuration() for runs in groups.values()]
        labels = [f"{method} [{_distinguishing(config, configs)}]" for config in configs]
        for i, (runs, label) in enumerate(zip(groups.values(), labels)):
            unique = label if labels.count(label) == 1 else f"{label} #{i + 1}"
            rows.append(MethodRow(method, runs, unique))
    return sorted(rows, key=lambda row: (row.benchmark, row.order, row.label))


def _distinguishing(config: dict, others: list[dict]) -> str:
    """``field=value`` for the first field in which ``config`` differs from another configuration."""
    for other in others:
        found = first_difference(config, other) if other is not config else None
        if found:
            path, value, _ = found
            text = str(value)
            return f"{path.removeprefix('method.')}={text if len(text) <= 16 else text[:12] + '…'}"
    return "?"


def by_benchmark(results: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Results split by benchmark name, in name order."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.benchmark, []).append(r)
    return dict(sorted(groups.items()))


def default_metrics(results: Sequence[RunResult]) -> list[str]:
    """The benchmark's ``report.metrics`` when the files carry them, else every metric seen."""
    for r in results:
        if r.report_metrics:
            return list(r.report_metrics)
    seen: dict[str, None] = {}
    for r in results:
        seen.update(dict.fromkeys(r.metrics))
    return list(seen)


def check_metrics(results: Sequence[RunResult], metrics: Sequence[str]) -> None:
    """Reject requested metrics that no result measured (a typo would otherwise be a silent "—"
    column). Only the ``metrics`` of the files count, not their ``report_metrics``: a name listed there
    that no run measured is a typo too. A metric missing only from failed runs is fine."""
    known: dict[str, None] = {}
    for r in results:
        known.update(dict.fromkeys(r.metrics))
    unknown = [m for m in metrics if m not in known]
    if unknown:
        names = ", ".join(f"{m!r}{did_you_mean(m, known)}" for m in unknown)
        raise HarnessError(f"unknown metric{'s' if len(unknown) > 1 else ''} {names}; "
                           f"available: {', '.join(known) or 'none'}")


def directions(results: Sequence[RunResult]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for r in results:
        out.update(r.higher_is_better)
    return out


def units(results: Sequence[RunResult]) -> dict[str, str]:
    """Metric -> unit ("%") as the evaluators declared them (older files declare none)."""
    out: dict[str, str] = {}
    for r in results:
        out.update(r.units)
    return out


def column_decimals(rows: Sequence[MethodRow], metric: str) -> int:
    """Decimals for every cell of one metric's column, chosen from the metric's spread: enough to show
    two significant digits of the column's median seed std (``10.6 ± 1.6``, ``200 ± 23``,
    ``0.512 ± 0.050``). Rows of one seed, and rows whose seeds agree exactly (closed-form methods),
    have no spread and do not count. With no spread at all, three significant digits of the median
    magnitude of the means (``53.8``, ``0.122``, ``516``). Between 0 and :data:`MAX_DECIMALS`."""
    stats = [(s, len(row.values(metric))) for row in rows if (s := row.mean_std(metric)) is not None]
    spreads = [s[1] for s, n in stats if n > 1 and s[1] > 0]
    if spreads:
        scale, significant = statistics.median(spreads), 2
    else:
        magnitudes = [abs(s[0]) for s, _ in stats if s[0] != 0]
        if not magnitudes:
            return 2
        scale, significant = statistics.median(magnitudes), 3
    return min(max(significant - 1 - math.floor(math.log10(scale)), 0), MAX_DECIMALS)


def _fixed(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _plain(x: float) -> str:
    """A number for machine reading: 12 significant digits, so no float noise (``0.14``, not
    ``0.13999999999999999``), and never ``-0``."""
    return f"{x + 0.0:.12g}"


def _begin_tabular(colwidths: list[int], colaligns: list[str]) -> str:
    spec = "".join({"right": "r", "center": "c", "decimal": "r"}.get(a, "l") for a in colaligns)
    return f"\\begin{{tabular}}{{{spec}}}\n\\toprule"


#: tabulate's ``latex_booktabs`` layout with raw cells (the cells are escaped here, since they hold
#: markup such as ``\textbf``): \toprule, \midrule and \bottomrule, and the column alignment as spec
LATEX_BOOKTABS_RAW = TableFormat(
    lineabove=_begin_tabular, linebelowheader=Line("\\midrule", "", "", ""), linebetweenrows=None,
    linebelow=Line("\\bottomrule\n\\end{tabular}", "", "", ""),
    headerrow=DataRow("", "&", "\\\\"), datarow=DataRow("", "&", "\\\\"), padding=1,
    with_header_hide=None)


def build_table(results: Sequence[RunResult], metrics: Sequence[str] | None = None,
                fmt: str = "github") -> str:
    """One row per configuration of a method (:func:`group_runs`): mean ± sample std over ``ok`` seeds,
    the seed count, the status of every run (failed and diverged runs are shown, not hidden).

    ``github`` (alias ``markdown``), ``latex`` and ``html``: every cell of a metric's column has the
    same decimals, chosen from the metric's spread (:func:`column_decimals`); a run of one seed shows
    its value alone; a metric with a unit has it in its header (``retrieval/t2i_R@1 (%) ↑``); the best
    mean of each column, at the precision shown, is bold (ties all are); numeric columns are
    right-aligned. LaTeX is a booktabs ``tabular`` (``\\toprule``/``\\midrule``/``\\bottomrule``,
    spec such as ``lrlrr``), text escaped; HTML is escaped. ``csv``: see :func:`_csv`.

    Results of several benchmarks give one table per benchmark, each under a heading with its name
    (csv: one table with a leading ``benchmark`` column), each with its own default metrics and best."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of "
                         f"{', '.join([*FORMATS, *ALIASES])}")
    groups = by_benchmark(results)
    if len(groups) <= 1:
        return _table(results, metrics, fmt)
    if fmt == "csv":
        columns = list(metrics) if metrics else list(dict.fromkeys(
            m for runs in groups.values() for m in default_metrics(runs)))
        # each benchmark's best is its own; one header for all (the first line: names hold no newline)
        parts = [_table(runs, columns, "csv", benchmark_column=True).partition("\n")
                 for runs in groups.values()]
        return parts[0][0] + "\n" + "".join(body for _, _, body in parts)
    heading = {"github": "### {}", "latex": "% {}", "html": "<h3>{}</h3>"}[fmt]
    return "\n\n".join(f"{heading.format(html.escape(name) if fmt == 'html' else name)}\n\n"
                       f"{_table(runs, metrics, fmt)}" for name, runs in groups.items())


def _table(results: Sequence[RunResult], metrics: Sequence[str] | None, fmt: str,
           benchmark_column: bool = False) -> str:
    """The table of one benchmark's results."""
    rows = group_runs(results)
    metrics = list(metrics) if metrics else default_metrics(results)
    higher = directions(results)
    best = {m: _best_mean(rows, m, higher.get(m, True)) for m in metrics}
    if fmt == "csv":
        return _csv(rows, metrics, best, benchmark_column)

    def mark(text: str) -> str:
        return {"github": f"**{text}**", "latex": rf"\textbf{{{text}}}", "html": f"<b>{text}</b>"}[fmt]

    def esc(text: str) -> str:
        return html.escape(text) if fmt == "html" else _latex_escape(text) if fmt == "latex" else text

    pm = r"$\pm$" if fmt == "latex" else "±"
    arrows = {True: "↑", False: "↓"} if fmt != "latex" else {True: r"$\uparrow$", False: r"$\downarrow$"}
    unit = units(results)
    headers = [esc("method"), esc("seeds"), esc("status")] + [
        f"{esc(m)}{f' ({esc(unit[m])})' if unit.get(m) else ''} {arrows[higher.get(m, True)]}"
        for m in metrics]
    decimals = {m: column_decimals(rows, m) for m in metrics}
    best_shown = {m: None if best[m] is None else _fixed(best[m], decimals[m]) for m in metrics}
    body = []
    for row in rows:
        cells = [esc(row.label), str(len(row.ok)), esc(row.status())]
        for m in metrics:
            stats = row.mean_std(m)
            if stats is None:
                cells.append("—")
                continue
            (mean, std), places = stats, decimals[m]
            shown = _fixed(mean, places)
            text = shown if len(row.values(m)) == 1 else f"{shown} {pm} {_fixed(std, places)}"
            cells.append(mark(text) if shown == best_shown[m] else text)
        body.append(cells)
    tablefmt = {"github": "github", "latex": LATEX_BOOKTABS_RAW, "html": "unsafehtml"}[fmt]
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                    colalign=["left", "right", "left", *["right"] * len(metrics)])


def _best_mean(rows: list[MethodRow], metric: str, higher_is_better: bool) -> float | None:
    means = [s[0] for s in (row.mean_std(metric) for row in rows) if s is not None]
    if not means:
        return None
    return max(means) if higher_is_better else min(means)


def _csv(rows: list[MethodRow], metrics: list[str], best: dict[str, float | None],
         benchmark_column: bool = False) -> str:
    """Machine-readable, one line per row of the table: ``[benchmark,] method, seeds, status``, then for
    each metric ``<metric> mean``, ``<metric> std`` (sample std) and ``<metric> n`` (the ``ok`` seeds
    that measured it), then ``best``: the metrics whose mean (unrounded) is the best of the column,
    joined by ``;``. Numbers are plain, at full precision without float noise (12 significant digits:
    ``0.14``, ``15``); the std is empty for one seed, mean and std are empty (n ``0``) when no seed
    measured the metric. No units: they are a property of the metric, not of the cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lead = ["benchmark"] if benchmark_column else []
    writer.writerow([*lead, "method", "seeds", "status",
                     *[f"{m} {part}" for m in metrics for part in ("mean", "std", "n")], "best"])
    for row in rows:
        values, best_on = [], []
        for m in metrics:
            stats, n = row.mean_std(m), len(row.values(m))
            values += ["", "", 0] if stats is None else [
                _plain(stats[0]), _plain(stats[1]) if n > 1 else "", n]
            if stats is not None and stats[0] == best[m]:
                best_on.append(m)
        lead = [row.benchmark] if benchmark_column else []
        writer.writerow([*lead, row.label, len(row.ok), row.status(), *values, ";".join(best_on)])
    return buffer.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
