"""Benchmark files: safe YAML loading, ``--set`` overrides, defaults, sweeps and a typed schema.

Every error names the file, the field path and what was expected (:class:`harness.errors.ConfigError`),
and where the field was written: its line in the file, or the ``--set`` that set it.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from types import UnionType
from typing import Any, Iterable, Literal, Mapping, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                      PositiveInt, PrivateAttr,
                      ValidationError, field_validator, model_validator)

from harness.errors import ConfigError, describe_field, did_you_mean
from harness.origins import Origins

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+@=,\-]*$"  # becomes a directory name


class ComponentSpec(BaseModel):
    """``{name: ..., <params>}``: a registered component and its parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 128
    optimizer: Literal["adamw", "adam", "sgd", "lbfgs"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    momentum: NonNegativeFloat = 0.9  # sgd only
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: NonNegativeFloat = 0.0
    step_size: PositiveInt = 10  # epochs between lr drops ("step" schedule)
    gamma: PositiveFloat = 0.1  # lr factor per drop ("step" schedule)
    grad_clip: PositiveFloat | None = None  # max global gradient norm
    lbfgs_max_iter: PositiveInt = 20  # iterations per epoch with the full-batch L-BFGS optimizer
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    eval_batch_size: PositiveInt = 512
    # with eval_splits [val, …]: score the val split every N epochs into the history (val curves)
    val_every: NonNegativeInt = 0
    checkpoint: bool = False  # save weights + loss/sampler state beside the result (seed-<n>.pt)
    # CPU threads torch uses for this run (None: torch's default, one per core); 1 when several
    # benchmarks share a machine, whose default thread pools otherwise oversubscribe the cores
    threads: PositiveInt | None = None


class EncodersSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ComponentSpec | None = None
    text: ComponentSpec | None = None


class StageSpec(BaseModel):
    """One stage of a method trained in stages (pretrain, then fine-tune): its own loss (and sampler),
    train settings over the method's (``train: {epochs: 3, lr: 1.0e-4}``) and the parts it keeps
    fixed (``freeze``: parameter-name prefixes such as ``image_encoder.features`` or ``text_encoder``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME)
    loss: ComponentSpec
    sampler: ComponentSpec | None = None
    train: dict[str, Any] = {}
    freeze: list[str] = []


class MethodSpec(BaseModel):
    """One method of a benchmark: gradient-trained (``loss``, or ``stages`` of losses) or closed-form
    (``estimator``). ``heads`` are trainable task heads (relation modules) trained with the encoders."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME)
    encoders: EncodersSpec = EncodersSpec()
    embed_dim: PositiveInt = 64
    loss: ComponentSpec | None = None
    sampler: ComponentSpec | None = None
    estimator: ComponentSpec | None = None
    heads: dict[str, ComponentSpec] = {}
    stages: list[StageSpec] | None = None
    train: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _one_objective(self) -> "MethodSpec":
        objectives = sum(x is not None for x in (self.loss, self.estimator, self.stages))
        if objectives != 1:
            raise ValueError("a method needs exactly one of 'loss' (gradient-trained), 'stages' (trained "
                             "in stages, each with its loss) or 'estimator' (closed-form)")
        if self.sampler is not None and self.loss is None:
            raise ValueError("'sampler' needs a 'loss' (in stages, give each stage its sampler)")
        if self.encoders.image is None or self.encoders.text is None:
            raise ValueError("'encoders' needs both 'image' and 'text' (set them in 'defaults' or "
                             "the method)")
        if self.estimator is not None and self.heads:
            raise ValueError("'heads' are trained: a closed-form method (estimator) cannot have them")
        if self.stages is not None:
            if not self.stages:
                raise ValueError("'stages' needs at least one stage")
            names = [stage.name for stage in self.stages]
            if len(set(names)) != len(names):
                raise ValueError(f"stage names must be unique, got {names}")
            for stage in self.stages:
                try:
                    self.stage_train(stage)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    raise ValueError(f"stage {stage.name!r}: train.{'.'.join(map(str, err['loc']))}: "
                                     f"{err['msg']}") from None
        return self

    @property
    def kind(self) -> str:
        return "closed-form" if self.estimator is not None else "gradient"

    def stage_train(self, stage: StageSpec) -> TrainSpec:
        """A stage's train settings: the method's, overridden by the stage's own."""
        return TrainSpec.model_validate({**self.train.model_dump(), **stage.train})

    def stage_list(self) -> list[StageSpec]:
        """The stages to train, in order: one stage named ``train`` for a method with a single loss."""
        if self.stages is not None:
            return list(self.stages)
        if self.loss is None:
            return []
        return [StageSpec(name="train", loss=self.loss, sampler=self.sampler)]


class PartialComponentSpec(ComponentSpec):
    """A component in ``defaults``: its ``name`` may be left to the methods."""

    name: str | None = None


class PartialEncodersSpec(EncodersSpec):
    image: PartialComponentSpec | None = None
    text: PartialComponentSpec | None = None


class DefaultsSpec(BaseModel):
    """``defaults``: any part of a method but its name, merged into every method. Validated on its own
    first, so that a bad default is reported once, at ``defaults.…``, not once per method."""

    model_config = ConfigDict(extra="forbid")
    encoders: PartialEncodersSpec | None = None
    embed_dim: PositiveInt | None = None
    loss: PartialComponentSpec | None = None
    sampler: PartialComponentSpec | None = None
    estimator: PartialComponentSpec | None = None
    heads: dict[str, PartialComponentSpec] | None = None
    stages: list[StageSpec] | None = None
    train: TrainSpec | None = None  # every TrainSpec field has a default: a partial one validates


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = []


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME)
    dataset: ComponentSpec
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    evaluators: list[ComponentSpec] = Field(default_factory=lambda: [ComponentSpec(name="retrieval")])
    report: ReportSpec = ReportSpec()
    plugins: list[str] = []  # extra plugin modules, like --plugin
    # splits the evaluators score: test metrics keep their names ("retrieval/rsum"), the others get
    # the split as a prefix ("val/retrieval/rsum") so settings can be chosen on val, reported on test
    eval_splits: list[Literal["val", "test"]] = Field(default_factory=lambda: ["test"], min_length=1)
    # where the jobs run (an execution setting: never part of a result's configuration)
    launcher: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="inline"))
    # variant name -> {"base": name as written, "values": {swept key path: value}}; filled by resolve
    sweeps: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)
    # `defaults` as written (already merged into the methods); filled by resolve
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec, exclude=True)
    _origins: Any = PrivateAttr(default=None)  # an Origins; set by resolve

    def locate(self, field: str) -> dict[str, Any]:
        """Where ``field`` was written, as keyword arguments for :class:`ConfigError`:
        ``{"line": 7}``, ``{"override": "defaults.train.epochs=0"}`` or ``{}`` when unknown."""
        return self._origins.locate(field, self.sweeps) if self._origins is not None else {}

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        return seeds

    @field_validator("methods", "evaluators")
    @classmethod
    def _unique_names(cls, items: list[Any]) -> list[Any]:
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique; repeated: {', '.join(dupes)}")
        return items

    @field_validator("eval_splits")
    @classmethod
    def _unique_splits(cls, splits: list[str]) -> list[str]:
        if len(set(splits)) != len(splits):
            raise ValueError(f"splits must be unique, got {splits}")
        return splits


# --- loading ------------------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a benchmark file with ``yaml.safe_load`` (no tags are ever executed)."""
    return _read_yaml(path)[0]


def _read_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    """The benchmark file's data and its text (which :class:`Origins` reads line numbers from)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read benchmark file: {exc.strerror or exc}", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", file=str(path), field=where) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}",
                          file=str(path))
    return data, text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], file: str | None = None) -> dict:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars/flow collections.

    A path step into a list may be an index (``methods.0``) or an item's name (``methods.infonce``).
    """
    return _apply_overrides(data, overrides, file)[0]


def _apply_overrides(data: dict[str, Any], overrides: Iterable[str], file: str | None = None
                     ) -> tuple[dict, list[tuple[str, str]]]:
    """:func:`apply_overrides`, and what each override set: ``(field path, "KEY.PATH=VALUE")`` with
    the field path written as errors write it (``methods[infonce].loss.temperature``)."""
    data = copy.deepcopy(data)
    written: list[tuple[str, str]] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY.PATH=VALUE, got {item!r}", file=file, field="--set")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse value {raw!r}", file=file, field=key) from None
        steps = [s for s in key.strip().split(".") if s]
        if not steps:
            raise ConfigError(f"--set expects KEY.PATH=VALUE, got {item!r}", file=file, field="--set")
        node: Any = data
        field = ""
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            where = ".".join(steps[:i + 1])
            if isinstance(node, list):
                index = _list_index(node, step)
                if index is None:
                    raise ConfigError(f"no list item {step!r} (use an index or an item's name)",
                                      file=file, field=where)
                name = node[index].get("name") if isinstance(node[index], dict) else None
                field += f"[{name if name else index % len(node)}]"
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                field += f".{step}" if field else step
                if last:
                    node[step] = value
                else:
                    node = node.setdefault(step, {})
                    if node is None:
                        node = {}
            else:
                raise ConfigError(f"cannot set a key inside a {type(node).__name__}", file=file,
                                  field=where)
        written.append((field, item.strip()))
    return data, written


def _list_index(items: list, step: str) -> int | None:
    if re.fullmatch(r"-?\d+", step):
        index = int(step)
        return index if -len(items) <= index < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == step:
            return i
    return None


def merge_defaults(defaults: Mapping[str, Any], method: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``defaults`` under ``method``. A component the method names differently replaces the
    default one whole, since another component's parameters would not apply."""
    merged = copy.deepcopy(dict(defaults))
    for key, value in method.items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict):
            if "name" in base and "name" in value and base["name"] != value["name"]:
                merged[key] = copy.deepcopy(value)
            else:
                merged[key] = merge_defaults(base, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


SWEEP_KEY = "__sweep__"  # carries a variant's grid point from expand_sweep to BenchmarkSpec.sweeps


def expand_sweep(method: dict[str, Any], file: str | None = None, where: str = "") -> list[dict]:
    """``sweep: {loss.temperature: [0.05, 0.1]}`` → one variant per grid point, named
    ``<name>@temperature=0.05`` (the last path step labels a value unless two keys share it)."""
    sweep = method.pop("sweep", None)
    if sweep is None:
        return [method]
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError("expected a mapping of KEY.PATH: [values]", file=file, field=f"{where}.sweep")
    keys, grids = [], []
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError("expected a non-empty list of values", file=file,
                              field=f"{where}.sweep.{key}")
        keys.append(str(key))
        grids.append(values)
    leaves = [k.split(".")[-1] for k in keys]
    labels = [leaf if leaves.count(leaf) == 1 else key for leaf, key in zip(leaves, keys)]
    variants = []
    for combo in itertools.product(*grids):
        variant = copy.deepcopy(method)
        for key, value in zip(keys, combo):
            node = variant
            steps = key.split(".")
            for step in steps[:-1]:
                child = node.setdefault(step, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"{step!r} is not a mapping", file=file, field=f"{where}.sweep.{key}")
                node = child
            node[steps[-1]] = value
        suffix = ",".join(f"{label}={_short(v)}" for label, v in zip(labels, combo))
        variant["name"] = f"{method.get('name', 'method')}@{suffix}"
        variant[SWEEP_KEY] = {"base": method.get("name", "method"), "values": dict(zip(keys, combo))}
        variants.append(variant)
    return variants


def _short(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def resolve(data: Mapping[str, Any], file: str | None = None, *, origins: Origins | None = None
            ) -> BenchmarkSpec:
    """Validate ``defaults``, merge them into each method, expand sweeps and validate into a
    :class:`BenchmarkSpec`. ``origins`` (from :func:`load_benchmark`) adds to each error where its field
    was written: the line of the file, or the ``--set`` that set it."""
    origins = origins or Origins()
    try:
        spec = _resolve(dict(data), file, origins)
    except ConfigError as exc:
        if exc.field and exc.line is None and exc.override is None:
            where = origins.locate(exc.field)
            if where:
                raise ConfigError(exc.message, file=exc.file, field=exc.field, **where) from None
        raise
    spec._origins = origins
    return spec


def _resolve(data: dict[str, Any], file: str | None, origins: Origins) -> BenchmarkSpec:
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigError("expected a mapping", file=file, field="defaults")
    try:  # at its own path, once, before it is copied into every method
        defaults_spec = DefaultsSpec.model_validate(defaults)
    except ValidationError as exc:
        raise _config_error(exc, defaults, file, model=DefaultsSpec, prefix="defaults",
                            origins=origins) from None
    methods = data.get("methods")
    if isinstance(methods, list):
        expanded = []
        for i, method in enumerate(methods):
            if not isinstance(method, dict):
                raise ConfigError(f"expected a mapping with a 'name', got {method!r}", file=file,
                                  field=f"methods[{i}]")
            label = f"methods[{method.get('name', i)}]"
            expanded.extend(expand_sweep(merge_defaults(defaults, method), file, label))
        data["methods"] = expanded
    sweeps = {m["name"]: m.pop(SWEEP_KEY) for m in data.get("methods") or []
              if isinstance(m, dict) and SWEEP_KEY in m}
    try:
        spec = BenchmarkSpec.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, data, file, origins=origins, sweeps=sweeps) from None
    spec.sweeps = sweeps
    spec.defaults = defaults_spec
    return spec


def _config_error(exc: ValidationError, data: Mapping[str, Any], file: str | None, *,
                  model: type[BaseModel] = BenchmarkSpec, prefix: str = "",
                  origins: Origins | None = None, sweeps: Mapping[str, Any] | None = None
                  ) -> ConfigError:
    """One :class:`ConfigError` for all of a validation's problems, each with its field path under
    ``prefix`` and, where ``origins`` knows it, where that field was written."""
    problems = []
    for err in exc.errors():
        field = _field_path(err["loc"], data)
        field = f"{prefix}.{field}" if prefix and field else prefix or field
        detail = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            detail = "unknown field" + did_you_mean(str(err["loc"][-1]),
                                                    _field_names(model, err["loc"][:-1]))
        elif err["type"] == "missing":
            detail = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            detail += f" (got {err['input']!r})"
        problems.append((field, detail, origins.locate(field, sweeps) if origins else {}))
    if len(problems) == 1:
        field, detail, where = problems[0]
        return ConfigError(detail, file=file, field=field, **where)
    listing = "; ".join(f"{describe_field(f, **w)}: {d}" for f, d, w in problems)
    field, _, where = problems[0]
    return ConfigError(f"{len(problems)} problems: {listing}", file=file, field=field, **where)


def _field_path(loc: tuple, data: Mapping[str, Any]) -> str:
    """``('methods', 1, 'train', 'lr')`` → ``methods[vse++].train.lr`` (names are easier to find)."""
    parts: list[str] = []
    node: Any = data
    for step in loc:
        if isinstance(step, int):
            name = node[step].get("name") if isinstance(node, list) and step < len(node) and \
                isinstance(node[step], dict) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{name if name else step}]"]
        else:
            parts.append(str(step))
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names a user may write in the model found at ``loc`` inside ``model`` (for "did you
    mean"), or ``[]`` when ``loc`` does not lead to a model."""
    annotation: Any = model
    for step in loc:
        annotation = _unwrap(annotation)
        if isinstance(step, int) and get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        elif isinstance(step, str) and _is_model(annotation) and step in annotation.model_fields:
            annotation = annotation.model_fields[step].annotation
        else:
            return []
    annotation = _unwrap(annotation)
    if not _is_model(annotation):
        return []
    names = [name for name, info in annotation.model_fields.items() if not info.exclude]
    return names + ["defaults"] if annotation is BenchmarkSpec else names


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def load_benchmark(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()
                   ) -> tuple[BenchmarkSpec, str | None]:
    """A benchmark from a path or a dict, with overrides applied. Returns ``(spec, file)``."""
    if isinstance(source, Mapping):
        file, text, data = None, None, copy.deepcopy(dict(source))
    else:
        file = str(source)
        data, text = _read_yaml(source)
    data, written = _apply_overrides(data, overrides, file)
    return resolve(data, file, origins=Origins(text, written)), file
