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

from tabulate import tabulate

from harness.errors import HarnessError, did_you_mean
from harness.results import RunResult, first_difference

Format = Literal["github", "latex", "html", "csv"]
FORMATS: tuple[str, ...] = ("github", "latex", "html", "csv")


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
    """Reject requested metrics that no result file knows (a typo would otherwise be a silent "—"
    column). A metric missing only from failed runs is fine: the benchmark still reports it."""
    known: dict[str, None] = {}
    for r in results:
        known.update(dict.fromkeys(r.report_metrics))
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


def _decimals(x: float) -> int:
    magnitude = abs(x)
    return 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3


def _number(x: float, decimals: int | None = None) -> str:
    return f"{x:.{_decimals(x) if decimals is None else decimals}f}"


def build_table(results: Sequence[RunResult], metrics: Sequence[str] | None = None,
                fmt: str = "github") -> str:
    """One row per method: mean ± sample std over ``ok`` seeds, the seed count, the status of every
    run (failed and diverged runs are shown, not hidden); the best mean per column is marked.

    Results of several benchmarks give one table per benchmark, each under a heading with its name
    (csv: one table with a leading ``benchmark`` column), each with its own default metrics and best."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
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
    headers = [esc("method"), esc("seeds"), esc("status")] + [
        f"{esc(m)} {arrows[higher.get(m, True)]}" for m in metrics]
    body = []
    for row in rows:
        cells = [esc(row.label), str(len(row.ok)), esc(row.status())]
        for m in metrics:
            stats = row.mean_std(m)
            if stats is None:
                cells.append("—")
                continue
            mean, std = stats
            places = _decimals(mean)  # the std is shown to the mean's precision
            text = _number(mean) if len(row.values(m)) == 1 else \
                f"{_number(mean, places)} {pm} {_number(std, places)}"
            cells.append(mark(text) if best[m] is not None and mean == best[m] else text)
        body.append(cells)
    tablefmt = {"github": "github", "latex": "latex_raw", "html": "unsafehtml"}[fmt]
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def _best_mean(rows: list[MethodRow], metric: str, higher_is_better: bool) -> float | None:
    means = [s[0] for s in (row.mean_std(metric) for row in rows) if s is not None]
    if not means:
        return None
    return max(means) if higher_is_better else min(means)


def _csv(rows: list[MethodRow], metrics: list[str], best: dict[str, float | None],
         benchmark_column: bool = False) -> str:
    """Machine-readable: numeric mean and std columns, plus which metrics the row is best on."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lead = ["benchmark"] if benchmark_column else []
    writer.writerow([*lead, "method", "seeds", "status", *[c for m in metrics for c in (m, f"{m} std")],
                     "best"])
    for row in rows:
        values, best_on = [], []
        for m in metrics:
            stats = row.mean_std(m)
            values += ["", ""] if stats is None else [repr(stats[0]), repr(stats[1])]
            if stats is not None and stats[0] == best[m]:
                best_on.append(m)
        lead = [row.benchmark] if benchmark_column else []
        writer.writerow([*lead, row.label, len(row.ok), row.status(), *values, ";".join(best_on)])
    return buffer.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
