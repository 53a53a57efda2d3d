"""The ``retrieval`` evaluator: image↔text retrieval over the evaluated split."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness import hookimpl
from harness.components import EvalContext, Evaluator
from harness.metrics import retrieval_metrics, retrieval_metrics_from_scores


class Retrieval(Evaluator):
    """Image↔text retrieval: R@k, median and mean rank both ways, and rsum (the method's pair scores:
    cosine similarity of pooled embeddings, or its own, e.g. match-map)."""

    lower_is_better = frozenset({"i2t_medr", "t2i_medr", "i2t_meanr", "t2i_meanr"})
    units = {"*R@*": "%"}  # rsum is a sum of percentages (up to 600), not one

    def __init__(self, ks: Sequence[int] = (1, 5, 10)):
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {list(ks)}")
        self.ks = ks

    def metric_names(self) -> list[str]:
        return [*(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in self.ks), *sorted(self.lower_is_better),
                "rsum"]

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        image_emb, text_emb = context.embed()  # each side embedded once, batched, without gradients
        if context.cosine_scores(image_emb, text_emb):  # one chunked pass, never the whole matrix in memory
            return retrieval_metrics(image_emb, text_emb, context.split.text_to_image, ks=self.ks)
        return retrieval_metrics_from_scores(context.scores(image_emb, text_emb),
                                             context.split.text_to_image, ks=self.ks)

    def chance(self, context: EvalContext) -> dict[str, float]:
        """Expected values for scores that rank items uniformly at random (ties aside)."""
        return chance_levels(context.split.text_to_image, len(context.split), self.ks)


def chance_levels(text_to_image: np.ndarray, n_images: int, ks: Sequence[int]) -> dict[str, float]:
    """Expected retrieval metrics of a random ranking: t2i R@k = k/N (one correct image among N);
    i2t R@k = P(one of the image's c texts in the top k of T) = 1 − C(T−c, k)/C(T, k), averaged over
    images; median/mean rank of the first correct item ≈ (N+1)/2 resp. (T+1)/(c+1)."""
    counts = np.bincount(np.asarray(text_to_image), minlength=n_images)
    counts = counts[counts > 0]
    n_texts = int(counts.sum())
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_R@{k}"] = 100.0 * min(k, n_images) / n_images
        # C(T−c, k)/C(T, k) = Π_{i<k} (T−c−i)/(T−i), the chance that none of the c is in the top k
        i = np.arange(min(k, n_texts))
        miss = np.array([np.prod(np.clip(n_texts - c - i, 0, None) / (n_texts - i)) for c in counts])
        out[f"i2t_R@{k}"] = 100.0 * float(np.mean(1.0 - miss))
    out["rsum"] = sum(out.values())
    out["t2i_medr"] = out["t2i_meanr"] = (n_images + 1) / 2
    out["i2t_meanr"] = float(np.mean((n_texts + 1) / (counts + 1)))
    return out


@hookimpl
def register_evaluators(register):
    register("retrieval", Retrieval)
