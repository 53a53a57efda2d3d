"""Component parameters checked against the factory's type annotations before it is called.

A value of the wrong type (``temperature: hot``) is reported as ``temperature: expected a number, got
'hot'`` instead of whatever the factory's first comparison raises. pydantic validates each annotated
parameter (lax for containers: a YAML list fits ``tuple[int, ...]``, an int fits ``float``), and the
factory gets the validated values. Scalars keep their kind: a string or a boolean is never turned into
a number, nor a number into a boolean, since in a benchmark file that is a mistake, not a spelling.
"""

from __future__ import annotations

import inspect
import types
import typing
from functools import lru_cache
from typing import Any, Callable, Literal

from pydantic import ConfigDict, PydanticSchemaGenerationError, TypeAdapter, ValidationError

from harness.errors import ConfigError

#: words for pydantic's error types, for values inside containers (``ks[1]: expected an integer``)
_EXPECTED = {"float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
             "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
             "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
             "iterable_type": "a list", "dict_type": "a mapping", "mapping_type": "a mapping",
             "none_required": "null"}
_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string",
          list: "a list", tuple: "a list", set: "a list", dict: "a mapping", type(None): "null"}


def annotations(factory: Callable[..., Any]) -> dict[str, Any]:
    """The factory's parameter annotations, string annotations resolved; none when they cannot be
    resolved (a name imported only for type checkers), so nothing is checked then."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except Exception:
        return {}
    return {name: p.annotation for name, p in signature.parameters.items()
            if p.annotation is not p.empty}


@lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except (PydanticSchemaGenerationError, TypeError, ValueError):
        return None
    except Exception:  # an annotation pydantic cannot read at all: not checked
        return None


def _cached_adapter(annotation: Any) -> TypeAdapter | None:
    try:
        return _adapter(annotation)
    except TypeError:  # unhashable annotation
        try:
            return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
        except Exception:
            return None


def describe(annotation: Any) -> str:
    """``float`` → "a number", ``int | None`` → "an integer or null", ``Literal['a', 'b']`` →
    "'a' or 'b'", ``list[int]`` → "a list of integers"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return describe(args[0])
    if origin in (list, tuple, set, frozenset) or origin in (typing.Sequence, typing.Iterable):
        inner = [a for a in args if a is not Ellipsis]
        return "a list" + (f" of {_plural(describe(inner[0]))}" if len(set(inner)) == 1 else "")
    import collections.abc as abc
    if origin in (abc.Sequence, abc.Iterable, abc.Collection):
        return "a list" + (f" of {_plural(describe(args[0]))}" if args else "")
    if origin in (dict, abc.Mapping):
        return "a mapping"
    if annotation in _NAMES:
        return _NAMES[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _plural(words: str) -> str:
    for article in ("an ", "a "):
        if words.startswith(article):
            words = words[len(article):]
            return words + ("es" if words.endswith("s") else "s")
    return words


def _changes_kind(value: Any, converted: Any) -> bool:
    """A conversion that is a mistake in a config file: text or a boolean read as a number, a
    number read as a boolean."""
    if isinstance(value, (str, bool)) and isinstance(converted, (int, float)):
        return type(converted) is not type(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(converted, bool)


def _item_path(loc: tuple) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in loc)


def check_param_types(factory: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` validated against the factory's annotations: the values to call it with. Raises
    :class:`ConfigError` with ``field`` the parameter (``ks[1]`` inside a list) and a message such as
    ``expected a number, got 'hot'``."""
    hints = annotations(factory)
    checked = dict(params)
    for name, value in params.items():
        annotation = hints.get(name)
        if annotation is None or annotation is Any:
            continue
        adapter = _cached_adapter(annotation)
        if adapter is None:
            continue
        try:
            converted = adapter.validate_python(value)
        except ValidationError as exc:
            raise _type_error(name, annotation, value, exc) from None
        if _changes_kind(value, converted):
            raise ConfigError(f"expected {describe(annotation)}, got {value!r}", field=name)
        checked[name] = converted
    return checked


def _type_error(name: str, annotation: Any, value: Any, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if err["loc"] and not union:  # inside a container: name the item (``ks[1]``)
        expected = _EXPECTED.get(err["type"]) or (err.get("ctx") or {}).get("expected") or \
            err["msg"].removeprefix("Input should be ")
        return ConfigError(f"expected {expected}, got {err.get('input')!r}",
                           field=name + _item_path(tuple(err["loc"])))
    if not union and err["type"] not in _EXPECTED and err["type"] != "literal_error":
        detail = err["msg"].removeprefix("Value error, ")  # a constraint, e.g. "greater than 0"
        return ConfigError(f"{detail[:1].lower()}{detail[1:]}, got {value!r}", field=name)
    return ConfigError(f"expected {describe(annotation)}, got {value!r}", field=name)
