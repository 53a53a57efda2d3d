"""The leaderboard as a static site: ``index.html``, one page per benchmark, the result files copied
under ``files/``; every image inline (PNG data), no request leaves the page.

Pages are jinja2 templates (``harness/templates``) with autoescaping: every string from a result file
is escaped. The numbers are :mod:`harness.tables`' (rows, decimals, intervals, tests).
"""

from __future__ import annotations

import base64
import importlib.resources
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import harness
from harness.errors import HarnessError
from harness.leaderboard import Entry, Leaderboard
from harness.tables import (ALPHA, MethodRow, _fixed, column_decimals, compare_with_best,
                            default_metrics, directions, group_runs, units)

#: marks a folder as a site this module wrote, so that writing again may replace it
MARKER = ".harness-leaderboard"


@dataclass
class Figure:
    src: str  # a data: URI
    caption: str


def write_site(board: Leaderboard, site: str | Path, metrics: Sequence[str] | None = None, *,
               progress: bool = False, warn: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Write the site into ``site`` (created; a previous leaderboard there is replaced, any other
    non-empty folder is refused). Returns the pages written, index first. ``warn`` hears of runs whose
    checkpoint could not be drawn."""
    from tqdm.auto import tqdm

    site = _prepare(Path(site))
    links = _copy_files(board, site)
    env = _environment()
    common = {"css": _asset("site.css"), "js": _asset("site.js"), "version": harness.__version__}
    pages, summaries = [], []
    benchmarks = board.benchmarks()
    names = _page_names(list(benchmarks))
    bar = tqdm(benchmarks.items(), desc="leaderboard", unit="benchmark", disable=not progress)
    for name, entries in bar:
        view = benchmark_view(name, entries, links, metrics, progress=progress, warn=warn)
        page = site / names[name]
        page.write_text(env.get_template("benchmark.html").render(**common, **view), encoding="utf-8")
        pages.append(page)
        summaries.append(_summary(name, names[name], entries, view))
    index = site / "index.html"
    index.write_text(env.get_template("index.html").render(
        **common, benchmarks=summaries, runs=len(board.entries), invalid=board.invalid,
        submissions=_submission_counts(board)), encoding="utf-8")
    return [index, *pages]


def _prepare(site: Path) -> Path:
    if site.exists() and not site.is_dir():
        raise HarnessError(f"{site}: exists and is not a folder")
    if site.is_dir() and any(site.iterdir()) and not (site / MARKER).exists():
        raise HarnessError(f"{site}: a non-empty folder that holds no leaderboard; choose a new or "
                           f"empty folder (a previous leaderboard is replaced)")
    if (site / MARKER).exists():  # a previous leaderboard: pages and copies of benchmarks now gone
        for old in site.glob("*.html"):
            old.unlink()
        shutil.rmtree(site / "files", ignore_errors=True)
    site.mkdir(parents=True, exist_ok=True)
    (site / MARKER).write_text("written by `harness leaderboard`; the folder is replaced when it is "
                               "written again\n")
    return site


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
    return Environment(loader=PackageLoader("harness", "templates"), undefined=StrictUndefined,
                       autoescape=select_autoescape(["html"], default=True), trim_blocks=True,
                       lstrip_blocks=True)


def _asset(name: str) -> Any:
    """A stylesheet or script of ours, inserted verbatim (it holds no data from result files)."""
    from markupsafe import Markup
    return Markup((importlib.resources.files("harness") / "templates" / name).read_text("utf-8"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def _page_names(benchmarks: list[str]) -> dict[str, str]:
    """A safe, unique file name per benchmark (names in result files are not trusted as paths)."""
    names: dict[str, str] = {}
    for name in benchmarks:
        base = _slug(name)
        page = f"{base}.html" if base != "index" else "benchmark-index.html"
        while page in names.values():
            page = f"{page.removesuffix('.html')}-{len(names)}.html"
        names[name] = page
    return names


def _copy_files(board: Leaderboard, site: Path) -> dict[int, str]:
    """Copy each kept result file to ``files/<n>-<folder>/<path in its folder>``: the site links to
    its own copies, so it can be published alone. Returns each entry's link by ``id(result)``."""
    folders = {s: f"{i + 1}-{_slug(s.label)}" for i, s in enumerate(board.submissions)}
    links: dict[int, str] = {}
    for entry in board.entries:
        relative = Path("files", folders[entry.submission], entry.relative)
        target = site / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry.path, target)
        links[id(entry.result)] = quote(relative.as_posix())
    return links


def benchmark_view(name: str, entries: list[Entry], links: dict[int, str],
                   metrics: Sequence[str] | None = None, *, progress: bool = False,
                   warn: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Everything one benchmark's page shows (plain strings and numbers; the template escapes)."""
    results = [e.result for e in entries]
    by_result = {id(e.result): e for e in entries}
    rows = group_runs(results)
    metrics = [m for m in (metrics or default_metrics(results)) if any(m in r.metrics for r in results)]
    higher, unit = directions(results), units(results)
    cells = {m: compare_with_best(rows, m, higher.get(m, True)) for m in metrics}
    decimals = {m: column_decimals(rows, m) for m in metrics}
    best_shown = {}
    for m in metrics:
        means = [c.mean for c in cells[m] if c.mean is not None]
        best = (max(means) if higher.get(m, True) else min(means)) if means else None
        best_shown[m] = None if best is None else _fixed(best, decimals[m])
    row_views = [_row_view(i, row, [cells[m][i] for m in metrics], metrics, decimals, best_shown,
                           [by_result[id(r)] for r in row.runs], links, progress, warn)
                 for i, row in enumerate(rows)]
    return {
        "name": name, "alpha": f"{ALPHA:g}", "rows": row_views, "runs": len(results),
        "columns": [{"metric": m, "unit": unit.get(m), "higher": higher.get(m, True)} for m in metrics],
        "seeds": ", ".join(str(s) for s in sorted({r.seed for r in results})),
        "datasets": _datasets(results), "sources": _sources(entries),
        "figures": _benchmark_figures(results, metrics)}


def _row_view(index: int, row: MethodRow, cells: list, metrics: list[str], decimals: dict[str, int],
              best_shown: dict[str, str | None], entries: list[Entry], links: dict[int, str],
              progress: bool, warn: Callable[[str], None]) -> dict[str, Any]:
    first = row.runs[0]
    views = []
    for metric, cell in zip(metrics, cells):
        if cell.mean is None:
            views.append({"text": None, "value": "", "best": False, "tied": False, "ci": None,
                          "n_note": None, "title": None})
            continue
        places = decimals[metric]
        shown = _fixed(cell.mean, places)
        text = shown if cell.std is None else f"{shown} ± {_fixed(cell.std, places)}"
        test = {"paired": "paired t-test", "welch": "Welch's t-test"}.get(cell.test)
        views.append({
            "text": text, "value": repr(cell.mean), "best": shown == best_shown[metric],
            "tied": cell.tied, "ci": None if cell.ci is None else
            f"[{_fixed(cell.ci[0], places)}, {_fixed(cell.ci[1], places)}]",
            "n_note": f"n = {cell.n}" if cell.n != len(row.ok) else None,
            "title": f"{test} against the best: p = {cell.p:.3g}" if test else None})
    evaluation = {"dataset": first.dataset.model_dump() if first.dataset else None,
                  "evaluators": first.evaluators, "eval_splits": first.eval_splits,
                  "sweep": first.sweep.model_dump() if first.sweep else None, "plugins": first.plugins}
    return {
        "id": f"panel-{index}", "label": row.label, "seeds": len(row.ok), "status": row.status(),
        "problem": row.status() != "ok", "cells": views,
        "config": json.dumps(first.config, indent=2, sort_keys=True, default=str),
        "evaluation": json.dumps(evaluation, indent=2, sort_keys=True, default=str),
        "providers": [_provider(p) for p in first.providers or []],
        "runs": [_run_view(e, links) for e in sorted(entries, key=lambda e: e.result.seed)],
        "figures": _run_figures(entries, progress, warn)}


def _run_view(entry: Entry, links: dict[int, str]) -> dict[str, Any]:
    r, p = entry.result, entry.result.provenance
    git = "—" if not p.git_sha else p.git_sha[:10] + (" (uncommitted changes)" if p.git_dirty else "")
    return {"seed": r.seed, "status": r.status, "source": entry.submission.label,
            "duration": f"{p.duration_s:.1f} s", "device": p.device or "—", "harness": p.harness_version,
            "git": git, "torch": f"{p.torch or '—'} / {p.cuda or 'no CUDA'}", "python": p.python,
            "finished": p.finished_at.strftime("%Y-%m-%d %H:%M UTC"), "href": links[id(r)],
            "file": entry.relative.as_posix(), "error": r.error,
            "duplicates": ", ".join(str(d) for d in entry.duplicates)}


def _provider(p) -> str:
    where = f"{p.distribution} {p.version}" if p.distribution else \
        f"module {p.module}" + (f" (sha256 {p.sha256[:12]})" if p.sha256 else "")
    return f"{p.kind} {p.name}: plugin {p.plugin}, {where}"


def _datasets(results: list) -> str:
    found = dict.fromkeys(f"{r.dataset.name} ({r.dataset.fingerprint[:12]})" for r in results if r.dataset)
    return ", ".join(found) or "not recorded"


def _sources(entries: list[Entry]) -> str:
    return ", ".join(dict.fromkeys(e.submission.label for e in entries))


def _summary(name: str, page: str, entries: list[Entry], view: dict[str, Any]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for e in entries:
        statuses[e.result.status] = statuses.get(e.result.status, 0) + 1
    return {"name": name, "page": page, "rows": len(view["rows"]), "runs": len(entries),
            "statuses": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
            "problems": set(statuses) != {"ok"}, "datasets": view["datasets"],
            "sources": view["sources"]}


def _submission_counts(board: Leaderboard) -> list[dict[str, Any]]:
    return [{"label": s.label, "files": sum(e.submission == s for e in board.entries),
             "duplicates": sum(len(e.duplicates) for e in board.entries if e.submission == s)}
            for s in board.submissions]


# --- figures ----------------------------------------------------------------------------------------

def png_data(figure) -> str:
    """A matplotlib figure as a ``data:image/png;base64,…`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _benchmark_figures(results: list, metrics: list[str]) -> list[Figure]:
    from harness.metric_chart import metric_chart
    from harness.plots import build_figure
    figures = []
    chart = metric_chart(results, metrics)
    if chart is not None:
        figures.append(Figure(png_data(chart), "Report metrics with 95 % confidence intervals."))
    overview = build_figure(results, metrics)
    if overview is not None:
        figures.append(Figure(png_data(overview.figure), "Training loss per method, validation curves "
                                                         "and metrics (mean ± std over seeds)."))
    return figures


def _run_figures(entries: list[Entry], progress: bool, warn: Callable[[str], None]) -> list[Figure]:
    """The embedding map and retrieval examples of the method's first run that has them: PNGs that
    ``harness plot`` wrote beside the result, else drawn from the run's checkpoint when it has one."""
    from harness.model_plots import MODEL_PLOTS, ModelPlotError, draw_model_plots
    for entry in sorted(entries, key=lambda e: e.result.seed):
        stored = [(entry.path.with_name(f"{entry.path.stem}.{kind}.png"), caption)
                  for kind, caption in MODEL_PLOTS.items()]
        if any(path.is_file() for path, _ in stored):
            return [Figure(file_data(path), f"{caption} (seed {entry.result.seed})")
                    for path, caption in stored if path.is_file()]
        if entry.path.with_suffix(".pt").is_file() and entry.result.status == "ok":
            try:
                drawn = draw_model_plots(entry.path, progress=progress)
            except ModelPlotError as exc:
                warn(f"no model plots on the page: {exc}")
                continue
            return [Figure(png_data(fig), f"{MODEL_PLOTS[kind]} (seed {entry.result.seed})")
                    for kind, fig in drawn.items()]
    return []
