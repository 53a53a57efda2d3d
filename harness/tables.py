"""Comparison tables built from result files alone (never from memory)."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Literal, Sequence

from tabulate import DataRow, Line, TableFormat, tabulate

from harness.errors import HarnessError, did_you_mean
from harness.results import RunResult, first_difference

Format = Literal["github", "markdown", "latex", "html", "csv"]
FORMATS: tuple[str, ...] = ("github", "latex", "html", "csv")
ALIASES: dict[str, str] = {"markdown": "github"}  # other names accepted for a format

#: most decimals a column gets, however small its spread
MAX_DECIMALS = 6
#: level of the confidence interval of a mean over seeds
CONFIDENCE = 0.95
#: significance level of the one-sided "worse than the best" test over seeds
ALPHA = 0.05


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

    def by_seed(self, metric: str) -> dict[int, tuple[float, str | None]]:
        """Seed -> (value, dataset fingerprint) of the ``ok`` runs that measured ``metric``; empty
        when a seed occurs twice (runs merged from several folders), since then seeds cannot pair."""
        runs = [r for r in self.ok
                if r.metrics.get(metric) is not None and math.isfinite(r.metrics[metric])]
        out = {r.seed: (float(r.metrics[metric]), r.dataset.fingerprint if r.dataset else None)
               for r in runs}
        return out if len(out) == len(runs) else {}

    def mean_std(self, metric: str) -> tuple[float, float] | None:
        values = self.values(metric)
        if not values:
            return None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    def environments(self) -> list[str]:
        """The environments (:func:`environment_label`) of the ``ok`` runs, in seed order, each once."""
        return list(dict.fromkeys(environment_label(r) for r in self.ok))

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


def environment_label(result: RunResult) -> str:
    """The environment a run computed in, for telling environments apart: its fingerprint with a summary,
    or, for files written before environments were recorded, the torch and Python they name."""
    env, prov = result.provenance.environment, result.provenance
    if env is not None:
        return f"{env.fingerprint}: {env.summary()}"
    return f"torch {prov.torch}, Python {prov.python} (no fingerprint recorded)"


def environment_letters(rows: Sequence[MethodRow]) -> dict[str, str]:
    """Environment label -> ``A``, ``B``, … in order of appearance over the rows' ``ok`` runs."""
    labels = dict.fromkeys(label for row in rows for label in row.environments())
    return {label: _letter(i) for i, label in enumerate(labels)}


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"E{i + 1}"


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


def confidence_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values`` (seeds), from the t distribution:
    mean ± t_{(1+level)/2, n-1} · s / √n, s the sample std. ``None`` for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def worse_p_value(values: Sequence[float], best: Sequence[float], higher_is_better: bool,
                  paired: bool) -> float:
    """One-sided p-value of "``values`` is worse than ``best``" (lower mean when higher is better,
    higher mean otherwise): ``scipy.stats.ttest_rel`` on seed-paired lists when ``paired``, else Welch's
    ``ttest_ind(equal_var=False)``. With no spread at all (constant differences, or both sides
    constant) the t statistic is undefined or infinite: a worse mean is then certain (p 0), an equal
    one is not worse (p 1). Each side needs at least 2 values."""
    from scipy.stats import ttest_ind, ttest_rel
    alternative = "less" if higher_is_better else "greater"
    with warnings.catch_warnings():  # "precision loss ... nearly identical", division by zero
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            result = ttest_rel(values, best, alternative=alternative)
        else:
            result = ttest_ind(values, best, equal_var=False, alternative=alternative)
    p = float(result.pvalue)
    if math.isnan(p):
        difference = statistics.fmean(values) - statistics.fmean(best)
        return 0.0 if (difference < 0 if higher_is_better else difference > 0) else 1.0
    return p


@dataclass(frozen=True)
class Cell:
    """The statistics of one row of one metric's column. ``best``: the row's mean (unrounded) is the
    column's best. ``tied``: marked as not significantly worse than the best (the best rows are).
    ``test``: how the row was compared with the best: ``paired`` (t-test over seeds paired by seed:
    the same seeds and dataset fingerprints), ``welch`` (Welch's t-test), ``none`` (the best itself,
    no value, or fewer than 2 seeds on a side). ``p``: the one-sided p-value of that test."""

    n: int = 0
    mean: float | None = None
    std: float | None = None
    ci: tuple[float, float] | None = None
    best: bool = False
    tied: bool = False
    test: Literal["paired", "welch", "none"] = "none"
    p: float | None = None


def compare_with_best(rows: Sequence[MethodRow], metric: str, higher_is_better: bool = True,
                      alpha: float = ALPHA) -> list[Cell]:
    """One :class:`Cell` per row, in order: mean, sample std, 95 % confidence interval of the mean,
    and whether the row is significantly worse than the column's best at level ``alpha``.

    The best is the row with the best mean (unrounded; among equal means the one with most seeds, then
    the first); every row with that mean is a best and is marked. Every other row is tested against
    it, one-sided in the direction of "worse" (:func:`worse_p_value`): paired by seed when both have
    values for exactly the same seeds (at least 2) and each seed's dataset fingerprint is known and the
    same on both sides, else Welch's test; with fewer than 2 seeds on either side there is no test and
    no mark. A row is marked when p ≥ ``alpha``. No correction for multiple comparisons."""
    cells: list[Cell] = []
    for row in rows:
        values = row.values(metric)
        if not values:
            cells.append(Cell())
            continue
        mean, std = statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
        cells.append(Cell(len(values), mean, std, confidence_interval(values)))
    means = [c.mean for c in cells if c.mean is not None]
    if not means:
        return cells
    best_mean = max(means) if higher_is_better else min(means)
    reference = max((i for i, c in enumerate(cells) if c.mean == best_mean),
                    key=lambda i: (cells[i].n, -i))
    best_seeds = rows[reference].by_seed(metric)
    best_values = rows[reference].values(metric)
    out = []
    for row, cell in zip(rows, cells):
        if cell.mean is None:
            out.append(cell)
        elif cell.mean == best_mean:
            out.append(replace(cell, best=True, tied=True))
        elif cell.n < 2 or len(best_values) < 2:
            out.append(cell)
        else:
            seeds = row.by_seed(metric)
            paired = (bool(seeds) and seeds.keys() == best_seeds.keys() and all(
                seeds[s][1] is not None and seeds[s][1] == best_seeds[s][1] for s in seeds))
            if paired:
                order = sorted(seeds)
                p = worse_p_value([seeds[s][0] for s in order], [best_seeds[s][0] for s in order],
                                  higher_is_better, paired=True)
            else:
                p = worse_p_value(row.values(metric), best_values, higher_is_better, paired=False)
            out.append(replace(cell, tied=p >= alpha, test="paired" if paired else "welch", p=p))
    return out


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
    """One row per configuration of a method (:func:`group_runs`): mean ± sample std over ``ok`` seeds
    with the 95 % confidence interval of the mean, the seed count, the status of every run (failed and
    diverged runs are shown, not hidden).

    ``github`` (alias ``markdown``), ``latex`` and ``html``: a cell reads ``12.3 ± 1.0 [10.9, 13.7]†``:
    mean ± std [confidence interval, t distribution over seeds], and ``†`` when the row is not
    significantly worse than the column's best (:func:`compare_with_best`: a one-sided paired t-test
    over seeds when the seeds and dataset match the best's, else Welch's; α = 0.05; the best is marked
    too). Every cell of a metric's column has the same decimals, chosen from the metric's spread
    (:func:`column_decimals`); a run of one seed shows its value alone (no interval, no test); a metric
    with a unit has it in its header (``retrieval/t2i_R@1 (%) ↑``); the best mean of each column, at
    the precision shown, is bold (ties all are); numeric columns are right-aligned. Under the table a
    footnote says what the cells and marks mean and which test gave the marks (``github``: lines after
    a blank line; ``latex``: ``%`` comment lines after the ``tabular``, ready for a caption; ``html``: a
    ``<caption>`` shown below the table). LaTeX is a booktabs ``tabular``
    (``\\toprule``/``\\midrule``/``\\bottomrule``, spec such as ``lrlrr``), text escaped; HTML is
    escaped. ``csv``: the same numbers in columns, no footnote: see :func:`_csv`.

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
    """The table of one benchmark's results, followed by its footnote (not in csv)."""
    rows = group_runs(results)
    metrics = list(metrics) if metrics else default_metrics(results)
    higher = directions(results)
    cells = {m: compare_with_best(rows, m, higher.get(m, True)) for m in metrics}
    if fmt == "csv":
        return _csv(rows, metrics, cells, benchmark_column, mixed=len(environment_letters(rows)) > 1)

    def bold(text: str) -> str:
        return {"github": f"**{text}**", "latex": rf"\textbf{{{text}}}", "html": f"<b>{text}</b>"}[fmt]

    def esc(text: str) -> str:
        return html.escape(text) if fmt == "html" else _latex_escape(text) if fmt == "latex" else text

    pm = r"$\pm$" if fmt == "latex" else "±"
    dagger = r"$^\dagger$" if fmt == "latex" else "†"
    arrows = {True: "↑", False: "↓"} if fmt != "latex" else {True: r"$\uparrow$", False: r"$\downarrow$"}
    unit = units(results)
    headers = [esc("method"), esc("seeds"), esc("status")] + [
        f"{esc(m)}{f' ({esc(unit[m])})' if unit.get(m) else ''} {arrows[higher.get(m, True)]}"
        for m in metrics]
    letters = environment_letters(rows)
    mixed = len(letters) > 1  # runs from several environments: each row says which, the footnote how
    headers += [esc("environment")] if mixed else []
    decimals = {m: column_decimals(rows, m) for m in metrics}
    best = {m: _best_mean(rows, m, higher.get(m, True)) for m in metrics}
    best_shown = {m: None if best[m] is None else _fixed(best[m], decimals[m]) for m in metrics}
    body = []
    for i, row in enumerate(rows):
        line = [esc(row.label), str(len(row.ok)), esc(row.status())]
        for m in metrics:
            cell, places = cells[m][i], decimals[m]
            if cell.mean is None:
                line.append("—")
                continue
            shown = _fixed(cell.mean, places)
            text = shown if cell.std is None else f"{shown} {pm} {_fixed(cell.std, places)}"
            text = bold(text) if shown == best_shown[m] else text
            if cell.ci is not None:
                text += f" [{_fixed(cell.ci[0], places)}, {_fixed(cell.ci[1], places)}]"
            line.append(text + dagger if cell.tied else text)
        if mixed:
            line.append(", ".join(letters[label] for label in row.environments()))
        body.append(line)
    tablefmt = {"github": "github", "latex": LATEX_BOOKTABS_RAW, "html": "unsafehtml"}[fmt]
    table = tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                     colalign=["left", "right", "left", *["right"] * len(metrics), *["left"] * mixed])
    notes = _footnote([c for m in metrics for c in cells[m]], fmt, bold, esc, dagger,
                      _welch_cells(rows, metrics, cells))
    if mixed:
        named = "; ".join(f"{letter}: {esc(label)}" for label, letter in letters.items())
        notes.append(f"The runs come from {len(letters)} environments ({named}): numbers from different "
                     f"environments may differ within the seeds' spread (`harness reproduce` checks a "
                     f"result); a row with several letters mixes them.")
    if fmt == "latex":
        return table + "\n" + "\n".join(f"% {line}" for line in notes)
    if fmt == "html":
        caption = '<caption style="caption-side: bottom; text-align: left;">{}</caption>'
        return table.replace("<table>", "<table>\n" + caption.format("<br>".join(notes)), 1)
    return table + "\n\n" + "\n".join(notes)


def _welch_cells(rows: Sequence[MethodRow], metrics: Sequence[str],
                 cells: dict[str, list[Cell]]) -> list[tuple[str, list[str]]]:
    """(row label, its metrics tested with Welch's test; empty: every tested metric of the row), for
    the rows with a Welch's test, when the table also has paired tests."""
    tests = {c.test for m in metrics for c in cells[m]}
    if not {"paired", "welch"} <= tests:
        return []
    out = []
    for i, row in enumerate(rows):
        welch = [m for m in metrics if cells[m][i].test == "welch"]
        tested = [m for m in metrics if cells[m][i].test != "none"]
        if welch:
            out.append((row.label, [] if welch == tested else welch))
    return out


def _footnote(cells: list[Cell], fmt: str, bold, esc, dagger: str,
              welch: list[tuple[str, list[str]]]) -> list[str]:
    """The lines under a table that say what its cells and marks mean and which test gave the marks."""
    pm, pct = (r"$\pm$", r"\%") if fmt == "latex" else ("±", "%")
    alpha = "$\\alpha$" if fmt == "latex" else "α"
    lines = [f"mean {pm} std over seeds [{CONFIDENCE * 100:g} {pct} confidence interval of the mean, "
             f"t distribution]; a value alone: one seed, no interval. {bold('Bold')}: the best mean. "
             f"{dagger}: not significantly worse than the best of the column (one-sided t-test over "
             f"seeds, {alpha} = {ALPHA:g}); the best is marked too."]
    tests = {c.test for c in cells}
    if tests == {"paired", "none"}:
        lines.append("Test: paired t-test, seed by seed (the same seeds and dataset as the best).")
    elif tests == {"welch", "none"}:
        lines.append("Test: Welch's t-test (the seeds or dataset differ from the best's).")
    elif welch:
        listed = "; ".join(esc(label) + (f" ({', '.join(esc(m) for m in metrics)})" if metrics else "")
                           for label, metrics in welch)
        lines.append("Test: paired t-test, seed by seed, where a method has the same seeds and dataset "
                     f"as the best; Welch's t-test otherwise: {listed}.")
    if any(c.mean is not None and not c.best and c.test == "none" for c in cells):
        lines.append("No test where the method or the best has fewer than 2 seeds: left unmarked.")
    return lines


def _best_mean(rows: list[MethodRow], metric: str, higher_is_better: bool) -> float | None:
    means = [s[0] for s in (row.mean_std(metric) for row in rows) if s is not None]
    if not means:
        return None
    return max(means) if higher_is_better else min(means)


def _csv(rows: list[MethodRow], metrics: list[str], cells: dict[str, list[Cell]],
         benchmark_column: bool = False, mixed: bool = False) -> str:
    """Machine-readable, one line per row of the table: ``[benchmark,] method, seeds, status``, then for
    each metric ``<metric> mean``, ``<metric> std`` (sample std), ``<metric> n`` (the ``ok`` seeds
    that measured it), ``<metric> ci95_low`` and ``<metric> ci95_high`` (the 95 % confidence interval
    of the mean), ``<metric> p`` (one-sided p-value of "worse than the best"), ``<metric> test``
    (``paired``, ``welch`` or ``none``: :func:`compare_with_best`) and ``<metric> tied_with_best``
    (``true``/``false``: not significantly worse than the best, the best included); then ``best``: the
    metrics whose mean (unrounded) is the best of the column, joined by ``;``. Numbers are plain, at full
    precision without float noise (12 significant digits: ``0.14``, ``15``); std and interval are empty
    for one seed, p empty without a test, and mean and std empty (n ``0``) when no seed measured the
    metric. No units: they are a property of the metric, not of the cell. When the runs come from
    several environments, a last column ``environment`` names each row's (:func:`environment_label`,
    joined by ``;``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lead = ["benchmark"] if benchmark_column else []
    parts = ("mean", "std", "n", "ci95_low", "ci95_high", "p", "test", "tied_with_best")
    writer.writerow([*lead, "method", "seeds", "status",
                     *[f"{m} {part}" for m in metrics for part in parts], "best",
                     *["environment"] * mixed])

    def number(x: float | None) -> str:
        return "" if x is None else _plain(x)

    for i, row in enumerate(rows):
        values, best_on = [], []
        for m in metrics:
            c = cells[m][i]
            low, high = c.ci if c.ci is not None else (None, None)
            values += [number(c.mean), number(c.std), c.n, number(low), number(high), number(c.p),
                       c.test, "true" if c.tied else "false"]
            if c.best:
                best_on.append(m)
        lead = [row.benchmark] if benchmark_column else []
        writer.writerow([*lead, row.label, len(row.ok), row.status(), *values, ";".join(best_on),
                         *[";".join(row.environments())] * mixed])
    return buffer.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
