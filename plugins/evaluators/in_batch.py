"""The ``in-batch`` evaluator: matching pairs against the other pairs of fixed evaluation batches."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import numpy as np
import torch

from harness import hookimpl
from harness.components import EvalContext, Evaluator, TokenFeatures
from harness.model import cosine_scores

METRICS = ["accuracy", "loss", "avg_similarity", "similarity_gap"]


def first_text_pairs(text_to_image: Any, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images, texts)``: every image that has a text, in index order, with its first text (the
    lowest text index ``j`` with ``text_to_image[j] == i``); images without a text are left out."""
    t2i = np.asarray(text_to_image, dtype=np.int64)
    images, texts = np.unique(t2i, return_index=True)  # sorted images, index of each one's first text
    keep = (images >= 0) & (images < n_images)
    return images[keep], texts[keep].astype(np.int64)


def batch_sizes(n_pairs: int, batch_size: int) -> list[int]:
    """Sizes of the consecutive batches of ``n_pairs`` pairs (the last one may be smaller)."""
    return [min(batch_size, n_pairs - start) for start in range(0, n_pairs, batch_size)]


def in_batch_metrics(batch_scores: Iterable[torch.Tensor], temperature: float = 0.07) -> dict[str, float]:
    """In-batch metrics from the ``[B, B]`` pair-score matrices of the batches (``S[a, b]`` = score of
    image ``a`` with text ``b``; the diagonal holds the matching pairs); see :class:`InBatch` for the
    formulas. Metrics without any item to average over are left out."""
    n_items = 0          # every matching pair (avg_similarity)
    sum_diag = 0.0
    n_rows = 0           # items of batches with B >= 2, per direction
    sum_diag_multi = 0.0
    correct = 0          # both directions
    ce_sum = 0.0         # both directions
    n_off, sum_off = 0, 0.0
    for scores in batch_scores:
        s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
        if s.dim() != 2 or s.shape[0] != s.shape[1]:
            raise ValueError(f"in-batch scores must be square [B, B], got shape {tuple(s.shape)}")
        b = s.shape[0]
        if b == 0:
            continue
        diag = s.diagonal()
        n_items += b
        sum_diag += float(diag.sum())
        if b < 2:  # no negatives: nothing to rank against, nothing to contrast with
            continue
        n_rows += b
        sum_diag_multi += float(diag.sum())
        off_mask = ~torch.eye(b, dtype=torch.bool)
        sum_off += float(s[off_mask].sum())
        n_off += b * (b - 1)
        for m in (s, s.T):  # image→text rows, then text→image rows
            best_other = m.masked_fill(~off_mask, -math.inf).amax(dim=1)
            correct += int((diag > best_other).sum())  # strictly highest: a tie is a miss
            ce_sum += float((torch.logsumexp(m / temperature, dim=1) - diag / temperature).sum())
    out: dict[str, float] = {}
    if n_rows:
        out["accuracy"] = correct / (2 * n_rows)
        out["loss"] = ce_sum / (2 * n_rows)
    if n_items:
        out["avg_similarity"] = sum_diag / n_items
    if n_rows:
        out["similarity_gap"] = sum_diag_multi / n_rows - sum_off / n_off
    return {k: out[k] for k in METRICS if k in out}


def in_batch_chance(sizes: Iterable[int]) -> dict[str, float]:
    """Random-scorer levels for batches of these sizes (1-item batches left out, as in the metrics):
    accuracy = mean over rows of 1/B; loss = mean over rows of log B (equal scores); gap = 0."""
    sizes = [int(b) for b in sizes if b >= 2]
    n_rows = sum(sizes)
    if not n_rows:
        return {}
    return {"accuracy": len(sizes) / n_rows,  # each batch's B rows contribute B · (1/B) = 1
            "loss": sum(b * math.log(b) for b in sizes) / n_rows,
            "similarity_gap": 0.0}


def _rows(emb: Any, index: np.ndarray) -> Any:
    device = emb.features.device if isinstance(emb, TokenFeatures) else emb.device
    return emb[torch.as_tensor(index, dtype=torch.long, device=device)]


class InBatch(Evaluator):
    """In-batch matching accuracy, symmetric InfoNCE loss and matched/unmatched similarity on fixed
    evaluation batches (as in Podguzova & Nguyen 2020, Tables 2–5).

    Pairs: the split's images in index order, each with its *first* text (lowest text index ``j`` with
    ``text_to_image[j] == i``; images without a text are skipped), cut into consecutive batches of
    ``batch_size`` (the last one may be smaller). In a batch of ``B`` pairs, ``S[a, b]`` is the method's
    pair score of image ``a`` with text ``b`` (cosine of pooled embeddings, or the method's own scores),
    so the diagonal holds the matching pairs.

    - ``accuracy`` = (1 / 2R) Σ_rows [S[a, a] > max_{b≠a} S[a, b]] over the image→text rows of ``S`` and
      the text→image rows of ``Sᵀ`` (strictly highest: a tie is a miss), a fraction in [0, 1].
    - ``loss`` = (1 / 2R) Σ_rows (logsumexp_b(S[a, b] / τ) − S[a, a] / τ) over the rows of ``S`` and of
      ``Sᵀ`` = ½ (CE_i2t + CE_t2i), the symmetric InfoNCE at ``temperature`` τ (lower is better).
    - ``avg_similarity`` = mean of ``S[a, a]`` over every pair of every batch.
    - ``similarity_gap`` = mean of ``S[a, a]`` − mean of ``S[a, b]`` (a ≠ b), both pooled over the
      batches with B ≥ 2.

    R is the number of pairs in batches with B ≥ 2: a 1-item batch has no negatives, so it is left out
    of ``accuracy``, ``loss`` and ``similarity_gap`` (and their chance levels) but counts in
    ``avg_similarity``. Every average is over rows / pairs pooled across batches, not a mean of batch
    means. A metric with nothing to average (e.g. ``batch_size=1``) is left out.
    """

    lower_is_better = frozenset({"loss"})

    def __init__(self, batch_size: int = 64, temperature: float = 0.07):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)

    def metric_names(self) -> list[str]:
        return list(METRICS)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        images, texts = first_text_pairs(context.split.text_to_image, len(context.split))
        image_emb, text_emb = context.embed()  # each side embedded once, batched, without gradients
        cosine = context.cosine_scores(image_emb, text_emb)

        def batches():
            for start in range(0, len(images), self.batch_size):
                img = _rows(image_emb, images[start:start + self.batch_size])
                txt = _rows(text_emb, texts[start:start + self.batch_size])
                yield cosine_scores(img, txt) if cosine else context.scores(img, txt)

        return in_batch_metrics(batches(), self.temperature)

    def chance(self, context: EvalContext) -> dict[str, float]:
        """Levels of a scorer that ranks a batch's items uniformly at random (accuracy, gap) or gives
        them equal scores (loss)."""
        images, _ = first_text_pairs(context.split.text_to_image, len(context.split))
        return in_batch_chance(batch_sizes(len(images), self.batch_size))


@hookimpl
def register_evaluators(register):
    register("in-batch", InBatch)
