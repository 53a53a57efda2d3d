"""Checking a benchmark before anything trains: every component built on the dataset, one forward pass
per method (``harness validate``), and :func:`prepare`, which ``run`` and ``validate`` share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.components import Sampler
from harness.config import BenchmarkSpec, ComponentSpec, load_benchmark
from harness.errors import ConfigError, HarnessError
from harness.jobs import get_dataset
from harness.model import DualEncoder
from harness.registry import PluginImportError, Registry, load_plugins
from harness.training import DRY_RUN_SAMPLES, dry_run


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



def load_cli_plugins(modules: Iterable[str]) -> Registry:
    """The default registry with the ``--plugin`` modules added; one that cannot be imported is an
    error (the user asked for it), not a warning."""
    try:
        return load_plugins(modules)
    except PluginImportError as exc:
        raise HarnessError(f"--plugin {exc.module}: cannot load it: {exc.error}") from None


def prepare(config: str | Path | Mapping[str, Any], *, overrides: Iterable[str] = (),
            plugins: Iterable[str] = (), forward_check: bool = True
            ) -> tuple[BenchmarkSpec, Registry, str | None]:
    """Load, validate and resolve a benchmark (what ``harness validate`` does)."""
    spec, file = load_benchmark(config, overrides)
    registry = load_cli_plugins(plugins)
    for i, module in enumerate(spec.plugins):
        try:
            load_plugins([module])
        except PluginImportError as exc:
            raise ConfigError(f"cannot load plugin module {module!r}: {exc.error}", file=file,
                              field=f"plugins[{i}]") from None
    validate_components(spec, registry, file, forward_check=forward_check)
    return spec, registry, file

