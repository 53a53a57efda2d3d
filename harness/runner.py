"""Turns a benchmark into independent (method, seed) jobs, runs each, and writes one result file per job.

A job is fully described by its serializable :class:`Job`, and its only output is its result file, so the
same job list can later run one per GPU or on a cluster with the table built from the files.
"""


from __future__ import annotations

import copy
import functools
import json
import math
import sys
import time
import traceback
import zlib
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from harness.components import EvalContext
from harness.config import BenchmarkSpec, ComponentSpec
from harness.distributed import backend_for, barrier, broadcast_json, init_from_env, rank, world_size
from harness.errors import ConfigError, HarnessError
from harness.environment import capture_environment, with_imported
from harness.features import cached_views
from harness.jobs import (Diverged, Job, _build, build_encoder, dataset_record, describe_device, get_dataset, plan,
                          resolve_device, run_settings, seed_everything, stale_reason)
from harness.model import DualEncoder, EstimatorModel
from harness.metric_chart import save_metric_chart
from harness.plots import plot_results
from harness.forkserver import start_if_processes
from harness.launchers import Task
from harness.loggers import attached_loggers, isolated_rng
from harness.registry import Registry, default_registry
from harness.results import RunResult, provenance, read_result, result_path, to_jsonable, write_result
from harness.tables import build_table
from harness.checkpoints import Resume
from harness.training import train_gradient
from harness.validation import prepare


@dataclass
class BenchmarkOutcome:
    spec: BenchmarkSpec
    results: list[RunResult]
    table: str
    directory: Path

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)



# --- one job ----------------------------------------------------------------------------------------

@dataclass
class Scores:
    """What the evaluators said about one model, keyed by full metric name (``[split/]evaluator/metric``)."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)


def evaluate(job: Job, registry: Registry, model: Any, dataset: Any, split_name: str,
             device: torch.device, scores: Scores | None = None) -> Scores:
    """Score ``model`` on one split with every evaluator of the job (test metrics keep plain names,
    other splits get the split as a prefix)."""
    scores = scores or Scores()
    relevance = getattr(dataset, "relevance", None)  # duck-typed datasets may not define it
    relevance_fn = None if relevance is None else functools.partial(relevance, split_name)
    context = EvalContext(model=model, split=dataset.split(split_name), train_split=dataset.split("train"),
                          dataset_info=dataset.info, device=device, seed=job.seed, relevance_fn=relevance_fn,
                          split_fn=dataset.split)
    prefix = "" if split_name == "test" else f"{split_name}/"
    for comp in job.evaluators:
        params = {k: v for k, v in comp.items() if k != "name"}
        evaluator = registry.create("evaluator", comp["name"], **params)
        for key, value in evaluator.evaluate(context).items():
            name = f"{prefix}{comp['name']}/{key}"
            scores.metrics[name] = _finite_or_none(value)
            scores.higher_is_better[name] = bool(evaluator.higher_is_better(key))
            unit = evaluator.unit(key)
            if unit:
                scores.units[name] = unit
        for key, value in evaluator.chance(context).items():
            scores.chance[f"{prefix}{comp['name']}/{key}"] = float(value)
    return scores


def execute(job: Job, registry: Registry, *, progress: bool = True,
            notify: Callable[..., None] | None = None,
            checkpoint_path: str | Path | None = None) -> RunResult:
    """Train and evaluate one job; never raises for errors in method code (the result says so).
    ``checkpoint_path`` (``seed-<n>.pt``) is where the final checkpoint goes with ``train.checkpoint``;
    mid-run checkpoints (``train.checkpoint_every``) go beside it as ``seed-<n>.resume.pt``."""
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    spec = job.spec
    status, error, trace, scores, history = "ok", None, None, Scores(), []
    record, device, environment = None, None, None
    distributions = {p.distribution for p in job.providers or () if p.distribution}
    settings = ExitStack()  # the run's torch settings (threads, determinism), restored at the end
    try:
        device = resolve_device(spec.train.device)
        settings.enter_context(run_settings(spec.train, device))
        environment = capture_environment(device, distributions)  # with the run's settings in force
        dataset, fingerprint = get_dataset(job.dataset, registry)
        record = dataset_record(job.dataset, fingerprint)
        seed_everything(job.seed)
        context = {"embed_dim": spec.embed_dim, "dataset_info": dataset.info}
        encoders = DualEncoder(
            build_encoder(registry, spec.encoders.image, {**context, "modality": "image"}),
            build_encoder(registry, spec.encoders.text, {**context, "modality": "text"}),
            batch_size=spec.train.eval_batch_size, device=device, workers=spec.train.workers)
        # heads and losses that fuse the two sides (matching heads) are built on the encoders' sizes
        context.update(x_dim=getattr(encoders.image_encoder, "output_dim", None),
                       y_dim=getattr(encoders.text_encoder, "output_dim", None))
        for key, comp in spec.heads.items():  # trainable task heads, trained and saved with the encoders
            # initialised from their own seed: adding a head leaves every other random draw of the run
            # (encoders, dropout, batches) as it was, so methods that share a first stage share it exactly
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(f"{job.seed}/{key}".encode()))
                encoders.heads[key] = _build(registry, "head", comp, context)
        encoders.to(device)
        data, dataset = cached_views(encoders, job, dataset, fingerprint, registry) \
            if spec.train.feature_cache else (dataset, dataset)
        train = data.split("train")  # training reads what it can of the frozen encoders' cached outputs
        if spec.kind == "gradient":
            model = encoders
            every = spec.train.val_every if "val" in job.eval_splits else 0

            def validate_epoch(epoch: int, last: bool) -> dict[str, float | None]:
                # the val curve: the same evaluators, on val, every `val_every` epochs (not the last:
                # the final scores are recorded after training)
                if not every or (epoch + 1) % every or last:
                    return {}
                return evaluate(job, registry, model, dataset, "val", device).metrics

            resume = None if checkpoint_path is None else Resume(
                resume_path(checkpoint_path), json.dumps([job.configuration(record), job.seed], default=str),
                spec.train.checkpoint_every)
            history = train_gradient(job, model, train, data, registry, context, device,
                                     progress=progress, notify=notify, epoch_metrics=validate_epoch,
                                     checkpoint_path=checkpoint_path if spec.train.checkpoint else None,
                                     resume=resume)
        else:
            estimator = _build(registry, "estimator", spec.estimator, context)
            model = EstimatorModel(encoders, estimator).fit(train.images, train.texts,
                                                            train.text_to_image)
        for split_name in job.eval_splits:
            evaluate(job, registry, model, dataset, split_name, device, scores)
        if history and "val" in job.eval_splits and spec.train.val_every:
            history[-1].update({k: v for k, v in scores.metrics.items() if k.startswith("val/")})
    except Diverged as exc:
        status, error = "diverged", str(exc)
    except Exception as exc:  # one method's bug must not stop the benchmark
        status, error, trace = "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()
    finally:
        settings.close()
    finished = datetime.now(timezone.utc)
    environment = with_imported(environment or capture_environment(device, distributions))
    ok = status == "ok"
    return RunResult(
        benchmark=job.benchmark, method=job.name, method_index=job.method_index, seed=job.seed,
        status=status, error=error, traceback=trace, metrics=scores.metrics if ok else {},
        higher_is_better=scores.higher_is_better if ok else {}, units=scores.units if ok else {},
        chance=scores.chance if ok else {}, report_metrics=job.report_metrics,
        config=to_jsonable(job.method), dataset=record, history=history,
        evaluators=to_jsonable(job.evaluators), eval_splits=job.eval_splits, plugins=job.plugins,
        providers=job.providers, sweep=job.sweep,
        provenance=provenance(started, finished, time.perf_counter() - t0,
                              describe_device(device) if device is not None else None, environment,
                              world_size=world_size(), backend=backend_for(device) if device else None))


def resume_path(checkpoint_path: str | Path) -> Path:
    """``seed-<n>.pt`` → ``seed-<n>.resume.pt``: where a job's mid-run checkpoints go."""
    return Path(checkpoint_path).with_suffix(".resume.pt")


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# --- the benchmark ----------------------------------------------------------------------------------

def notifier(registry: Registry, echo: Callable[[str], None]) -> Callable[..., None]:
    """Call a lifecycle hook on every plugin, isolating each: it gets copies of the arguments, its
    random draws are undone (:func:`isolated_rng`), and if it raises it is reported (once per plugin
    and hook) and the benchmark goes on: an observer never changes a result."""
    reported: set[tuple[str, str]] = set()

    def notify(hook_name: str, **kwargs: Any) -> None:
        for impl in getattr(registry.pm.hook, hook_name).get_hookimpls():
            try:
                with isolated_rng():
                    impl.function(**{k: copy.deepcopy(kwargs[k]) for k in impl.argnames})
            except Exception as exc:
                if (impl.plugin_name, hook_name) in reported:
                    continue
                reported.add((impl.plugin_name, hook_name))
                echo(f"warning: plugin {impl.plugin_name!r} raised in {hook_name}: "
                     f"{type(exc).__name__}: {exc} (its later errors in {hook_name} are not shown)")

    return notify


def run_task_here(task: Task, registry: Registry | None = None,
                  notify: Callable[..., None] | None = None,
                  echo: Callable[[str], None] | None = None) -> RunResult:
    """Run one task in this process and write its result file: what the inline launcher does for every
    job, and what a launcher's worker process does for its own."""
    registry = registry or default_registry()
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    notify = notify or notifier(registry, echo)
    # under DDP only rank 0 logs (the other ranks' notify is silent too)
    with attached_loggers(task.job, task.path, registry, echo) if rank() == 0 else nullcontext():
        notify("on_run_start", job=task.job)
        checkpoint = task.path.with_suffix(".pt")
        result = execute(task.job, registry, progress=task.progress, notify=notify, checkpoint_path=checkpoint)
        if rank() == 0:  # under DDP every rank holds the same result; one writes it
            write_result(task.path, result)
            if result.status == "ok":  # finished: a later run skips it, so its mid-run checkpoint is spent
                resume_path(checkpoint).unlink(missing_ok=True)
        notify("on_run_end", job=task.job, result=result)
    return result


def _listing(paths: list[str], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def run(config: str | Path | Mapping[str, Any], out_dir: str | Path = "runs", *,
        overrides: Iterable[str] = (), plugins: Iterable[str] = (), overwrite: bool = False,
        progress: bool = True, echo: Callable[[str], None] | None = None,
        launcher: str | None = None, launcher_options: Mapping[str, Any] | None = None
        ) -> BenchmarkOutcome:
    """Run every method × seed of a benchmark, writing one result file each, and build the table.

    Runs that already have an ``ok`` result of the same configuration are skipped unless
    ``overwrite``; failed or diverged runs are retried. An ``ok`` result of a *different*
    configuration (an edited benchmark file, a ``--set``, a changed plugin) stops everything before
    training, unless ``overwrite``: finished results are never replaced silently. The table and plots
    are built from the files of this configuration's jobs only; other result files in the folder are
    named in a warning and never averaged in. Progress bars are drawn only when stderr is a terminal.
    ``launcher`` (else the benchmark's ``launcher:``, else ``inline``) decides where the jobs run;
    ``launcher_options`` override its options.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this: each job trains with DDP (see
    :func:`harness.training.train_gradient`), jobs run one after another (inline), and only rank 0
    speaks, writes result files, tables and plots.
    """
    plugins, overrides = list(plugins), list(overrides)
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    progress = progress and sys.stderr.isatty()
    # the workers' imports overlap validation (`harness run` started it before importing torch: a no-op)
    start_if_processes(config, overrides, launcher)
    spec, registry, file = prepare(config, overrides=overrides, plugins=plugins, forward_check=False)
    init_from_env()
    if rank() != 0:  # one voice: the other ranks compute the same things silently
        echo, progress = (lambda msg: None), False
    for err in registry.load_errors:
        echo(f"warning: plugin {err.name!r} failed to load: {err.error}")
    notify = notifier(registry, echo) if rank() == 0 else (lambda hook_name, **kwargs: None)
    jobs = plan(spec, registry)
    record = dataset_record(jobs[0].dataset, get_dataset(jobs[0].dataset, registry)[1])
    bench_dir = Path(out_dir).absolute() / spec.name
    try:
        bench_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create the results folder {bench_dir}: {exc.strerror or exc}") from None
    paths = [result_path(bench_dir.parent, spec.name, job.name, job.seed) for job in jobs]
    done: dict[int, RunResult] = {}
    stale, replaced = [], []
    for i, (job, path) in enumerate(zip(jobs, paths)):
        if not path.exists():
            continue
        if overwrite:
            replaced.append(str(path.relative_to(bench_dir)))
            continue
        try:
            previous = read_result(path)
        except Exception:
            continue  # unreadable: redo it
        if previous.status != "ok":
            continue
        reason = stale_reason(previous, job, record)
        if reason is None:
            done[i] = previous
        else:
            stale.append(f"{path}: {reason}")
    if broadcast_json(sorted(done)) != sorted(done):
        raise HarnessError(f"the ranks see different result files in {bench_dir}: under torchrun every rank "
                           "must see the same --out folder")
    if stale:
        more = f" (and {len(stale) - 3} more)" if len(stale) > 3 else ""
        raise HarnessError(
            f"{len(stale)} finished result(s) in {bench_dir} come from a different configuration, e.g. "
            f"{'; '.join(stale[:3])}{more}. Pass --overwrite to replace them, or --out to write elsewhere.")
    planned = set(paths)
    others = sorted(str(p.relative_to(bench_dir)) for p in bench_dir.glob("*/seed-*.json")
                    if p not in planned)
    if overwrite and (replaced or others):
        echo(f"--overwrite: replacing {len(replaced)} result file(s) of this benchmark's runs"
             + (f"; leaving {len(others)} other result file(s) in {bench_dir} untouched: "
                f"{_listing(others)}" if others else ""))
    notify("on_benchmark_start", benchmark=spec, jobs=jobs)
    same = launcher is None or launcher == spec.launcher.name
    launcher_spec = ComponentSpec(name=launcher or spec.launcher.name,
                                  **{**(spec.launcher.params if same else {}), **(launcher_options or {})})
    try:
        chosen = registry.get("launcher", launcher_spec.name).build(launcher_spec.params)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, field=f"launcher.{exc.field or 'name'}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), file=file, field="launcher") from None
    inline = launcher_spec.name == "inline"
    if world_size() > 1 and not inline:
        raise ConfigError(f"under torchrun ({world_size()} ranks) each job trains with DDP on every rank, one "
                          f"job after another: use the inline launcher, not {launcher_spec.name!r}",
                          file=file, field="launcher")
    tasks = [Task(index=i, job=job, path=path, plugins=list(plugins), progress=progress and inline)
             for i, (job, path) in enumerate(zip(jobs, paths)) if i not in done]
    results: dict[int, RunResult] = dict(done)
    for i in sorted(done):
        echo(f"[{i + 1}/{len(jobs)}] {jobs[i].name} seed={jobs[i].seed}: already done, skipping "
             f"(--overwrite to redo)")
    try:
        for task, result in chosen.launch(tasks, lambda task: run_task_here(task, registry, notify, echo)):
            summary = result.status if result.status == "ok" else f"{result.status}: {result.error}"
            echo(f"[{task.index + 1}/{len(jobs)}] {task.job.name} seed={task.job.seed}: {summary} "
                 f"({result.provenance.duration_s:.1f}s)")
            results[task.index] = result
    except ConfigError as exc:  # an option the launcher could only judge when submitting: name the file
        if exc.file is not None:
            raise
        raise ConfigError(exc.message, file=file, field=exc.field or "launcher", **spec.locate("launcher")) \
            from None
    results = [results[i] for i in range(len(jobs))]
    if others:
        echo(f"warning: {len(others)} result file(s) in {bench_dir} are not runs of this configuration "
             f"and are left out of its table and plots: {_listing(others)} "
             f"(`harness table {bench_dir}` shows every configuration)")
    barrier()  # every rank reads what rank 0 wrote
    stored = [read_result(path) for path in paths]  # tables come from the files, never from memory
    table = build_table(stored, spec.report.metrics or None)
    if rank() == 0:
        (bench_dir / "table.md").write_text(table + "\n")
        try:
            plot_results(stored, bench_dir / "plots.png", spec.report.metrics or None)
            save_metric_chart(stored, bench_dir / "metrics-ci.png", spec.report.metrics or None)
        except Exception as exc:  # a plotting problem must not cost the finished results
            echo(f"warning: could not draw plots: {type(exc).__name__}: {exc}")
    notify("on_benchmark_end", benchmark=spec, results=results)
    return BenchmarkOutcome(spec=spec, results=results, table=table, directory=bench_dir)
