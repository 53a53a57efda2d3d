"""The ``tensorboard`` logger: TensorBoard event files written with ``torch.utils.tensorboard``."""

from __future__ import annotations

import json
from pathlib import Path

from harness import hookimpl
from harness.loggers import run_folder, scalars


class TensorBoardLogger:
    """TensorBoard event files: per-step and per-epoch loss and lr, epoch time, final metrics.

    Per-step loss and lr, per-epoch loss, lr, epoch seconds and validation scores, and the final
    metrics, in ``<dir>/<benchmark>/<method>/seed-<n>``, or without ``dir`` in
    ``tensorboard/<method>/seed-<n>`` inside the benchmark's results folder: ``tensorboard --logdir``.

    Tags: ``step/loss``, ``step/lr`` (x: optimizer step), ``epoch/loss``, ``epoch/lr``,
    ``epoch/seconds`` and val metrics by name (x: epoch), ``final/<metric>`` (x: epochs trained), and
    the method's config as text."""

    def __init__(self, dir: str | None = None, *, result_path: Path):
        self.result_path = Path(result_path)
        if dir:
            self.log_dir = run_folder(Path(dir).expanduser().absolute(), self.result_path)
        else:
            method_dir = self.result_path.parent
            self.log_dir = method_dir.parent / "tensorboard" / method_dir.name / self.result_path.stem
        self.writer = None

    @hookimpl
    def on_run_start(self, job):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        config = json.dumps(job.method, indent=2, sort_keys=True, default=str)
        self.writer.add_text("config", f"```\n{config}\n```")

    @hookimpl
    def on_step_end(self, job, step, logs):
        if self.writer is not None:
            for key, value in scalars(logs).items():
                self.writer.add_scalar(f"step/{key}", value, step)

    @hookimpl
    def on_epoch_end(self, job, epoch, logs):
        if self.writer is None:
            return
        for key, value in scalars(logs).items():
            tag = key if "/" in key else f"epoch/{key}"  # val metrics keep their names
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    @hookimpl
    def on_run_end(self, job, result):
        if self.writer is None:
            return
        epochs = len(result.history)
        for metric, value in scalars(result.metrics).items():
            self.writer.add_scalar(f"final/{metric}", value, epochs)
        self.writer.add_text("status", result.status + (f": {result.error}" if result.error else ""))
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
