"""``harness show KIND NAME``: what a registered component takes, what it trains, and its formula."""

from __future__ import annotations

import inspect
from typing import Any

from harness.data import DatasetInfo
from harness.registry import CONTEXT_PARAMS, Component, _signature

#: context used to build a component with its defaults, only to look at its parameters
_PROBE_CONTEXT = {"embed_dim": 64, "modality": "image",
                  "dataset_info": DatasetInfo(name="example", image_shape=(3, 32, 32),
                                              vocab=["a", "red", "circle"], class_names=["circle"])}


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        return annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _trainable(component: Component, params: dict[str, Any]) -> tuple[list[str], str | None]:
    """Names (with shapes) of the ``nn.Parameter``s a component built with ``params`` trains, or an
    explanation when it cannot be built without more information."""
    try:
        built = component.build(params, _PROBE_CONTEXT)
    except Exception as exc:  # needs a real dataset or required parameters
        return [], f"depends on the parameters and dataset (not built here: {type(exc).__name__})"
    named = getattr(built, "named_parameters", None)
    if named is None:
        return [], None
    found = [(n, p) for n, p in named() if p.requires_grad]
    if len(found) > 6:
        total = sum(p.numel() for _, p in found)
        return [f"{len(found)} tensors, {total:,} values (with embed_dim=64 on a 3×32×32 example)"], None
    return [f"{n} {tuple(p.shape)}" for n, p in found], None


def describe(component: Component) -> str:
    """A plain-text description: parameters with types and defaults, the context parameters the runner
    fills in, trainable parameters of its own (and which switches add some), and the docstring's first
    paragraph (for a loss, its formula)."""
    lines = [f"{component.kind} {component.name!r} (plugin {component.plugin})", ""]
    params = component.parameters()
    lines.append("parameters:" if params else "parameters: none")
    for name, p in params.items():
        kind = _type_name(p.annotation)
        default = "required" if p.default is p.empty else f"default {p.default!r}"
        lines.append(f"  {name}{': ' + kind if kind else ''}  ({default})")
    accepted = _signature(component.factory).parameters
    context = sorted(n for n in CONTEXT_PARAMS if n in accepted)
    lines.append(f"context parameters (filled in by the runner): {', '.join(context) or 'none'}")
    if component.kind in ("loss", "encoder", "sampler"):
        trainable, why = _trainable(component, {})
        lines.append(f"trainable parameters of its own: {why or ', '.join(trainable) or 'none'}")
        if component.kind == "loss":
            for name, p in params.items():  # boolean switches that add parameters (learnable τ)
                if p.default is False:
                    extra, _ = _trainable(component, {name: True})
                    if extra and extra != trainable:
                        lines.append(f"  with {name}: true: {', '.join(extra)}")
            lines.append("  (a loss's parameters are trained with the encoders, without weight decay)")
    if component.kind == "evaluator":
        try:
            names = component.build({}).metric_names()
        except Exception:
            names = None
        lines.append(f"metrics (at the defaults): {', '.join(names) if names else 'not declared'}")
    doc = inspect.getdoc(component.factory) or ""
    paragraphs = doc.strip().split("\n\n")
    # the first paragraph, and the second too when the first is only a title line (the formula)
    shown = paragraphs[:2] if len(paragraphs) > 1 and "\n" not in paragraphs[0] else paragraphs[:1]
    lines += ["", "\n\n".join(shown)]
    return "\n".join(lines).rstrip()
