"""Where each field of a benchmark was written (a YAML line, or a ``--set``), for error messages."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import yaml


class Origins:
    """Where each field of a benchmark was written, for error messages: the line of the YAML file
    (``text``), or the ``--set`` override that set it (``overrides``: ``(field path, "KEY.PATH=VALUE")``
    pairs as :func:`_apply_overrides` returns them; a later one wins)."""

    def __init__(self, text: str | None = None, overrides: Iterable[tuple[str, str]] = ()):
        self.root: yaml.Node | None = None
        if text is not None:
            try:
                self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                pass
        self.overrides = [(_split_field(field), item) for field, item in overrides]

    def locate(self, field: str, sweeps: Mapping[str, Mapping[str, Any]] | None = None
               ) -> dict[str, Any]:
        """``{"override": "KEY.PATH=VALUE"}`` when a ``--set`` wrote ``field`` or a mapping above it,
        else ``{"line": n}`` for the line where ``field`` (or the nearest part above it that is in the
        file) was written, else ``{}``. ``sweeps`` (``BenchmarkSpec.sweeps``) leads a sweep variant
        (``methods[m@lr=0.1]``) to the method it came from, and a swept value to its ``sweep`` key."""
        steps = _split_field(field)
        if sweeps and steps[:1] == ["methods"] and len(steps) > 1 and steps[1].startswith("[") \
                and steps[1][1:-1] in sweeps:
            variant = sweeps[steps[1][1:-1]]
            base, rest = f"[{variant['base']}]", steps[2:]
            swept = ".".join(rest)
            steps = ["methods", base, "sweep", swept] if swept in variant.get("values", {}) \
                else ["methods", base, *rest]
        for written, item in reversed(self.overrides):
            if steps[:len(written)] == written:
                return {"override": item}
        line = self._line(steps)
        return {"line": line} if line else {}

    def _line(self, steps: list[str]) -> int | None:
        node, line, i = self.root, None, 0
        while node is not None and i < len(steps):
            step, found = steps[i], None
            if isinstance(node, yaml.SequenceNode) and step.startswith("["):
                found = _sequence_item(node, step[1:-1])
                if found is not None:
                    line, node, i = found.start_mark.line + 1, found, i + 1
            elif isinstance(node, yaml.MappingNode) and not step.startswith("["):
                # a key may hold dots itself (sweep: {loss.temperature: …}): try longer runs of steps
                for j in range(i + 1, len(steps) + 1):
                    if steps[j - 1].startswith("["):
                        break
                    found = _mapping_item(node, ".".join(steps[i:j]))
                    if found is not None:
                        key, value = found
                        line, node, i = key.start_mark.line + 1, value, j
                        break
            if found is None:
                break
        return line


def _mapping_item(node: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) nodes of ``key`` (the last one, as the loader keeps), also through ``<<``."""
    for k, v in reversed(node.value):
        if isinstance(k, yaml.ScalarNode) and k.value == key and k.tag != "tag:yaml.org,2002:merge":
            return k, v
    for k, v in node.value:
        if k.tag == "tag:yaml.org,2002:merge":
            for merged in (v.value if isinstance(v, yaml.SequenceNode) else [v]):
                if isinstance(merged, yaml.MappingNode) and (pair := _mapping_item(merged, key)):
                    return pair
    return None


def _sequence_item(node: yaml.SequenceNode, step: str) -> yaml.Node | None:
    """The item named ``step`` (``name: step``), else the item at index ``step``."""
    for item in node.value:
        if isinstance(item, yaml.MappingNode):
            pair = _mapping_item(item, "name")
            if pair is not None and isinstance(pair[1], yaml.ScalarNode) and pair[1].value == step:
                return item
    if re.fullmatch(r"\d+", step) and int(step) < len(node.value):
        return node.value[int(step)]
    return None


def _split_field(field: str) -> list[str]:
    """``methods[m@lr=0.1].train.lr`` → ``["methods", "[m@lr=0.1]", "train", "lr"]`` (a list step keeps
    its brackets; a name in brackets may hold dots)."""
    return re.findall(r"\[[^\]]*\]|[^.\[\]]+", field)
