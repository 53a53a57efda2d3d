"""``harness lock``: a pinned requirements file of the environment result files were produced in, written
from their provenance, so that the environment of a committed leaderboard can be recreated with pip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.environment import (HARNESS_DISTRIBUTION, Environment, capture_environment,
                                 installed_from_elsewhere)
from harness.errors import HarnessError
from harness.results import RunResult, open_result, result_files


def merged_pins(recorded: Sequence[tuple[Path, Environment]]) -> dict[str, str]:
    """One version per distribution over the files' recorded environments; files that disagree were
    produced in different environments, which one lock cannot describe."""
    pins: dict[str, tuple[str, Path]] = {}
    for path, environment in recorded:
        first_path, first = recorded[0]
        if environment.python != first.python:
            raise HarnessError(f"the result files come from different environments: Python "
                               f"{first.python} in {first_path}, {environment.python} in {path}; lock "
                               f"the folders of each environment separately")
        for name, version in environment.installed.items():
            first = pins.setdefault(name, (version, path))
            if first[0] != version:
                raise HarnessError(f"the result files come from different environments: {name} "
                                   f"{first[0]} in {first[1]}, {version} in {path}; lock the folders "
                                   f"of each environment separately")
    return {name: version for name, (version, _) in sorted(pins.items())}


def _torch_and_python(result: RunResult) -> tuple[str | None, str]:
    return result.provenance.torch, result.provenance.python


def lock(paths: Sequence[str | Path], command: str = "harness lock", output: str = "<this file>") -> str:
    """The requirements file (text) pinning the environment of the ``ok`` result files ``paths`` name.

    Pins come from the files' recorded environments (``installed``: the dependency closure of the
    harness and of the plugins' distributions). Files written before environments were recorded name
    only their Python and torch: when no file records more, the pins are this environment's, provided
    that its Python and torch are exactly those of every file. A file that disagrees raises a
    :class:`HarnessError` naming it."""
    results = [(path, r) for path in result_files(list(paths)) if (r := open_result(path)).status == "ok"]
    if not results:
        raise HarnessError("no result file with status 'ok' to lock")
    recorded = [(path, r.provenance.environment) for path, r in results if r.provenance.environment]
    if recorded:
        pins, reference = merged_pins(recorded), recorded[0][1]
        python, torch_version = reference.python.split()[0], reference.torch_build.get("version")
        source = "the environments the result files record"
    else:
        distributions = {p.distribution for _, r in results for p in r.providers or () if p.distribution}
        reference = capture_environment(None, distributions)
        pins = reference.installed
        python, torch_version = reference.python.split()[0], reference.torch_build.get("version")
        source = (f"this environment: the files predate full environment records and name only their "
                  f"Python and torch, which are this environment's ({python}, torch {torch_version})")
    for path, result in results:
        if (torch_version, python) != _torch_and_python(result) and result.provenance.environment is None:
            torch_was, python_was = _torch_and_python(result)
            raise HarnessError(f"{path}: produced with torch {torch_was}, Python {python_was}, not with "
                               f"the locked torch {torch_version}, Python {python}; lock it separately "
                               f"(from an environment that has them)")
    return _requirements(pins, reference, source, len(results), command, output)


def _requirements(pins: dict[str, str], reference: Environment, source: str, count: int,
                  command: str, output: str) -> str:
    python = reference.python.split()[0]
    build = reference.torch_build
    cuda = f", CUDA {build['cuda']}, cuDNN {build.get('cudnn', '?')}" if build.get("cuda") else ""
    lines = [f"# The environment of {count} result file(s), written by `{command}`.",
             f"# Python {python} on {reference.system}; torch {build.get('version')} (BLAS "
             f"{build.get('blas', '?')}, oneDNN {build.get('onednn', '?')}{cuda}).",
             f"# Pinned from {source}.",
             f"# Recreate it with Python {python}: python -m venv .venv && .venv/bin/pip install "
             f"-r {output} -e .", ""]
    local = []
    for name, version in pins.items():
        origin = installed_from_elsewhere(name)
        if name == HARNESS_DISTRIBUTION:  # this repository, at the commit the files record
            local.append(f"# {name} {version}: this repository, installed by the `-e .` above")
        elif origin is None:
            lines.append(f"{name}=={version}")
        else:  # a local build or a VCS checkout: no index has it
            local.append(f"# {name} {version} was installed from {origin}, not from an index")
    return "\n".join(lines + local) + "\n"
