"""The ``retrieval`` evaluator: image↔text retrieval over the evaluated split."""

from __future__ import annotations

from typing import Sequence

from harness import hookimpl
from harness.components import EvalContext, Evaluator
from harness.metrics import retrieval_metrics


class Retrieval(Evaluator):
    """Image↔text retrieval: R@k, median and mean rank both ways, and rsum (cosine similarity)."""

    lower_is_better = frozenset({"i2t_medr", "t2i_medr", "i2t_meanr", "t2i_meanr"})

    def __init__(self, ks: Sequence[int] = (1, 5, 10)):
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {list(ks)}")
        self.ks = ks

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        image_emb, text_emb = context.embed()  # each side embedded once, batched, without gradients
        return retrieval_metrics(image_emb, text_emb, context.split.text_to_image, ks=self.ks)


@hookimpl
def register_evaluators(register):
    register("retrieval", Retrieval)
