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
    eval_splits: list[str] = ["test"]

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
                plugins=spec.plugins, eval_splits=spec.eval_splits)
            for i, m in enumerate(spec.methods) for seed in spec.seeds]


def validate_components(spec: BenchmarkSpec, registry: Registry, file: str | None = None, *,
                        forward_check: bool = True) -> None:
    """Resolve and build every component, without training: names, parameter names and values, and
    (``forward_check``) whether each method's encoders, loss and sampler work together on this
    dataset, by one forward pass on a few training samples. The first problem raises a
    :class:`ConfigError` naming its field.

    ``harness run`` skips the forward check: there an exception in one method's code marks that
    method's runs ``failed`` and the others still train, while ``harness validate`` reports it."""

    def build(kind: str, comp: ComponentSpec, field: str, context: dict[str, Any] | None = None) -> Any:
        try:
            return registry.get(kind, comp.name).build(comp.params, context)
        except ConfigError as exc:
            sub = exc.field if exc.field and exc.field != "name" else None
            raise ConfigError(exc.message, file=file,
                              field=f"{field}.{sub}" if sub else f"{field}.name") from None
        except Exception as exc:  # a constructor rejecting a value, a missing weights file, …
            raise ConfigError(_describe(exc), file=file, field=field) from None

    for comp in spec.evaluators:
        build("evaluator", comp, f"evaluators[{comp.name}]")
    registry.get("dataset", spec.dataset.name)  # unknown name: "did you mean" before building
    try:
        dataset, _ = get_dataset(spec.dataset.model_dump(), registry)
        splits = {name: dataset.split(name) for name in {"train", *spec.eval_splits}}
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, field=f"dataset.{exc.field or 'name'}") from None
    except Exception as exc:
        raise ConfigError(_describe(exc), file=file, field="dataset") from None
    for m in spec.methods:
        where = f"methods[{m.name}]"
        context = {"embed_dim": m.embed_dim, "dataset_info": dataset.info}
        image = build("encoder", m.encoders.image, f"{where}.encoders.image", {**context, "modality": "image"})
        text = build("encoder", m.encoders.text, f"{where}.encoders.text", {**context, "modality": "text"})
        if m.estimator is not None:
            build("estimator", m.estimator, f"{where}.estimator", context)
            continue
        loss = build("loss", m.loss, f"{where}.loss", context)
        sampler = build("sampler", m.sampler, f"{where}.sampler", context) if m.sampler else Sampler()
        try:
            sampler.check_loss(loss)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc), file=file, field=f"{where}.sampler") from None
        if m.train.optimizer == "lbfgs":
            # full batch: the whole split is one step, so there are no past batches to queue and the
            # line search, not a norm bound, sets the step length
            if m.sampler is not None:
                raise ConfigError(f"sampler {m.sampler.name!r} needs minibatches; optimizer lbfgs trains "
                                  "on the whole split as one batch", file=file, field=f"{where}.sampler")
            if m.train.grad_clip is not None:
                raise ConfigError("grad_clip is not used by optimizer lbfgs (its line search sets the "
                                  "step length); remove it", file=file, field=f"{where}.train.grad_clip")
        if not forward_check:
            continue
        try:
            dry_run(DualEncoder(image, text), loss, sampler, splits["train"], dataset)
        except Exception as exc:
            raise ConfigError(f"the encoders and loss do not work together on this dataset: a forward "
                              f"pass on {DRY_RUN_SAMPLES} training samples failed with {_describe(exc)}",
                              file=file, field=where) from None
    evaluator_names = {comp.name for comp in spec.evaluators}
    for metric in spec.report.metrics:
        split, _, rest = metric.partition("/")
        name = rest if split in spec.eval_splits and split != "test" else metric
        prefix = name.split("/", 1)[0]
        if "/" not in name or prefix not in evaluator_names:
            raise ConfigError(f"expected [SPLIT/]EVALUATOR/METRIC with an evaluator of this benchmark "
                              f"({', '.join(sorted(evaluator_names))}) and a split of eval_splits other "
                              f"than test, got {metric!r}", file=file, field="report.metrics")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, HarnessError)) else str(exc)


DRY_RUN_SAMPLES = 4


def dry_run(model: DualEncoder, loss: torch.nn.Module, sampler: Sampler, split: Split,
            dataset: Dataset) -> None:
    """One forward pass of encoders + sampler + loss on the first few trainable samples, no gradient."""
    texts_of_image = split.texts_of_image()
    index = np.array([i for i, t in enumerate(texts_of_image) if len(t)][:DRY_RUN_SAMPLES])
    if len(index) == 0:
        raise ValueError("the train split has no image with a text")
    captions = np.array([texts_of_image[i][0] for i in index])
    sampler.setup(model, loss)
    with torch.no_grad():
        batch, extras = make_batch(model, split, index, captions, _loss_extras(loss),
                                   list(dataset.info.class_names), torch.device("cpu"))
        image_emb, text_emb = model(batch["images"], batch["texts"])
        sampler.compute_loss(loss, model, batch, image_emb, text_emb, extras)


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
        train = dataset.split("train")
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
        for split_name in job.eval_splits:
            eval_context = EvalContext(model=model, split=dataset.split(split_name), train_split=train,
                                       dataset_info=dataset.info, device=device, seed=job.seed)
            prefix = "" if split_name == "test" else f"{split_name}/"
            for comp in job.evaluators:
                params = {k: v for k, v in comp.items() if k != "name"}
                evaluator = registry.create("evaluator", comp["name"], **params)
                for key, value in evaluator.evaluate(eval_context).items():
                    metrics[f"{prefix}{comp['name']}/{key}"] = _finite_or_none(value)
                    higher[f"{prefix}{comp['name']}/{key}"] = bool(evaluator.higher_is_better(key))
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
        evaluators=to_jsonable(job.evaluators), eval_splits=job.eval_splits, plugins=job.plugins,
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


def make_batch(model: DualEncoder, split: Split, index: np.ndarray, captions: np.ndarray,
               extras_wanted: list[str], class_names: list[str], device: torch.device
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prepared inputs of images ``index`` paired with texts ``captions``, and the loss's extras."""
    batch = {"images": to_device(model.image_encoder.prepare(take(split.images, index)), device),
             "texts": to_device(model.text_encoder.prepare(split.take_texts(captions)), device)}
    extras = {}
    for name in extras_wanted:
        if name in ("images", "texts"):  # the prepared inputs, e.g. for reconstruction losses
            extras[name] = batch[name]
        elif name == "label_emb":
            labels_in = model.text_encoder.prepare(class_names)
            extras[name] = model.text_encoder(to_device(labels_in, device))
        elif name in split.extras:
            extras[name] = torch.as_tensor(np.asarray(split.extras[name])[index]).to(device)
    return batch, extras


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

    def draw_captions(index: np.ndarray) -> np.ndarray:
        # one random caption of each image per step: every caption is seen across epochs
        return flat_texts[offsets[index] + (caption_rng.random(len(index)) * counts[index]).astype(int)]

    def batch_loss(index: np.ndarray, captions: np.ndarray
                   ) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        batch, extras = make_batch(model, split, index, captions, extras_wanted, class_names, device)
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
                captions = draw_captions(index)
                if full_batch:
                    # L-BFGS evaluates the closure several times per step: all on the same captions,
                    # or its line search would chase a moving objective
                    def closure():
                        optimizer.zero_grad(set_to_none=True)
                        value = batch_loss(index, captions)[0]
                        value.backward()
                        return value
                    loss = optimizer.step(closure)
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    continue
                try:
                    loss, batch, image_emb, text_emb = batch_loss(index, captions)
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
            plugins: Iterable[str] = (), forward_check: bool = True
            ) -> tuple[BenchmarkSpec, Registry, str | None]:
    """Load, validate and resolve a benchmark (what ``harness validate`` does)."""
    spec, file = load_benchmark(config, overrides)
    registry = load_plugins([*plugins, *spec.plugins]) if (list(plugins) or spec.plugins) \
        else default_registry()
    validate_components(spec, registry, file, forward_check=forward_check)
    return spec, registry, file


#: train settings that change how a run executes, not what it computes
EXECUTION_ONLY = frozenset({"threads", "checkpoint", "eval_batch_size"})


def _comparable(method: Mapping[str, Any]) -> dict[str, Any]:
    """A method config with defaults filled in (older files may lack newer fields) and the
    execution-only train settings dropped."""
    data = to_jsonable(MethodSpec.model_validate(dict(method)).model_dump(exclude_none=True))
    data["train"] = {k: v for k, v in data.get("train", {}).items() if k not in EXECUTION_ONLY}
    return data


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if old == new else f"{path or 'value'}: {old!r} in the file, {new!r} now"


def stale_reason(previous: RunResult, job: Job) -> str | None:
    """Why an existing result does not belong to ``job`` (a different configuration), or None."""
    try:
        old_method = _comparable(previous.config)
    except Exception:  # written by an incompatible version: cannot vouch for it
        return "its method config no longer validates"
    parts = [("method", old_method, _comparable(job.method)),
             ("dataset", {"name": previous.dataset.name, **previous.dataset.params} if previous.dataset
              else None, to_jsonable(job.dataset))]
    if previous.evaluators is not None:  # absent from files written before it was recorded
        parts.append(("evaluators", {e["name"]: e for e in previous.evaluators},
                      {e["name"]: e for e in to_jsonable(job.evaluators)}))
        parts.append(("eval_splits", previous.eval_splits, job.eval_splits))
    for label, old, new in parts:
        found = _first_difference(old, new)
        if found:
            return f"{label} {found}"
    return None


def run(config: str | Path | Mapping[str, Any], out_dir: str | Path = "runs", *,
        overrides: Iterable[str] = (), plugins: Iterable[str] = (), overwrite: bool = False,
        progress: bool = True, echo: Callable[[str], None] | None = None) -> BenchmarkOutcome:
    """Run every method × seed of a benchmark, writing one result file each, and build the table.

    Runs that already have an ``ok`` result of the same configuration are skipped unless
    ``overwrite``; failed or diverged runs are retried. An ``ok`` result of a *different*
    configuration (an edited benchmark file, a ``--set``) stops everything before training, unless
    ``overwrite``: finished results are never replaced silently. Returns the results of every job and
    the table built from the files.
    """
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    spec, registry, file = prepare(config, overrides=overrides, plugins=plugins, forward_check=False)
    for err in registry.load_errors:
        echo(f"warning: plugin {err.name!r} failed to load: {err.error}")
    notify = notifier(registry, echo)
    jobs = plan(spec)
    bench_dir = Path(out_dir).absolute() / spec.name
    try:
        bench_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create the results folder {bench_dir}: {exc.strerror or exc}") from None
    done: dict[int, RunResult] = {}
    stale = []
    for i, job in enumerate(jobs):
        path = result_path(out_dir, spec.name, job.name, job.seed)
        if overwrite or not path.exists():
            continue
        try:
            previous = read_result(path)
        except Exception:
            continue  # unreadable: redo it
        if previous.status != "ok":
            continue
        reason = stale_reason(previous, job)
        if reason is None:
            done[i] = previous
        else:
            stale.append(f"{path}: {reason}")
    if stale:
        more = f" (and {len(stale) - 3} more)" if len(stale) > 3 else ""
        raise HarnessError(
            f"{len(stale)} finished result(s) in {bench_dir} come from a different configuration, e.g. "
            f"{'; '.join(stale[:3])}{more}. Pass --overwrite to replace them, or --out to write elsewhere.")
    notify("on_benchmark_start", benchmark=spec, jobs=jobs)
    results = []
    for i, job in enumerate(jobs, 1):
        path = result_path(out_dir, spec.name, job.name, job.seed)
        if i - 1 in done:
            echo(f"[{i}/{len(jobs)}] {job.name} seed={job.seed}: already done, skipping "
                 f"(--overwrite to redo)")
            results.append(done[i - 1])
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
