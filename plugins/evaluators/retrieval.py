"""The ``retrieval`` evaluator: image↔text retrieval over the evaluated split."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from harness import hookimpl
from harness.components import EvalContext, Evaluator
from harness.metrics import ranking_metrics, retrieval_metrics, retrieval_metrics_from_scores


class Retrieval(Evaluator):
    """Image↔text retrieval: R@k, median and mean rank both ways, and rsum (the method's pair scores:
    cosine similarity of pooled embeddings, or its own, e.g. match-map); where the dataset has exact
    relevance, also mAP@R, R-Precision and R@k over every relevant item, both ways.

    These single-positive metrics count only a text's own image (and an image's own texts) as correct.
    For datasets with exact relevance (``Dataset.relevance``, e.g. ``shapes``: every image a caption is
    true of) the evaluator also reports the multi-positive metrics of
    :func:`harness.metrics.ranking_metrics`, both ways (``t2i``: texts query images; ``i2t``: images
    query texts), in percent: ``{d}_mAP@R``, ``{d}_R-Precision`` and ``{d}_R@{k}_any`` (some relevant
    item in the top k). Queries with no relevant item are left out of those averages and counted in
    ``{d}_n_empty``, reported only when there are any. Datasets without exact relevance get the
    single-positive metrics alone; ``metric_names`` declares the multi-positive names either way.
    ``rsum`` stays single-positive."""

    lower_is_better = frozenset({"i2t_medr", "t2i_medr", "i2t_meanr", "t2i_meanr",
                                 "i2t_n_empty", "t2i_n_empty"})
    units = {"*R@*": "%", "*_mAP@R": "%", "*_R-Precision": "%"}  # rsum is a sum of percentages (up to 600)

    def __init__(self, ks: Sequence[int] = (1, 5, 10)):
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {list(ks)}")
        self.ks = ks

    def metric_names(self) -> list[str]:
        """Every name ``evaluate`` may return: the single-positive metrics, always produced, then the
        multi-positive ones and the empty-query counts, produced only for datasets with exact relevance
        (the counts only when some query has no relevant item)."""
        single = [*(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in self.ks),
                  *sorted(f"{d}_{m}" for d in ("i2t", "t2i") for m in ("medr", "meanr")), "rsum"]
        multi = [name for d in ("i2t", "t2i")
                 for name in (f"{d}_mAP@R", f"{d}_R-Precision", *(f"{d}_R@{k}_any" for k in self.ks))]
        return [*single, *multi, "i2t_n_empty", "t2i_n_empty"]

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        image_emb, text_emb = context.embed()  # each side embedded once, batched, without gradients
        scores = None
        if context.cosine_scores(image_emb, text_emb):  # one chunked pass, never the whole matrix in memory
            out = retrieval_metrics(image_emb, text_emb, context.split.text_to_image, ks=self.ks)
        else:
            scores = context.scores(image_emb, text_emb)
            out = retrieval_metrics_from_scores(scores, context.split.text_to_image, ks=self.ks)
        relevance = context.relevance()
        if relevance is None:
            return out
        if scores is None:  # the whole [N_images, N_texts] matrix, computed once for both directions
            scores = context.scores(image_emb, text_emb)
        # t2i: texts query images (relevance rows); i2t: images query texts (its transpose)
        for d, (s, rel) in {"t2i": (scores.T, relevance), "i2t": (scores, relevance.T)}.items():
            m = ranking_metrics(s, rel, ks=self.ks)
            out[f"{d}_mAP@R"], out[f"{d}_R-Precision"] = m["mAP@R"], m["R-Precision"]
            out.update({f"{d}_R@{k}_any": m[f"R@{k}"] for k in self.ks})
            if m["n_empty"]:
                out[f"{d}_n_empty"] = m["n_empty"]
        return out

    def chance(self, context: EvalContext) -> dict[str, float]:
        """Expected values for scores that rank items uniformly at random (ties aside)."""
        out = chance_levels(context.split.text_to_image, len(context.split), self.ks)
        relevance = context.relevance()
        if relevance is not None:
            rel = sp.csr_array(relevance if sp.issparse(relevance) else np.asarray(relevance), dtype=bool)
            rel.sum_duplicates()
            rel.eliminate_zeros()  # [n_texts, n_images], one stored True per relevant pair
            n_texts, n_images = rel.shape
            out.update(multi_positive_chance(np.diff(rel.indptr), n_images, self.ks, "t2i"))
            out.update(multi_positive_chance(np.bincount(rel.indices, minlength=n_images), n_texts, self.ks,
                                             "i2t"))
        return out


def multi_positive_chance(n_relevant: np.ndarray, n_items: int, ks: Sequence[int],
                          direction: str) -> dict[str, float]:
    """Expected multi-positive metrics of a uniformly random ranking of ``n_items`` items, averaged over
    the queries with ``R >= 1`` relevant items (exact, ties aside): ``R@k_any`` = 1 − C(N−R, k)/C(N, k);
    ``R-Precision`` = R/N; ``mAP@R`` = (1/R) Σ_{i≤R} E[P(i)·rel(i)] with
    E[P(i)·rel(i)] = (R/N)·(1 + (i−1)(R−1)/(N−1))/i, i.e. (H_R + (R−1)(R−H_R)/(N−1))/N."""
    r_values, weights = np.unique(np.asarray(n_relevant)[np.asarray(n_relevant) > 0], return_counts=True)
    if not len(r_values):
        return {}
    n = float(n_items)
    r = r_values.astype(np.float64)
    harmonic = np.array([np.sum(1.0 / np.arange(1, int(v) + 1)) for v in r_values])
    out: dict[str, float] = {}
    for k in ks:
        i = np.arange(min(k, n_items))
        miss = np.array([np.prod(np.clip(n - v - i, 0, None) / (n - i)) for v in r])
        out[f"{direction}_R@{k}_any"] = 100.0 * float(np.average(1.0 - miss, weights=weights))
    out[f"{direction}_R-Precision"] = 100.0 * float(np.average(r / n, weights=weights))
    ap = (harmonic + (r - 1) * (r - harmonic) / max(n - 1, 1.0)) / n
    out[f"{direction}_mAP@R"] = 100.0 * float(np.average(ap, weights=weights))
    return out


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
