"""Jobs: a benchmark becomes independent (method, seed) jobs, each fully described by a serializable
:class:`Job`; plus what every job needs before it trains (the dataset cache, seeding, the device,
building components) and the check that a stored result belongs to a job.
"""

from __future__ import annotations

import inspect
import json
import os
import random
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from pydantic import BaseModel

from harness.config import BenchmarkSpec, ComponentSpec, MethodSpec, TrainSpec
from harness.data import Dataset
from harness.environment import CUBLAS_DETERMINISTIC
from harness.errors import HarnessError
from harness.registry import Registry
from harness.results import DatasetRecord, Provider, RunResult, SweepPoint, configuration, first_difference


class Job(BaseModel):
    """One (method, seed) run, serializable so it can be shipped to another process or machine."""

    benchmark: str
    method: dict[str, Any]
    method_index: int
    seed: int
    dataset: dict[str, Any]
    evaluators: list[dict[str, Any]]
    report_metrics: list[str] = []
    plugins: list[str] = []
    eval_splits: list[str] = ["test"]
    providers: list[Provider] | None = None  # the plugin behind each component (see Registry.provider)
    sweep: SweepPoint | None = None
    loggers: list[dict[str, Any]] = []  # observers of the run (not part of its configuration)

    @property
    def name(self) -> str:
        return self.method["name"]

    @property
    def spec(self) -> MethodSpec:
        return MethodSpec.model_validate(self.method)

    def configuration(self, dataset: DatasetRecord) -> dict[str, Any]:
        """As :meth:`RunResult.configuration` of the result this job will write."""
        return configuration(self.method, dataset, self.evaluators, self.eval_splits, self.providers)


class Diverged(Exception):
    """The training loss became non-finite."""



def plan(spec: BenchmarkSpec, registry: Registry | None = None) -> list[Job]:
    """One job per method × seed, in file order. With ``registry``, each job records the plugin behind
    every component it uses (so a changed plugin makes its stored results stale)."""
    dataset = spec.dataset.model_dump()
    evaluators = [e.model_dump() for e in spec.evaluators]
    jobs = []
    for i, m in enumerate(spec.methods):
        providers = None if registry is None else [
            registry.provider(kind, comp.name) for kind, comp in components_of(spec, m)]
        sweep = spec.sweeps.get(m.name)
        for seed in spec.seeds:
            jobs.append(Job(benchmark=spec.name, method=m.model_dump(exclude_none=True), method_index=i,
                            seed=seed, dataset=dataset, evaluators=evaluators,
                            report_metrics=spec.report.metrics, plugins=spec.plugins,
                            eval_splits=spec.eval_splits, providers=providers,
                            sweep=SweepPoint(**sweep) if sweep else None,
                            loggers=[comp.model_dump() for comp in spec.loggers]))
    return jobs


def components_of(spec: BenchmarkSpec, method: MethodSpec) -> list[tuple[str, ComponentSpec]]:
    """Every component one method's run uses: ``(kind, spec)`` pairs."""
    parts: list[tuple[str, ComponentSpec]] = [("dataset", spec.dataset)]
    for comp in (method.encoders.image, method.encoders.text):
        base, head, _ = encoder_head(comp)
        parts += [("encoder", base)] + ([("head", head)] if head is not None else [])
    for stage in method.stage_list():
        parts += [(kind, comp) for kind, comp in (("loss", stage.loss), ("sampler", stage.sampler))
                  if comp is not None]
        parts += [("transform", comp) for comp in method.stage_train(stage).transforms]
    if method.estimator is not None:
        parts.append(("estimator", method.estimator))
    for comp in method.heads.values():
        parts.append(("head", comp))
        fusion = comp.params.get("fusion")  # a head's fusion (the matcher's), built by the head itself
        if isinstance(fusion, (str, dict)) and fusion:
            parts.append(("fusion", ComponentSpec.model_validate(
                {"name": fusion} if isinstance(fusion, str) else fusion)))
    parts += [("evaluator", comp) for comp in spec.evaluators]
    return parts


def dataset_record(dataset: Mapping[str, Any], fingerprint: str) -> DatasetRecord:
    return DatasetRecord(name=dataset["name"], fingerprint=fingerprint,
                         params={k: v for k, v in dataset.items() if k != "name"})



# --- datasets (cached per process: every method and seed sees the same data) ------------------------

_datasets: dict[str, tuple[Dataset, str]] = {}


def get_dataset(spec: Mapping[str, Any], registry: Registry) -> tuple[Dataset, str]:
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _datasets:
        params = {k: v for k, v in spec.items() if k != "name"}
        dataset = registry.create("dataset", spec["name"], **params)
        _datasets[key] = (dataset, dataset.fingerprint())
    return _datasets[key]


# --- one job ----------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def run_settings(train: TrainSpec, device: torch.device) -> Iterator[None]:
    """Torch's process-wide settings for one run, restored afterwards so that they never leak into the
    next run of the process: ``train.threads`` CPU threads, and with ``train.deterministic`` torch's
    deterministic algorithms (an op without one raises, naming itself), cuDNN's deterministic kernels
    without autotuning, and on CUDA cuBLAS's deterministic workspace setting (cuBLAS reads it when
    torch first allocates its workspace in a process, so a GPU process should run deterministic
    jobs from the start)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if train.threads is not None:
            torch.set_num_threads(train.threads)
        if train.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        threads, algorithms, warn_only, cudnn_deterministic, cudnn_benchmark, workspace = saved
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available; under torchrun ``auto`` and ``cuda`` mean this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if torchrun and name.startswith("cuda:"):  # every rank would take that one GPU
        raise HarnessError(f"train.device is {name!r}: under torchrun each rank uses its own GPU "
                           "(LOCAL_RANK); write `cuda` or `auto`")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"train.device is {name!r} but CUDA is not available on this machine")
    if name == "cuda" and torchrun:
        return torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)



def _build(registry: Registry, kind: str, comp: ComponentSpec, context: dict[str, Any]) -> Any:
    return registry.get(kind, comp.name).build(comp.params, context)


DEFAULT_ENCODER_HEAD = "mlp"


def encoder_head(comp: ComponentSpec) -> tuple[ComponentSpec, ComponentSpec | None, int | None]:
    """Split an encoder spec into the encoder itself, its ``head`` (``{name: mlp, …}``; the name may be
    left out: ``mlp``) or None, and its ``output_dim`` option (the encoder's own output size before the
    head, in place of ``embed_dim``) or None."""
    params = comp.params
    head, output_dim = params.pop("head", None), params.pop("output_dim", None)
    base = ComponentSpec(name=comp.name, **params)
    if output_dim is not None:
        if head is None:
            raise ValueError("output_dim sets the encoder's own output size before its head; without a "
                             "`head` the encoder outputs embed_dim")
        if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive integer, got {output_dim!r}")
    if head is None or isinstance(head, ComponentSpec):
        return base, head, output_dim
    if not isinstance(head, dict):
        raise ValueError(f"head must be a mapping such as {{name: mlp, hidden: [512]}}, got {head!r}")
    return base, ComponentSpec.model_validate({"name": DEFAULT_ENCODER_HEAD, **head}), output_dim


def build_encoder(registry: Registry, comp: ComponentSpec, context: dict[str, Any]) -> Any:
    """An encoder, with the head its ``head`` option names stacked on it (built with ``input_dim`` =
    the encoder's ``output_dim`` and ending at ``embed_dim``)."""
    from harness.model import HeadedEncoder

    base_spec, head_spec, output_dim = encoder_head(comp)
    base = _build(registry, "encoder", base_spec, encoder_context(registry, base_spec, context, output_dim))
    if head_spec is None:
        return base
    head = _build(registry, "head", head_spec, {**context, "input_dim": int(base.output_dim)})
    return HeadedEncoder(base, head)


def encoder_context(registry: Registry, comp: ComponentSpec, context: dict[str, Any],
                    output_dim: int | None) -> dict[str, Any]:
    """The context an encoder is built with: ``embed_dim`` replaced by its ``output_dim`` option."""
    if output_dim is None:
        return context
    if "embed_dim" not in inspect.signature(registry.get("encoder", comp.name).factory).parameters:
        raise ValueError(f"output_dim: encoder {comp.name!r} has a fixed output size (it takes no "
                         "embed_dim); leave output_dim out")
    return {**context, "embed_dim": output_dim}



def stale_reason(previous: RunResult, job: Job, dataset: DatasetRecord) -> str | None:
    """Why an existing result does not belong to ``job`` run on ``dataset`` (a different configuration:
    method, dataset parameters or content, evaluators, eval splits, or the code of a plugin that provided
    a component), or None."""
    if previous.status == "ok" and previous.dataset is None:
        return "it records no dataset"
    if previous.providers is None and job.providers is not None:
        # made before providers were recorded: nothing vouches that the same code made it
        return "it records no providers (written by an older harness): its plugins' code is unknown"
    old, new = previous.configuration(), job.configuration(dataset)
    new = {part: value for part, value in new.items() if part in old}  # parts older files lack
    found = first_difference(old, new)
    if found is None:
        return None
    path, before, now = found
    return f"{path}: {before!r} in the file, {now!r} now"
