"""The typed result file: one JSON per (method, seed), written atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

import harness
from harness.config import MethodSpec
from harness.errors import HarnessError
from harness.environment import Environment

SCHEMA_VERSION = 1
Status = Literal["ok", "failed", "diverged"]


class Provenance(BaseModel):
    harness_version: str
    git_sha: str | None = None
    git_dirty: bool | None = None  # the code (harness/, plugins/, pyproject.toml) differed from git_sha
    python: str
    torch: str | None = None
    cuda: str | None = None
    device: str | None = None
    platform: str
    started_at: datetime
    finished_at: datetime
    duration_s: float
    # packages, CPU, torch build and settings, and their fingerprint (None in older files)
    environment: Environment | None = None
    world_size: int = 1  # DDP ranks that trained the run (torchrun), 1 for a plain run
    backend: str | None = None  # their torch.distributed backend (gloo, nccl)


class DatasetRecord(BaseModel):
    name: str
    params: dict[str, Any]
    fingerprint: str


class Provider(BaseModel):
    """Where a component came from: its plugin and that plugin's distribution + version (entry points),
    or its module + a content hash of its source (modules loaded with ``-p`` or ``plugins:``)."""

    kind: str
    name: str
    plugin: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """What must match for two results to come from the same code."""
        return self.model_dump(exclude={"kind", "name"}, exclude_none=True)


class SweepPoint(BaseModel):
    """The grid point a swept variant stands for: ``base`` is the method name as written, ``values``
    the swept key paths and their values (``{"loss.temperature": 0.05}``)."""

    base: str
    values: dict[str, Any]


class RunResult(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    benchmark: str
    method: str
    method_index: int = 0  # position in the benchmark file, so tables keep its order
    seed: int
    status: Status
    error: str | None = None
    traceback: str | None = None
    metrics: dict[str, float | None] = {}
    higher_is_better: dict[str, bool] = {}
    report_metrics: list[str] = []
    config: dict[str, Any]  # the fully resolved method config (defaults merged, sweeps expanded)
    dataset: DatasetRecord | None = None
    # the rest of the job: with config and dataset, enough to run it again (None in older files)
    evaluators: list[dict[str, Any]] | None = None
    eval_splits: list[str] = ["test"]
    plugins: list[str] = []  # plugin modules the benchmark loads (its ``plugins:`` key)
    # the plugin that provided each component the run used (None in older files)
    providers: list[Provider] | None = None
    sweep: SweepPoint | None = None  # set for a variant expanded from a ``sweep``
    units: dict[str, str] = {}  # metric -> unit ("%"), as the evaluator declares it
    chance: dict[str, float] = {}  # metric -> its value for a random model, where the evaluator knows it
    history: list[dict[str, Any]] = []
    provenance: Provenance

    def configuration(self) -> dict[str, Any]:
        """Everything that decides what this run computes, but the seed: two results with equal
        configurations are seeds of one experiment and may be averaged; any difference may not."""
        return configuration(self.config, self.dataset, self.evaluators, self.eval_splits,
                             self.providers)


#: train settings that change how a run executes, not what it computes
EXECUTION_ONLY = frozenset({"threads", "checkpoint", "checkpoint_every", "feature_cache", "eval_batch_size",
                            "workers"})


def comparable_method(method: dict[str, Any]) -> dict[str, Any]:
    """A method config with defaults filled in (older files may lack newer fields) and the
    execution-only train settings dropped."""
    data = to_jsonable(MethodSpec.model_validate(dict(method)).model_dump(exclude_none=True))
    data["train"] = {k: v for k, v in data.get("train", {}).items() if k not in EXECUTION_ONLY}
    return data


def configuration(method: dict[str, Any], dataset: DatasetRecord | None,
                  evaluators: list[dict[str, Any]] | None, eval_splits: list[str],
                  providers: list[Provider] | None) -> dict[str, Any]:
    """The comparable description of a run (of a result file or of a planned job). Parts an older file
    did not record are left out, and so are not compared."""
    try:
        method_part = comparable_method(method)
    except Exception:  # written by an incompatible version: compare it as written
        method_part = to_jsonable(method)
    method_part.pop("name", None)
    data_part = None if dataset is None else {
        "name": dataset.name, **dataset.params, "fingerprint": dataset.fingerprint}
    out: dict[str, Any] = {"method": method_part, "dataset": to_jsonable(data_part)}
    if evaluators is not None:
        out["evaluators"] = {e["name"]: e for e in to_jsonable(evaluators)}
        out["eval_splits"] = list(eval_splits)
    if providers is not None:
        out["providers"] = {f"{p.kind} {p.name}": p.identity() for p in providers}
    return out


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first (in key order) field where two configurations differ: ``(dotted.path, old, new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if old == new else (path or "value", old, new)


def result_path(out_dir: str | Path, benchmark: str, method: str, seed: int) -> Path:
    return Path(out_dir) / benchmark / method / f"seed-{seed}.json"


def write_result(path: str | Path, result: RunResult) -> None:
    """Write via a temp file in the same folder + fsync + rename: a reader (or a ``kill -9``) never
    sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(result.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_result(path: str | Path) -> RunResult:
    return RunResult.model_validate_json(Path(path).read_text())


#: fields every result file has, whatever its schema version: a JSON object without them is not one
RESULT_KEYS = ("schema_version", "benchmark", "method", "seed", "status", "provenance")


def open_result(path: str | Path) -> RunResult:
    """A result file named by a user. A missing, unreadable, malformed or foreign file raises a
    :class:`HarnessError` naming the file (and the field), never a traceback."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise HarnessError(f"{path}: not a result file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    missing = [key for key in RESULT_KEYS if key not in data] if isinstance(data, dict) else RESULT_KEYS
    if missing:
        raise HarnessError(f"{path}: not a harness result file (a JSON object with "
                           f"{', '.join(RESULT_KEYS)}); it lacks {', '.join(missing)}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise HarnessError(f"{path}: schema_version: {data['schema_version']!r}; this harness reads "
                           f"version {SCHEMA_VERSION}")
    try:
        return RunResult.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise HarnessError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}{more}") from None


def result_files(paths: list[str | Path]) -> list[Path]:
    """The result files that command-line arguments name: files as given, folders searched for
    ``seed-<n>.json`` (in subfolders too), in order, each once."""
    found: dict[Path, None] = {}
    for arg in map(Path, paths):
        if arg.is_dir():
            inside = sorted(arg.glob("**/seed-*.json"))
            if not inside:
                raise HarnessError(f"{arg}: no result files (expected <method>/seed-<n>.json)")
            found.update(dict.fromkeys(inside))
        elif arg.exists():
            found[arg] = None
        else:
            raise HarnessError(f"{arg}: no such file or folder")
    return list(found)


def load_results(directory: str | Path) -> list[RunResult]:
    """Every valid result file under ``directory`` (a benchmark folder). Unreadable files are warned
    about and skipped; leftover temp files from a killed run are ignored."""
    results = []
    for path in sorted(Path(directory).glob("**/seed-*.json")):
        try:
            results.append(read_result(path))
        except (OSError, ValueError, ValidationError) as exc:
            warnings.warn(f"skipping unreadable result file {path}: {str(exc).splitlines()[0]}",
                          stacklevel=2)
    return results


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The harness checkout's commit, when it is a git checkout (editable installs)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(harness.__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(started_at: datetime, finished_at: datetime, duration_s: float,
               device: str | None, environment: Environment | None = None, world_size: int = 1,
               backend: str | None = None) -> Provenance:
    try:
        import torch
        torch_version, cuda = torch.__version__, torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = cuda = None
    return Provenance(harness_version=harness.__version__, git_sha=git_sha(), git_dirty=git_dirty(),
                      python=sys.version.split()[0], torch=torch_version, cuda=cuda, device=device,
                      platform=platform.platform(), started_at=started_at, finished_at=finished_at,
                      duration_s=round(duration_s, 3), environment=environment, world_size=world_size,
                      backend=backend)


def to_jsonable(value: Any) -> Any:
    """Config values as plain JSON types (tuples → lists)."""
    return json.loads(json.dumps(value, default=str))


@lru_cache(maxsize=1)
def git_dirty() -> bool | None:
    """Whether the checkout's code has uncommitted changes (``None`` outside a git checkout).

    Only the code and packaging count: result files written by the run itself must not make it dirty.
    """
    root = Path(harness.__file__).parent.parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                              "harness", "plugins", "pyproject.toml"],
                             cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None
