"""A benchmark harness for multimodal (image-text) representation learning methods.

Python API mirroring the YAML: ``create(kind, name, **params)``, ``available(kind=None)`` and
``run(config, out_dir=...)``. Plugins implement the hooks in :mod:`harness.hookspecs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.hookspecs import hookimpl

__version__ = "0.1.0"


def create(kind: str, name: str, /, **params: Any) -> Any:
    """Build a registered component, e.g. ``create("loss", "infonce", temperature=0.07)``.

    Unknown kinds, names and parameters raise :class:`harness.errors.UnknownComponentError`, listing
    what exists (with a "did you mean").
    """
    from harness.registry import default_registry
    return default_registry().create(kind, name, **params)


def available(kind: str | None = None) -> dict[str, list[str]]:
    """``{kind: [names]}`` of every registered component (or of one kind)."""
    from harness.registry import default_registry
    return default_registry().available(kind)


def run(config: str | Path | Mapping[str, Any], out_dir: str | Path = "runs", *,
        overrides: Iterable[str] = (), plugins: Iterable[str] = (), overwrite: bool = False,
        progress: bool = True, launcher: str | None = None,
        launcher_options: Mapping[str, Any] | None = None):
    """Run a benchmark from a YAML path or a dict; returns a :class:`harness.runner.BenchmarkOutcome`.
    ``launcher`` (``inline``, ``processes``, …) and its options decide where the jobs run."""
    from harness.runner import run as _run
    return _run(config, out_dir, overrides=overrides, plugins=plugins, overwrite=overwrite,
                progress=progress, launcher=launcher, launcher_options=launcher_options)


def load_plugins(modules: Iterable[str]) -> None:
    """Load plugin modules by import path, as ``harness --plugin MODULE`` does."""
    from harness.registry import load_plugins as _load
    _load(modules)


__all__ = ["hookimpl", "create", "available", "run", "load_plugins", "__version__"]
