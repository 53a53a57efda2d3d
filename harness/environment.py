"""The environment a run computed in: the installed packages behind it, the CPU, torch's build and its
numerical settings, and a fingerprint of all that. A result file records it, so that a rerun can tell
whether a difference in the numbers may come from the environment or must come from the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel

#: the harness's own distribution: the root of every run's dependency closure
HARNESS_DISTRIBUTION = "multimodal-harness"
#: cuBLAS's workspace setting for deterministic results on CUDA (PyTorch's reproducibility notes)
CUBLAS_DETERMINISTIC = ":4096:8"


class Environment(BaseModel):
    """What besides the code and the configuration decides a run's numbers.

    ``fingerprint`` hashes every field but ``imported``: which modules a process has imported depends on
    what else it ran before (a worker that ran a pretrained encoder has imported its package), so a hash
    over it would differ between runs in one environment. ``installed`` (the versions of the
    dependency closure of the distributions that provided the run's components) is stable, and is what
    ``harness lock`` pins."""

    python: str  # "3.11.7 CPython"
    system: str  # "Linux x86_64 glibc 2.36"
    cpu: str | None = None  # the CPU's model name
    cpu_capability: str | None = None  # the instruction set torch's CPU kernels use ("AVX512")
    device: str  # "cpu", or the GPU's name
    torch_threads: int  # torch's CPU threads during the run
    torch_build: dict[str, str]  # version, BLAS/LAPACK, MKL, oneDNN, OpenMP, CUDA, cuDNN
    deterministic: dict[str, Any]  # torch's determinism flags and CUBLAS_WORKSPACE_CONFIG
    installed: dict[str, str]  # canonical distribution name -> version (the dependency closure)
    imported: dict[str, str] = {}  # every installed distribution the run's process had imported
    fingerprint: str

    def summary(self) -> str:
        """One line for people: ``torch 2.14.1+cu130 (mkl), Python 3.11.7, AVX512, 1 thread, cpu``."""
        build = self.torch_build
        threads = f"{self.torch_threads} thread{'s' if self.torch_threads != 1 else ''}"
        return (f"torch {build.get('version', '?')} ({build.get('blas', '?')}), Python "
                f"{self.python.split()[0]}, {self.cpu_capability or 'unknown ISA'}, {threads}, {self.device}")


def capture_environment(device: torch.device | None, distributions: Iterable[str] = ()) -> Environment:
    """The environment of a run on ``device`` whose components came from ``distributions`` (the harness's
    own is always included), with torch's settings as they are now: call it while the run's settings
    are in force. ``imported`` is left empty; :func:`with_imported` fills it at the end of the run."""
    roots = frozenset({HARNESS_DISTRIBUTION, *distributions})
    fields: dict[str, Any] = {
        "python": f"{platform.python_version()} {platform.python_implementation()}",
        "system": " ".join(part for part in (platform.system(), platform.machine(), *platform.libc_ver())
                           if part),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "torch_build": torch_build(),
        "deterministic": determinism_flags(),
        "installed": installed_closure(roots),
    }
    return Environment(**fields, fingerprint=fingerprint(fields))


def with_imported(environment: Environment) -> Environment:
    """``environment`` with the distributions the process has imported by now."""
    return environment.model_copy(update={"imported": imported_distributions()})


def fingerprint(fields: dict[str, Any]) -> str:
    """A short hash of the environment's fields (``imported`` excluded: see :class:`Environment`)."""
    stable = {k: v for k, v in fields.items() if k not in ("imported", "fingerprint")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def device_name(device: torch.device | None) -> str:
    """``cpu``, or the GPU's model: the index is left out, since worker k of a multi-GPU launcher runs on
    its own ``cuda:k`` of the same model."""
    if device is None or device.type != "cuda":
        return "cpu" if device is None else device.type
    return torch.cuda.get_device_name(device)


@lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or None)


@lru_cache(maxsize=1)
def torch_build() -> dict[str, str]:
    """The parts of torch's build that change numbers: its version and commit, the BLAS and LAPACK it
    calls, the MKL, oneDNN and OpenMP versions, the parallel backend, and CUDA / cuDNN (or ROCm)."""
    config, parallel = torch.__config__.show(), torch.__config__.parallel_info()

    def find(pattern: str, text: str = config) -> str | None:
        found = re.search(pattern, text)
        return found.group(1).strip() if found else None

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    build = {
        "version": torch.__version__,
        "git": torch.version.git_version,
        "blas": find(r"BLAS_INFO=([^,]+)"),
        "lapack": find(r"LAPACK_INFO=([^,]+)"),
        "mkl": find(r"Math Kernel Library Version (.+?) for "),
        "onednn": find(r"MKL-DNN v(\S+)"),  # oneDNN's former name, as torch prints it
        "openmp": find(r"OpenMP (\d+)"),
        "parallel": find(r"ATen parallel backend: (.+)", parallel),
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn is None else str(cudnn),
        "hip": torch.version.hip,
    }
    return {key: value for key, value in build.items() if value}


def determinism_flags() -> dict[str, Any]:
    """Torch's settings that decide whether kernels may be non-deterministic, as they are now."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


@lru_cache(maxsize=16)
def installed_closure(roots: frozenset[str]) -> dict[str, str]:
    """Versions of the installed distributions ``roots`` need, transitively (requirements whose markers
    do not hold here, and extras nobody asked for, are left out; uninstalled optional ones too), by
    canonical name, sorted."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in roots]
    while pending:
        name, extras = pending.pop()
        key = canonicalize_name(name)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[key] = dist.version
        for line in dist.requires or []:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:  # malformed metadata of some package: not ours to fix
                continue
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras or {""}):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return dict(sorted(found.items()))


@lru_cache(maxsize=1)
def _module_owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def imported_distributions() -> dict[str, str]:
    """Versions of the installed distributions whose top-level modules this process has imported."""
    owners = _module_owners()
    names = {canonicalize_name(dist) for module in list(sys.modules) if "." not in module
             for dist in owners.get(module, ())}
    versions = {}
    for name in sorted(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # uninstalled since the process started
            continue
    return versions


def differences(old: Environment, new: Environment, limit: int = 8) -> list[str]:
    """What differs between two environments, one short phrase each (``torch_threads: 1 → 2``,
    ``numpy 2.4.6 → 2.5.0``); at most ``limit`` package changes are named."""
    out = []
    for field in ("python", "system", "cpu", "cpu_capability", "device", "torch_threads"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            out.append(f"{field}: {before} → {after}")
    for field in ("torch_build", "deterministic"):
        before, after = getattr(old, field), getattr(new, field)
        out += [f"{field}.{key}: {before.get(key)} → {after.get(key)}"
                for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    packages = [f"{name} {old.installed.get(name, 'absent')} → {new.installed.get(name, 'absent')}"
                for name in sorted(set(old.installed) | set(new.installed))
                if old.installed.get(name) != new.installed.get(name)]
    more = [f"and {len(packages) - limit} more package(s)"] if len(packages) > limit else []
    return out + packages[:limit] + more


def installed_from_elsewhere(name: str) -> str | None:
    """Where a distribution was installed from when that was a source folder (an editable checkout) or a
    version-control URL, which no package index serves (PEP 610's ``direct_url.json``); else None. A
    wheel installed from a local file counts as the index's: its name and version pin it."""
    try:
        text = metadata.distribution(name).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        origin = json.loads(text) if text else {}
    except ValueError:
        return None
    return origin.get("url") if "dir_info" in origin or "vcs_info" in origin else None
