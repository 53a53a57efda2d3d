"""The fusion benchmark's table: each method's parameter count, seconds per epoch and its scores, by kind
of negative, from the result files of ``benchmarks/fusion.yaml``.

    python benchmarks/fusion_table.py results/fusion

Parameters are counted by building each method's parts from the configuration its result file records
(trainable values only: the ``matcher`` head = fusion + MLP, and everything the method trains, encoders,
heads and the loss's own decoders); seconds per epoch are the training history's, the evaluation
seconds the rest of the run. Scores are mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections import defaultdict

import numpy as np
import torch

from harness.config import ComponentSpec, MethodSpec
from harness.jobs import build_encoder
from harness.registry import default_registry
from harness.results import load_results

sys.path.insert(0, str(Path(__file__).parent))
from _measure import mean_std_cell  # noqa: E402  (benchmarks/_measure.py)

SCORES = [("matching/auc", "AUC all"), ("matching/auc_random", "AUC random"), ("matching/auc_hard", "AUC hard"),
          ("minimal-pairs/overall", "minimal pairs"), ("minimal-pairs/swap_objects", "swap objects"),
          ("retrieval/rsum", "rsum"), ("retrieval/t2i_mAP@R", "t2i mAP@R")]


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_counts(config: dict, dataset: dict) -> tuple[int | None, int]:
    """(the matcher head's trainable values or None, every trainable value of the method)."""
    registry = default_registry()
    spec = MethodSpec.model_validate(config)
    info = registry.create("dataset", dataset["name"], **dataset["params"]).info
    context = {"embed_dim": spec.embed_dim, "dataset_info": info}
    torch.manual_seed(0)
    image = build_encoder(registry, spec.encoders.image, {**context, "modality": "image"})
    text = build_encoder(registry, spec.encoders.text, {**context, "modality": "text"})
    context.update(x_dim=image.output_dim, y_dim=text.output_dim)
    heads = {key: registry.get("head", comp.name).build(comp.params, context) for key, comp in spec.heads.items()}
    total = trainable(image) + trainable(text) + sum(trainable(h) for h in heads.values())
    for stage in spec.stage_list():
        loss = registry.get("loss", stage.loss.name).build(ComponentSpec.model_validate(
            stage.loss.model_dump()).params, context)
        total += trainable(loss)
    head = next((h for h in heads.values() if hasattr(h, "fusion")), None)
    return (trainable(head) if head is not None else None), total


def _cell(values: list[float], digits: int = 1) -> str:
    return mean_std_cell(values, digits)


def table(directory: str) -> str:
    runs: dict[str, list] = defaultdict(list)
    for result in load_results(directory):
        if result.status == "ok":
            runs[result.method].append(result)
    order = sorted(runs, key=lambda m: runs[m][0].method_index)
    header = ["method", "fusion", "head params", "trained params", "s / epoch", "eval s"] + [n for _, n in SCORES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in order:
        results = runs[method]
        first = results[0]
        head_params, total = parameter_counts(first.config, {"name": first.dataset.name,
                                                             "params": first.dataset.params})
        fusion = next((h.get("fusion") for h in first.config.get("heads", {}).values() if "fusion" in h), None)
        fusion = fusion["name"] if isinstance(fusion, dict) else fusion or "–"
        epoch = [np.mean([e["seconds"] for e in r.history]) for r in results if r.history]
        evals = [r.provenance.duration_s - sum(e["seconds"] for e in r.history) for r in results]
        row = [f"`{method}`", fusion, f"{head_params:,}" if head_params is not None else "–", f"{total:,}",
               _cell(epoch), _cell(evals, 0)]
        row += [_cell([r.metrics[m] for r in results if r.metrics.get(m) is not None]) for m, _ in SCORES]
        lines.append("| " + " | ".join(row) + " |")
    seeds = sorted({r.seed for rs in runs.values() for r in rs})
    return "\n".join(lines) + f"\n\nmean ± std over seeds {seeds}; AUC and minimal pairs in % (chance 50)."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="the fusion benchmark folder (results/fusion)")
    args = parser.parse_args(argv)
    print(table(args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
