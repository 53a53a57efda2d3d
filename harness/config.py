"""Benchmark files: safe YAML loading, ``--set`` overrides, defaults, sweeps, validated into the typed
schema of :mod:`harness.schema`.

Every error names the file, the field path and what was expected (:class:`harness.errors.ConfigError`),
and where the field was written: its line in the file, or the ``--set`` that set it.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from types import UnionType
from typing import Any, Iterable, Mapping, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from harness.errors import ConfigError, describe_field, did_you_mean
from harness.origins import Origins
# the schema's models are part of this module's public names (re-exported)
from harness.schema import (SAFE_NAME, BenchmarkSpec, ComponentSpec, DefaultsSpec,  # noqa: F401
                            EncodersSpec, MethodSpec, PartialComponentSpec, PartialEncodersSpec,
                            ReportSpec, StageSpec, TrainSpec)


# --- loading ------------------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a benchmark file with ``yaml.safe_load`` (no tags are ever executed)."""
    return _read_yaml(path)[0]


def _read_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    """The benchmark file's data and its text (which :class:`Origins` reads line numbers from)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read benchmark file: {exc.strerror or exc}", file=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # binary garbage, or a file saved in another encoding
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}, line {line}); save it as UTF-8 YAML", file=str(path)) from None
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
