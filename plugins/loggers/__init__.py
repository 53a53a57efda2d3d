"""Bundled experiment loggers: ``tensorboard``, ``csv`` and (with the ``mlflow`` extra) ``mlflow``.

Turned on per benchmark with ``loggers: [{name: tensorboard}, {name: csv}]``; each observes runs through
the lifecycle hooks and never changes a result (:mod:`harness.loggers`).
"""

from harness import hookimpl

from .csv_log import CsvLogger
from .mlflow_log import MlflowLogger
from .tensorboard_log import TensorBoardLogger


@hookimpl
def register_loggers(register):
    register("tensorboard", TensorBoardLogger)
    register("csv", CsvLogger)
    register("mlflow", MlflowLogger)
