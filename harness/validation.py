"""Checking a benchmark before anything trains: every component built on the dataset, one forward pass
per method (``harness validate``), and :func:`prepare`, which ``run`` and ``validate`` share."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.components import Sampler, transform_extras
from harness.config import BenchmarkSpec, ComponentSpec, load_benchmark
from harness.errors import ConfigError, HarnessError, MissingDataError, did_you_mean
from harness.jobs import encoder_context, encoder_head, get_dataset
from harness.model import DualEncoder, HeadedEncoder
from harness.registry import PluginImportError, Registry, load_plugins
from harness.training import DRY_RUN_SAMPLES, check_distributed_loss, dry_run, freeze, masks_false_negatives


def validate_components(spec: BenchmarkSpec, registry: Registry, file: str | None = None, *,
                        forward_check: bool = True, data: bool = True) -> None:
    """Resolve and build every component, without training: names, parameter names and values, and
    (``forward_check``) whether each method's encoders, loss and sampler work together on this
    dataset, by one forward pass on a few training samples. The first problem raises a
    :class:`ConfigError` naming its field.

    ``harness run`` skips the forward check: there an exception in one method's code marks that
    method's runs ``failed`` and the others still train, while ``harness validate`` reports it.

    ``data=False`` checks what needs no dataset (for data that is not on this machine): every
    component's name, parameter names and types, the evaluators and report metrics; the dataset is
    neither read nor built."""

    def error(message: str, field: str) -> ConfigError:  # with where the field was written
        return ConfigError(message, file=file, field=field, **spec.locate(field))

    def build(kind: str, comp: ComponentSpec, field: str, context: dict[str, Any] | None = None,
              *, defaults: bool = False) -> Any:
        try:
            component = registry.get(kind, comp.name)
            if defaults:  # parameters the default leaves out may be the methods' to give
                required = [n for n, p in component.parameters().items()
                            if p.default is p.empty and n not in comp.params]
                if required:
                    component.check_params({**dict.fromkeys(required), **comp.params})  # names only
                    component.check_types(comp.params)
                    return None
            return component.build(comp.params, context)
        except ConfigError as exc:
            sub = exc.field if exc.field and exc.field != "name" else None
            raise error(exc.message, f"{field}.{sub}" if sub else f"{field}.name") from None
        except Exception as exc:  # a constructor rejecting a value, a missing weights file, …
            raise error(_describe(exc), field) from None

    def build_encoder(comp: ComponentSpec, field: str, context: dict[str, Any], *,
                      defaults: bool = False) -> Any:
        # the encoder, then the head its `head` option names, built on the encoder's output size
        try:
            base_spec, head_spec, output_dim = encoder_head(comp)
            base_context = encoder_context(registry, base_spec, context, output_dim)
        except ValueError as exc:
            at = "output_dim" if str(exc).startswith("output_dim") else "head"
            raise error(str(exc), f"{field}.{at}") from None
        except ConfigError as exc:  # an unknown encoder name
            raise error(exc.message, f"{field}.name") from None
        base = build("encoder", base_spec, field, base_context, defaults=defaults)
        if head_spec is None or base is None:
            return base
        head = build("head", head_spec, f"{field}.head", {**context, "input_dim": int(base.output_dim)})
        return HeadedEncoder(base, head)

    evaluators = {comp.name: build("evaluator", comp, f"evaluators[{comp.name}]") for comp in spec.evaluators}
    check_report_metrics(spec, evaluators, file)
    # a logger's factory only stores its settings (files are opened when a run starts): build each one
    # on a stand-in result path, so names, parameters and missing packages are reported now
    example = Path(spec.name, "method", "seed-0.json")
    for comp in spec.loggers:
        build("logger", comp, f"loggers[{comp.name}]", {"result_path": example})
    try:
        registry.get("dataset", spec.dataset.name)  # unknown name: "did you mean" before building
    except ConfigError as exc:
        raise error(exc.message, "dataset.name") from None
    if not data:
        _check_without_data(spec, registry, error)
        return
    try:
        dataset, _ = get_dataset(spec.dataset.model_dump(), registry)
        splits = {name: dataset.split(name) for name in {"train", *spec.eval_splits}}
    except MissingDataError as exc:
        field = f"dataset.{exc.field or 'name'}"
        raise MissingDataError(exc.message, file=file, field=field, **spec.locate(field)) from None
    except ConfigError as exc:
        raise error(exc.message, f"dataset.{exc.field or 'name'}") from None
    except Exception as exc:
        raise error(_describe(exc), "dataset") from None
    for name, evaluator in evaluators.items():
        for split_name in spec.eval_splits:
            try:
                getattr(evaluator, "check_split", lambda _: None)(splits[split_name])
            except ValueError as exc:
                raise error(f"{exc} (dataset {spec.dataset.name!r})", f"evaluators[{name}]") from None
    def check_transform(transform: Any, comp: ComponentSpec, field: str) -> Any:
        # transforms work on image batches [B, C, H, W] and need the per-image extras they name
        if len(dataset.info.image_shape) != 3:
            raise error(f"transform {comp.name!r} needs images shaped (C, H, W); dataset "
                        f"{spec.dataset.name!r} has {tuple(dataset.info.image_shape)}", field)
        have = set(splits["train"].extras) | ({"captions"} if dataset.info.text_kind == "caption" else set())
        missing = [name for name in transform_extras(transform, required=True) if name not in have]
        if missing:
            raise error(f"transform {comp.name!r} needs the per-image {', '.join(missing)} of each training "
                        f"image, which dataset {spec.dataset.name!r} does not provide (it has: "
                        f"{', '.join(sorted(have)) or 'none'})", field)
        return transform

    # a component written in `defaults` is built once at its own path, so that its problems are reported
    # there and not once per method (a method naming another component replaces it whole); one without
    # a name is completed by the methods
    d = spec.defaults
    context = {"embed_dim": d.embed_dim or 64, "dataset_info": dataset.info}
    encoders = d.encoders
    for kind, comp, field, extra in (
            ("encoder", encoders and encoders.image, "defaults.encoders.image", {"modality": "image"}),
            ("encoder", encoders and encoders.text, "defaults.encoders.text", {"modality": "text"}),
            ("loss", d.loss, "defaults.loss", {}), ("sampler", d.sampler, "defaults.sampler", {}),
            ("estimator", d.estimator, "defaults.estimator", {})):
        if comp is not None and comp.name is not None:
            if kind == "encoder":
                build_encoder(ComponentSpec.model_validate(comp.model_dump()), field,
                              {**context, **extra}, defaults=True)
            else:
                build(kind, comp, field, {**context, **extra}, defaults=True)
    for i, comp in enumerate(d.train.transforms if d.train else []):
        check_transform(build("transform", comp, f"defaults.train.transforms[{i}]", context),
                        comp, f"defaults.train.transforms[{i}]")
    for m in spec.methods:
        where = f"methods[{m.name}]"
        context = {"embed_dim": m.embed_dim, "dataset_info": dataset.info}
        image = build_encoder(m.encoders.image, f"{where}.encoders.image", {**context, "modality": "image"})
        text = build_encoder(m.encoders.text, f"{where}.encoders.text", {**context, "modality": "text"})
        if m.estimator is not None:
            build("estimator", m.estimator, f"{where}.estimator", context)
            # fitted once on fixed features: nothing would train a head or see a transformed batch
            for side, encoder in (("image", image), ("text", text)):
                if isinstance(encoder, HeadedEncoder):
                    raise error("a closed-form method (estimator) is fitted on fixed encoder outputs; "
                                "an encoder head would stay untrained: remove `head`",
                                f"{where}.encoders.{side}.head")
            if m.train.transforms:
                raise error("a closed-form method (estimator) has no training batches to transform; "
                            "remove train.transforms (set `train: {transforms: []}` in this method when "
                            "they come from defaults)", f"{where}.train.transforms")
            continue
        model = DualEncoder(image, text)
        context.update(x_dim=getattr(image, "output_dim", None), y_dim=getattr(text, "output_dim", None))
        for key, comp in m.heads.items():
            model.heads[key] = build("head", comp, f"{where}.heads.{key}", context)
        for stage in m.stage_list():
            at = f"{where}.stages[{stage.name}]" if m.stages is not None else where
            train = m.stage_train(stage)
            loss = build("loss", stage.loss, f"{at}.loss", context)
            try:  # under torchrun (WORLD_SIZE ranks), only losses exact across ranks
                check_distributed_loss(loss, int(os.environ.get("WORLD_SIZE", "1") or 1))
            except ValueError as exc:
                raise error(str(exc), f"{at}.loss") from None
            sampler = build("sampler", stage.sampler, f"{at}.sampler", context) if stage.sampler \
                else Sampler()
            transforms = []
            for i, comp in enumerate(train.transforms):
                field = f"{at}.train.transforms[{i}]"
                transforms.append(check_transform(build("transform", comp, field, context), comp, field))
            try:
                sampler.check_loss(loss)
            except (ValueError, TypeError) as exc:
                raise error(str(exc), f"{at}.sampler") from None
            try:
                masks_false_negatives(loss, sampler, transforms)
            except ValueError as exc:
                side = "loss" if getattr(loss, "mask_false_negatives", False) else "sampler"
                raise error(str(exc), f"{at}.{side}.mask_false_negatives") from None
            if train.optimizer == "lbfgs":
                # full batch: the whole split is one step, so there are no past batches to queue and
                # the line search, not a norm bound, sets the step length
                if stage.sampler is not None:
                    raise error(f"sampler {stage.sampler.name!r} needs minibatches; optimizer lbfgs trains "
                                "on the whole split as one batch", f"{at}.sampler")
                if train.grad_clip is not None:
                    raise error("grad_clip is not used by optimizer lbfgs (its line search sets the step "
                                "length); remove it", f"{at}.train.grad_clip")
            try:
                freeze(model, stage.freeze)
            except ValueError as exc:
                raise error(str(exc), f"{at}.freeze") from None
            finally:
                model.requires_grad_(True)
            if not forward_check:
                continue
            try:
                dry_run(model, loss, sampler, splits["train"], dataset, transforms)
            except Exception as exc:
                raise error(f"the encoders{', heads' if m.heads else ''} and loss do not work together "
                            f"on this dataset: a forward pass on {DRY_RUN_SAMPLES} training samples failed "
                            f"with {_describe(exc)}", at) from None


def _check_without_data(spec: BenchmarkSpec, registry: Registry, error: Any) -> None:
    """The checks of :func:`validate_components` that need no dataset: each component's name, parameter
    names and parameter types (context parameters such as ``dataset_info`` are the runner's to give)."""

    def check(kind: str, comp: ComponentSpec | None, field: str) -> None:
        if comp is None or comp.name is None:
            return
        try:
            component = registry.get(kind, comp.name)
            component.check_params(comp.params)
            component.check_types(comp.params)
        except ConfigError as exc:
            sub = exc.field if exc.field and exc.field != "name" else None
            raise error(exc.message, f"{field}.{sub}" if sub else f"{field}.name") from None

    def check_encoder(comp: ComponentSpec, field: str) -> None:
        try:
            base, head, _ = encoder_head(ComponentSpec.model_validate(comp.model_dump()))
        except ValueError as exc:
            raise error(str(exc), f"{field}.head") from None
        check("encoder", base, field)
        check("head", head, f"{field}.head")

    params = {k: v for k, v in spec.dataset.model_dump().items() if k != "name"}
    check("dataset", ComponentSpec(name=spec.dataset.name, **params), "dataset")
    ranks = int(os.environ.get("WORLD_SIZE", "1") or 1)  # under torchrun: only losses exact across ranks
    for m in spec.methods:
        where = f"methods[{m.name}]"
        check_encoder(m.encoders.image, f"{where}.encoders.image")
        check_encoder(m.encoders.text, f"{where}.encoders.text")
        check("estimator", m.estimator, f"{where}.estimator")
        for key, comp in m.heads.items():
            check("head", comp, f"{where}.heads.{key}")
        for stage in ([] if m.estimator is not None else m.stage_list()):
            at = f"{where}.stages[{stage.name}]" if m.stages is not None else where
            check("loss", stage.loss, f"{at}.loss")
            try:
                check_distributed_loss(registry.get("loss", stage.loss.name).factory, ranks)
            except ValueError as exc:
                raise error(str(exc), f"{at}.loss") from None
            check("sampler", stage.sampler, f"{at}.sampler")
            for i, comp in enumerate(m.stage_train(stage).transforms):
                check("transform", comp, f"{at}.train.transforms[{i}]")


def check_report_metrics(spec: BenchmarkSpec, evaluators: Mapping[str, Any], file: str | None) -> None:
    """Each ``report.metrics`` entry must be ``[SPLIT/]EVALUATOR/METRIC`` with an evaluator of the
    benchmark, a split of ``eval_splits`` (test metrics have no prefix) and a metric the evaluator
    declares it produces for its parameters (:meth:`Evaluator.metric_names`; undeclared: not checked)."""
    valid: list[str] = []  # every reportable name, for "did you mean"
    for name, evaluator in evaluators.items():
        for metric in evaluator.metric_names() or []:
            valid += [f"{split}/{name}/{metric}" if split != "test" else f"{name}/{metric}"
                      for split in spec.eval_splits]
    for i, metric in enumerate(spec.report.metrics):
        split, _, rest = metric.partition("/")
        name = rest if split in spec.eval_splits and split != "test" else metric
        evaluator_name, _, metric_name = name.partition("/")
        where = f"report.metrics[{i}]"
        if not metric_name or evaluator_name not in evaluators:
            raise ConfigError(f"expected [SPLIT/]EVALUATOR/METRIC with an evaluator of this benchmark "
                              f"({', '.join(sorted(evaluators))}) and a split of eval_splits other than "
                              f"test, got {metric!r}{did_you_mean(metric, valid)}", file=file, field=where,
                              **spec.locate(where))
        declared = evaluators[evaluator_name].metric_names()
        if declared is not None and not any(fnmatch.fnmatchcase(metric_name, p) for p in declared):
            raise ConfigError(f"evaluator {evaluator_name!r} does not produce {metric_name!r}"
                              f"{did_you_mean(metric, valid)}; it reports {', '.join(declared)}",
                              file=file, field=where, **spec.locate(where))


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
            plugins: Iterable[str] = (), forward_check: bool = True, data: bool = True
            ) -> tuple[BenchmarkSpec, Registry, str | None]:
    """Load, validate and resolve a benchmark (what ``harness validate`` does); ``data=False``: without
    reading the dataset (see :func:`validate_components`)."""
    spec, file = load_benchmark(config, overrides)
    registry = load_cli_plugins(plugins)
    for i, module in enumerate(spec.plugins):
        try:
            load_plugins([module])
        except PluginImportError as exc:
            raise ConfigError(f"cannot load plugin module {module!r}: {exc.error}", file=file,
                              field=f"plugins[{i}]") from None
    validate_components(spec, registry, file, forward_check=forward_check, data=data)
    return spec, registry, file

