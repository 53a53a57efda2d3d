"""The ``csv`` logger: a plain per-epoch CSV beside the result file."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from harness import hookimpl
from harness.loggers import run_folder


class CsvLogger:
    """A plain CSV of each run's epochs (loss, lr, seconds, val scores) beside its result file.

    One row per epoch (``epoch``, ``stage`` for staged methods, ``loss``, ``lr``, ``seconds`` and
    any validation scores) in ``seed-<n>.csv`` beside the result file, or in
    ``<dir>/<benchmark>/<method>/seed-<n>.csv``. Rewritten after every epoch (a temp file renamed
    over it), so it can be watched while a run trains; epochs are numbered from 0 as in the result's
    history."""

    def __init__(self, dir: str | None = None, *, result_path: Path):
        result_path = Path(result_path)
        self.path = (run_folder(Path(dir).expanduser().absolute(), result_path) if dir
                     else result_path).with_suffix(".csv")
        self.rows: list[dict] = []

    @hookimpl
    def on_run_start(self, job):
        self.rows = []

    @hookimpl
    def on_epoch_end(self, job, epoch, logs):
        self.rows.append(dict(logs))
        self._write()

    def _write(self) -> None:
        columns = list(dict.fromkeys(["epoch", *(["stage"] if any("stage" in r for r in self.rows) else []),
                                      "loss", "lr", "seconds", *(k for r in self.rows for k in r)]))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, self.path)
