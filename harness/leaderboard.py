"""Merging result folders from several machines and submitters into one leaderboard.

Each folder given to ``harness leaderboard`` is a *submission* (labelled by its path, or ``NAME=DIR``).
Every ``seed-*.json`` under it is validated against the result schema; a file that is not a result is
reported by path and field and left out. Files are then merged by (benchmark, method, seed):

- identical runs (the same configuration, status and metrics; e.g. one folder copied into another)
  count once;
- two files that claim the same run but differ — a different dataset fingerprint anywhere, or, within
  one submission, any difference — are a :class:`Conflict` (exit 2), naming both files and the first
  differing field;
- different configurations under one method name from different submissions (two submitters'
  ``infonce``) are different methods: their rows are labelled by submission, ``infonce (alice)``.
  Seeds of one configuration are averaged whichever folders they come from.

Tables and statistics are :mod:`harness.tables`' own (rows, mean ± std, confidence intervals, tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import ValidationError

from harness.errors import HarnessError
from harness.results import RunResult, first_difference
from harness.tables import build_table, by_benchmark


@dataclass(frozen=True)
class Submission:
    """One folder given on the command line."""

    label: str
    folder: Path


@dataclass
class Entry:
    """One valid result file: where it was found, and the copies of the same run merged into it."""

    path: Path
    submission: Submission
    result: RunResult
    duplicates: list[Path] = field(default_factory=list)

    @property
    def relative(self) -> Path:
        """The file's path inside its submission's folder."""
        return self.path.relative_to(self.submission.folder)


@dataclass(frozen=True)
class InvalidFile:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Conflict(HarnessError):
    """Two result files claim the same (benchmark, method, seed) run but differ."""

    def __init__(self, first: Entry, second: Entry, where: str, old: Any, new: Any):
        self.first, self.second, self.field = first, second, where
        r = first.result
        super().__init__(
            f"conflicting results for benchmark {r.benchmark!r}, method {r.method!r}, seed {r.seed}: "
            f"{first.path} and {second.path} differ in {where} ({_short(old)} vs {_short(new)}); "
            f"remove one of them or give them different method names")


@dataclass
class Leaderboard:
    """The merged, labelled runs of every submission, and the files that were left out."""

    submissions: list[Submission]
    entries: list[Entry]
    invalid: list[InvalidFile]

    @property
    def results(self) -> list[RunResult]:
        return [e.result for e in self.entries]

    def benchmarks(self) -> dict[str, list[Entry]]:
        """Entries by benchmark name, in name order."""
        by_name = by_benchmark(self.results)
        entries: dict[str, list[Entry]] = {name: [] for name in by_name}
        for e in self.entries:
            entries[e.result.benchmark].append(e)
        return entries


def parse_submission(argument: str) -> Submission:
    """``DIR`` (labelled by its path as given) or ``NAME=DIR``."""
    name, sep, rest = argument.partition("=")
    if sep and name and "/" not in name and Path(rest).is_dir() and not Path(argument).exists():
        label, folder = name, Path(rest)
    else:
        label, folder = argument.rstrip("/") or argument, Path(argument)
    if not folder.is_dir():
        raise HarnessError(f"{folder}: not a folder (expected result folders as written by harness run)")
    return Submission(label, folder)


def read_entry(path: Path, submission: Submission) -> Entry | InvalidFile:
    """A result file validated against the schema, or why it is not one (the first bad field)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return InvalidFile(path, f"cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return InvalidFile(path, f"not UTF-8 text (byte offset {exc.start})")
    try:
        return Entry(path, submission, RunResult.model_validate_json(text))
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            return InvalidFile(path, f"not valid JSON: {err['msg'].removeprefix('Invalid JSON: ')}")
        where = ".".join(str(step) for step in err["loc"]) or "the file"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        detail = "required field is missing" if err["type"] == "missing" else err["msg"]
        return InvalidFile(path, f"{where}: {detail}{more}")


def collect(submissions: Sequence[Submission]) -> Leaderboard:
    """Read, validate and merge every result file of the submissions (see the module docstring).
    Raises :class:`Conflict` for two files that claim one run and differ."""
    entries: list[Entry] = []
    invalid: list[InvalidFile] = []
    seen: set[Path] = set()  # a folder given twice, or one inside another, is read once
    for submission in submissions:
        for path in sorted(submission.folder.rglob("seed-*.json")):
            if path.resolve() in seen or not path.is_file():
                continue
            seen.add(path.resolve())
            found = read_entry(path, submission)
            (invalid if isinstance(found, InvalidFile) else entries).append(found)
    merged = _merge(entries)
    return Leaderboard(list(submissions), _label(merged), invalid)


def _identity(result: RunResult) -> dict[str, Any]:
    """What two copies of one run must share: configuration, status and metrics."""
    return {"configuration": result.configuration(), "status": result.status,
            "metrics": result.metrics}


def _merge(entries: list[Entry]) -> list[Entry]:
    by_run: dict[tuple[str, str, int], list[Entry]] = {}
    for e in entries:
        by_run.setdefault((e.result.benchmark, e.result.method, e.result.seed), []).append(e)
    kept: list[Entry] = []
    for copies in by_run.values():
        distinct: list[Entry] = []
        for e in copies:
            twin = next((d for d in distinct if _identity(d.result) == _identity(e.result)), None)
            if twin is not None:
                twin.duplicates.append(e.path)
                continue
            for other in distinct:
                _check_pair(other, e)
            distinct.append(e)
        kept.extend(distinct)
    return kept


def _check_pair(first: Entry, second: Entry) -> None:
    """Two different files for one (benchmark, method, seed): a conflict unless they come from
    different submissions with different method configurations on the same data."""
    a, b = first.result, second.result
    data_a = a.dataset.fingerprint if a.dataset else None
    data_b = b.dataset.fingerprint if b.dataset else None
    if data_a != data_b:
        raise Conflict(first, second, "dataset.fingerprint", data_a, data_b)
    found = first_difference(_identity(a), _identity(b))
    if found is None:  # pragma: no cover - identical runs are merged before this
        return
    where, old, new = found
    if first.submission != second.submission and where.startswith("configuration."):
        return  # two submitters' methods of one name: distinct rows, labelled by submission
    raise Conflict(first, second, where.removeprefix("configuration."), old, new)


def _label(entries: list[Entry]) -> list[Entry]:
    """Rename the runs of a method name that stands for configurations of different submissions:
    ``infonce (alice)``, ``infonce (bob)`` — in memory only, for the tables. A name whose
    configurations all come from one submission keeps it; the tables then tell them apart by their
    first differing field."""
    groups: dict[tuple[str, str], dict[str, list[Entry]]] = {}
    for e in entries:
        key = json.dumps(e.result.configuration(), sort_keys=True, default=str)
        groups.setdefault((e.result.benchmark, e.result.method), {}).setdefault(key, []).append(e)
    for (_, method), configs in groups.items():
        if len(configs) < 2:
            continue
        owners = [tuple(dict.fromkeys(e.submission.label for e in members)) for members in configs.values()]
        if len(set(owners)) < len(owners):
            continue  # two configurations of one submission: labelled by their difference instead
        for members, owner in zip(configs.values(), owners):
            for e in members:
                e.result = e.result.model_copy(update={"method": f"{method} ({'+'.join(owner)})"})
    return entries


def markdown(board: Leaderboard, metrics: Sequence[str] | None = None) -> str:
    """The merged tables as Markdown (one per benchmark, :func:`harness.tables.build_table`), with
    the submissions they come from and the files left out."""
    sources = ", ".join(f"`{s.label}`" for s in board.submissions)
    parts = [f"Merged from {sources}: {len(board.entries)} run(s) of {len(board.benchmarks())} "
             f"benchmark(s)."]
    groups = board.benchmarks()
    for name, entries in groups.items():
        results = [e.result for e in entries]
        chosen = [m for m in metrics if any(m in r.metrics for r in results)] if metrics else None
        parts.append(f"### {name}\n\n{build_table(results, chosen or None, 'github')}")
    if board.invalid:
        parts.append("Left out (not valid result files):\n\n" + "\n".join(f"- `{f}`" for f in board.invalid))
    return "\n\n".join(parts) + "\n"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def submissions_from(arguments: Iterable[str]) -> list[Submission]:
    found = [parse_submission(a) for a in arguments]
    labels = [s.label for s in found]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise HarnessError(f"two folders are labelled {repeated[0]!r}; name them with NAME=DIR")
    return found


def leaderboard_command(directories: Sequence[str], output: str | None, fmt: str = "html",
                        metrics: Sequence[str] | None = None, *, progress: bool = False,
                        echo=lambda message: None) -> int:
    """``harness leaderboard``: merge, then write the site (``html``, into the folder ``output``) or
    the Markdown tables (``md``, into the file ``output`` or stdout). Returns the exit code: 1 when
    files were left out (listed through ``echo``), else 0. Conflicts, unknown metrics and unusable
    folders raise :class:`HarnessError` (exit 2)."""
    from harness.tables import check_metrics

    if fmt == "html" and not output:
        raise HarnessError("--output SITE is needed: the folder to write the site into")
    board = collect(submissions_from(directories))
    for f in board.invalid:
        echo(f"left out: {f}")
    if not board.entries:
        if board.invalid:
            echo(f"harness: no valid result file among {len(board.invalid)} file(s); nothing written")
            return 1
        raise HarnessError(f"no result files (seed-<n>.json) under {', '.join(directories)}")
    if metrics:
        check_metrics(board.results, metrics)
    if fmt == "md":
        text = markdown(board, metrics)
        if output:
            try:
                Path(output).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise HarnessError(f"cannot write {output}: {exc.strerror or exc}") from None
        else:
            print(text, end="")
    else:
        from harness.site import write_site
        try:
            pages = write_site(board, output, metrics, progress=progress,
                               warn=lambda message: echo(f"warning: {message}"))
        except OSError as exc:
            raise HarnessError(f"cannot write the site into {output}: {exc.strerror or exc}") from None
        print(pages[0])
    if board.invalid:
        echo(f"harness: {len(board.invalid)} file(s) left out: not valid result files (listed above)")
        return 1
    return 0
