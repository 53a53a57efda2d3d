"""Turns a benchmark into independent (method, seed) jobs, runs each, and writes one result file per job.

A job is fully described by its serializable :class:`Job`, and its only output is its result file, so the
same job list can later run one per GPU or on a cluster with the table built from the files.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from pydantic import BaseModel
from tqdm.auto import tqdm

from harness.components import EvalContext, Sampler
from harness.config import BenchmarkSpec, ComponentSpec, MethodSpec, TrainSpec, load_benchmark
from harness.data import Dataset, Split
from harness.errors import ConfigError, HarnessError
from harness.model import DualEncoder, EstimatorModel, take, to_device
from harness.registry import Registry, default_registry, load_plugins
from harness.results import (DatasetRecord, RunResult, load_results, provenance, read_result,
                             result_path, to_jsonable, write_result)
from harness.plots import plot_results
from harness.tables import build_table


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

    @property
    def name(self) -> str:
        return self.method["name"]

    @property
    def spec(self) -> MethodSpec:
        return MethodSpec.model_validate(self.method)


class Diverged(Exception):
    """The training loss became non-finite."""


@dataclass
class BenchmarkOutcome:
    spec: BenchmarkSpec
    results: list[RunResult]
    table: str
    directory: Path

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)


# --- planning and validation ------------------------------------------------------------------------

def plan(spec: BenchmarkSpec) -> list[Job]:
    dataset = spec.dataset.model_dump()
    evaluators = [e.model_dump() for e in spec.evaluators]
    return [Job(benchmark=spec.name, method=m.model_dump(exclude_none=True), method_index=i, seed=seed,
                dataset=dataset, evaluators=evaluators, report_metrics=spec.report.metrics,
                plugins=spec.plugins)
            for i, m in enumerate(spec.methods) for seed in spec.seeds]


def validate_components(spec: BenchmarkSpec, registry: Registry, file: str | None = None) -> None:
    """Resolve every component and check its parameters against its signature, without training."""

    def check(kind: str, comp: ComponentSpec, field: str) -> None:
        try:
            registry.get(kind, comp.name).check_params(comp.params)
        except ConfigError as exc:
            sub = exc.field if exc.field and exc.field != "name" else None
            raise ConfigError(exc.message, file=file,
                              field=f"{field}.{sub}" if sub else f"{field}.name") from None

    check("dataset", spec.dataset, "dataset")
    evaluator_names = set()
    for comp in spec.evaluators:
        check("evaluator", comp, f"evaluators[{comp.name}]")
        evaluator_names.add(comp.name)
    for m in spec.methods:
        where = f"methods[{m.name}]"
        check("encoder", m.encoders.image, f"{where}.encoders.image")
        check("encoder", m.encoders.text, f"{where}.encoders.text")
        if m.estimator is not None:
            check("estimator", m.estimator, f"{where}.estimator")
        if m.loss is not None:
            check("loss", m.loss, f"{where}.loss")
        if m.sampler is not None:
            check("sampler", m.sampler, f"{where}.sampler")
            try:  # losses and samplers are cheap to build; encoders may load weights, so not here
                loss = registry.create("loss", m.loss.name, **m.loss.params)
                sampler = registry.create("sampler", m.sampler.name, **m.sampler.params)
                sampler.check_loss(loss)
            except (ValueError, TypeError) as exc:
                raise ConfigError(str(exc), file=file, field=f"{where}.sampler") from None
    for metric in spec.report.metrics:
        prefix = metric.split("/", 1)[0]
        if "/" not in metric or prefix not in evaluator_names:
            raise ConfigError(f"expected EVALUATOR/METRIC with an evaluator of this benchmark "
                              f"({', '.join(sorted(evaluator_names))}), got {metric!r}",
                              file=file, field="report.metrics")


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"train.device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def execute(job: Job, registry: Registry, *, progress: bool = True,
            notify: Callable[..., None] | None = None,
            checkpoint_path: str | Path | None = None) -> RunResult:
    """Train and evaluate one job; never raises for errors in method code (the result says so)."""
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    spec = job.spec
    status, error, trace, metrics, higher, history = "ok", None, None, {}, {}, []
    dataset_record, device = None, None
    default_threads = torch.get_num_threads()
    try:
        if spec.train.threads is not None:
            torch.set_num_threads(spec.train.threads)
        device = resolve_device(spec.train.device)
        dataset, fingerprint = get_dataset(job.dataset, registry)
        dataset_record = DatasetRecord(name=job.dataset["name"], fingerprint=fingerprint,
                                       params={k: v for k, v in job.dataset.items() if k != "name"})
        train, test = dataset.split("train"), dataset.split("test")
        seed_everything(job.seed)
        context = {"embed_dim": spec.embed_dim, "dataset_info": dataset.info}
        encoders = DualEncoder(
            _build(registry, "encoder", spec.encoders.image, {**context, "modality": "image"}),
            _build(registry, "encoder", spec.encoders.text, {**context, "modality": "text"}),
            batch_size=spec.train.eval_batch_size, device=device).to(device)
        if spec.loss is not None:
            model = encoders
            history = train_gradient(job, model, train, dataset, registry, context, device,
                                     progress=progress, notify=notify,
                                     checkpoint_path=checkpoint_path if spec.train.checkpoint else None)
        else:
            estimator = _build(registry, "estimator", spec.estimator, context)
            model = EstimatorModel(encoders, estimator).fit(train.images, train.texts,
                                                            train.text_to_image)
        eval_context = EvalContext(model=model, split=test, train_split=train,
                                   dataset_info=dataset.info, device=device, seed=job.seed)
        for comp in job.evaluators:
            params = {k: v for k, v in comp.items() if k != "name"}
            evaluator = registry.create("evaluator", comp["name"], **params)
            for key, value in evaluator.evaluate(eval_context).items():
                metrics[f"{comp['name']}/{key}"] = _finite_or_none(value)
                higher[f"{comp['name']}/{key}"] = bool(evaluator.higher_is_better(key))
    except Diverged as exc:
        status, error = "diverged", str(exc)
    except Exception as exc:  # one method's bug must not stop the benchmark
        status, error, trace = "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()
    finally:
        torch.set_num_threads(default_threads)
    finished = datetime.now(timezone.utc)
    return RunResult(
        benchmark=job.benchmark, method=job.name, method_index=job.method_index, seed=job.seed,
        status=status, error=error, traceback=trace, metrics=metrics if status == "ok" else {},
        higher_is_better=higher if status == "ok" else {}, report_metrics=job.report_metrics,
        config=to_jsonable(job.method), dataset=dataset_record, history=history,
        provenance=provenance(started, finished, time.perf_counter() - t0,
                              describe_device(device) if device is not None else None))


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _build(registry: Registry, kind: str, comp: ComponentSpec, context: dict[str, Any]) -> Any:
    return registry.get(kind, comp.name).build(comp.params, context)


# --- gradient training ------------------------------------------------------------------------------

#: extras that only a sampler supplies (never taken from the dataset)
SAMPLER_EXTRAS = frozenset({"negatives"})


def _loss_extras(loss: torch.nn.Module) -> list[str]:
    """Keyword extras the loss's ``forward`` names beyond the two embeddings."""
    params = list(inspect.signature(loss.forward).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in SAMPLER_EXTRAS]


def make_optimizer(model_params: list[torch.nn.Parameter], loss_params: list[torch.nn.Parameter],
                   train: TrainSpec) -> torch.optim.Optimizer:
    """The configured optimizer; a loss's own parameters (e.g. a learnable temperature) get no weight
    decay, which would otherwise pull them towards 0."""
    if train.optimizer == "lbfgs":  # full batch, no weight decay term
        return torch.optim.LBFGS([*model_params, *loss_params], lr=train.lr,
                                 max_iter=train.lbfgs_max_iter, line_search_fn="strong_wolfe")
    groups = [{"params": model_params, "weight_decay": train.weight_decay}]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


def lr_factor(step: int, steps_per_epoch: int, train: TrainSpec) -> float:
    """Linear warm-up, then cosine decay to 0, step decay, or constant."""
    total = max(1, train.epochs * steps_per_epoch)
    warmup = int(train.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if train.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if train.schedule == "step":
        return train.gamma ** ((step // steps_per_epoch) // train.step_size)
    return 1.0


def train_gradient(job: Job, model: DualEncoder, split: Split, dataset: Dataset, registry: Registry,
                   context: dict[str, Any], device: torch.device, *, progress: bool = True,
                   notify: Callable[..., None] | None = None,
                   checkpoint_path: str | Path | None = None) -> list[dict[str, Any]]:
    spec = job.spec
    train = spec.train
    loss_fn = _build(registry, "loss", spec.loss, context).to(device)
    sampler = _build(registry, "sampler", spec.sampler, context) if spec.sampler else Sampler()
    sampler.check_loss(loss_fn)
    sampler.setup(model, loss_fn)
    extras_wanted = _loss_extras(loss_fn)
    class_names = list(dataset.info.class_names)
    model_params = [p for p in model.parameters() if p.requires_grad]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    params = model_params + loss_params
    if not params:
        raise HarnessError("nothing to train: the encoders and the loss have no trainable parameters")
    optimizer = make_optimizer(model_params, loss_params, train)

    texts_of_image = split.texts_of_image()
    counts = np.array([len(t) for t in texts_of_image])
    trainable = np.flatnonzero(counts > 0)  # images without a text cannot form a pair
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat_texts = np.concatenate(texts_of_image) if len(texts_of_image) else np.zeros(0, int)
    full_batch = train.optimizer == "lbfgs"
    batch_size = len(trainable) if full_batch else min(train.batch_size, len(trainable))
    steps_per_epoch = max(1, len(trainable) // batch_size)  # drop the ragged last batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, train))
    order_rng = torch.Generator().manual_seed(job.seed)
    caption_rng = np.random.default_rng(job.seed)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=train.precision == "bf16")

    def batch_loss(index: np.ndarray) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        # one random caption of each image per step: every caption is seen across epochs
        pick = offsets[index] + (caption_rng.random(len(index)) * counts[index]).astype(int)
        batch = {"images": to_device(model.image_encoder.prepare(take(split.images, index)), device),
                 "texts": to_device(model.text_encoder.prepare(split.take_texts(flat_texts[pick])),
                                    device)}
        extras = {}
        for name in extras_wanted:
            if name in ("images", "texts"):  # the prepared inputs, e.g. for reconstruction losses
                extras[name] = batch[name]
            elif name == "label_emb":
                labels_in = model.text_encoder.prepare(class_names)
                extras[name] = model.text_encoder(to_device(labels_in, device))
            elif name in split.extras:
                extras[name] = torch.as_tensor(np.asarray(split.extras[name])[index]).to(device)
        with autocast:
            image_emb, text_emb = model(batch["images"], batch["texts"])
            loss = sampler.compute_loss(loss_fn, model, batch, image_emb, text_emb, extras)
        if not torch.isfinite(loss):
            raise Diverged(f"non-finite loss {loss.item()}")
        return loss, batch, image_emb, text_emb

    history = []
    bar = tqdm(total=train.epochs * steps_per_epoch, desc=f"{job.name} seed={job.seed}",
               unit="step", leave=False, disable=not progress, file=sys.stderr)
    model.train()
    try:
        for epoch in range(train.epochs):
            t_epoch, losses = time.perf_counter(), []
            perm = torch.randperm(len(trainable), generator=order_rng).numpy()
            for step in range(steps_per_epoch):
                index = trainable[perm[step * batch_size:(step + 1) * batch_size]]
                if full_batch:
                    def closure():
                        optimizer.zero_grad(set_to_none=True)
                        value = batch_loss(index)[0]
                        value.backward()
                        return value
                    loss = optimizer.step(closure)
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    continue
                try:
                    loss, batch, image_emb, text_emb = batch_loss(index)
                except Diverged as exc:
                    raise Diverged(f"{exc} at epoch {epoch}, step {step}") from None
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if train.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
                optimizer.step()
                scheduler.step()
                sampler.after_step(model, batch, image_emb.detach(), text_emb.detach())
                losses.append(loss.item())
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
            logs = {"epoch": epoch, "loss": float(np.mean(losses)),
                    "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t_epoch}
            history.append(logs)
            if not math.isfinite(logs["loss"]):
                raise Diverged(f"non-finite loss at epoch {epoch}")
            if notify is not None:
                notify("on_epoch_end", job=job, epoch=epoch, logs=dict(logs))
    finally:
        bar.close()
    model.eval()
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, {"model": model.state_dict(), "loss": loss_fn.state_dict(),
                                          "sampler": sampler.state_dict(), "history": history})
    return history


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save`` (temp file + rename) of tensors and plain containers only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# --- the benchmark ----------------------------------------------------------------------------------

def notifier(registry: Registry, echo: Callable[[str], None]) -> Callable[..., None]:
    """Call a lifecycle hook on every plugin, isolating each: a failing logger is reported, not fatal."""

    def notify(hook_name: str, **kwargs: Any) -> None:
        for impl in getattr(registry.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                echo(f"warning: plugin {impl.plugin_name!r} raised in {hook_name}: "
                     f"{type(exc).__name__}: {exc}")

    return notify


def prepare(config: str | Path | Mapping[str, Any], *, overrides: Iterable[str] = (),
            plugins: Iterable[str] = ()) -> tuple[BenchmarkSpec, Registry, str | None]:
    """Load, validate and resolve a benchmark (what ``harness validate`` does)."""
    spec, file = load_benchmark(config, overrides)
    registry = load_plugins([*plugins, *spec.plugins]) if (list(plugins) or spec.plugins) \
        else default_registry()
    validate_components(spec, registry, file)
    return spec, registry, file


def run(config: str | Path | Mapping[str, Any], out_dir: str | Path = "results", *,
        overrides: Iterable[str] = (), plugins: Iterable[str] = (), overwrite: bool = False,
        progress: bool = True, echo: Callable[[str], None] | None = None) -> BenchmarkOutcome:
    """Run every method × seed of a benchmark, writing one result file each, and build the table.

    Runs that already have an ``ok`` result are skipped unless ``overwrite``; failed or diverged runs
    are retried. Returns the results of every job and the table built from the files.
    """
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    spec, registry, _ = prepare(config, overrides=overrides, plugins=plugins)
    for err in registry.load_errors:
        echo(f"warning: plugin {err.name!r} failed to load: {err.error}")
    notify = notifier(registry, echo)
    jobs = plan(spec)
    bench_dir = Path(out_dir).absolute() / spec.name
    notify("on_benchmark_start", benchmark=spec, jobs=jobs)
    results = []
    for i, job in enumerate(jobs, 1):
        path = result_path(out_dir, spec.name, job.name, job.seed)
        if path.exists() and not overwrite:
            try:
                previous = read_result(path)
            except Exception:
                previous = None  # unreadable: redo it
            if previous is not None and previous.status == "ok":
                echo(f"[{i}/{len(jobs)}] {job.name} seed={job.seed}: already done, skipping "
                     f"(--overwrite to redo)")
                results.append(previous)
                continue
        notify("on_run_start", job=job)
        result = execute(job, registry, progress=progress, notify=notify,
                         checkpoint_path=path.with_suffix(".pt"))
        write_result(path, result)
        summary = result.status if result.status == "ok" else f"{result.status}: {result.error}"
        echo(f"[{i}/{len(jobs)}] {job.name} seed={job.seed}: {summary} "
             f"({result.provenance.duration_s:.1f}s)")
        notify("on_run_end", job=job, result=result)
        results.append(result)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = load_results(bench_dir)
    table = build_table(stored, spec.report.metrics or None)
    (bench_dir / "table.md").write_text(table + "\n")
    try:
        plot_results(stored, bench_dir / "plots.png", spec.report.metrics or None)
    except Exception as exc:  # a plotting problem must not cost the finished results
        echo(f"warning: could not draw plots: {type(exc).__name__}: {exc}")
    notify("on_benchmark_end", benchmark=spec, results=results)
    return BenchmarkOutcome(spec=spec, results=results, table=table, directory=bench_dir)
