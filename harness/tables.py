"""Comparison tables built from result files alone (never from memory): the rows are
:mod:`harness.rows`', the statistics :mod:`harness.significance`'; here the decimals and the formats
(GitHub Markdown, LaTeX booktabs, HTML, CSV) with their footnotes."""

from __future__ import annotations

import csv
import html
import io
import math
import statistics
from typing import Literal, Sequence

from tabulate import DataRow, Line, TableFormat, tabulate

from harness.results import RunResult
# rows and statistics are importable from here too, as they were before they had modules of their own
from harness.rows import (MethodRow, by_benchmark, check_metrics, default_metrics, directions, environment_label,
                          environment_letters, group_runs, units)
from harness.significance import ALPHA, CONFIDENCE, Cell, compare_with_best, confidence_interval, worse_p_value

__all__ = ["ALPHA", "CONFIDENCE", "FORMATS", "Cell", "MethodRow", "build_table", "by_benchmark", "check_metrics",
           "column_decimals", "compare_with_best", "confidence_interval", "default_metrics", "directions",
           "environment_label", "environment_letters", "group_runs", "units", "worse_p_value"]

Format = Literal["github", "markdown", "latex", "html", "csv"]
FORMATS: tuple[str, ...] = ("github", "latex", "html", "csv")
ALIASES: dict[str, str] = {"markdown": "github"}  # other names accepted for a format

#: most decimals a column gets, however small its spread
MAX_DECIMALS = 6


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
