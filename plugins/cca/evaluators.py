"""CCA-based evaluators: test canonical correlations, and a linear probe on (CCA-projected) embeddings."""

from __future__ import annotations

import numpy as np
import torch

from harness.components import EvalContext, Evaluator
from harness_plugins.cca.estimators import LinearCCA

# --- evaluators ---------------------------------------------------------------------------------------


def _paired_embeddings(context: EvalContext, split) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings of a split, rows paired through ``text_to_image``, in float64."""
    img, txt = context.pooled(split)
    img = torch.as_tensor(img)
    txt = torch.as_tensor(txt)
    index = torch.as_tensor(split.text_to_image, device=img.device)
    return img[index].to(torch.float64), txt.to(device=img.device, dtype=torch.float64)


class CanonicalCorrelationEvaluator(Evaluator):
    """Test canonical correlations of the embeddings after linear CCA fitted on the train split.

    The evaluation of Wang et al. (2015): fit ``linear-cca`` with ``k`` components on the training
    split's (image, text) embedding pairs, project the evaluated split with it and report the total
    correlation ``total_corr`` (Σ of the k per-component Pearson correlations ``corr_1`` … ``corr_k``)
    plus the training total ``train_total_corr`` (its gap to the test value shows overfitting).
    """

    def __init__(self, k: int = 10, reg: float = 0.0):
        self.k = k
        self.reg = reg

    def metric_names(self) -> list[str]:
        return ["total_corr", "train_total_corr", *(f"corr_{i + 1}" for i in range(self.k))]

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        train_x, train_y = _paired_embeddings(context, context.train_split)
        test_x, test_y = _paired_embeddings(context, context.split)
        if self.k > min(train_x.shape[1], train_y.shape[1]):
            raise ValueError(f"canonical-correlation: k={self.k} exceeds the embedding dimensions "
                             f"({train_x.shape[1]}, {train_y.shape[1]})")
        cca = LinearCCA(k=self.k, reg=self.reg).fit(train_x, train_y)
        corr = cca.correlations(test_x, test_y).cpu().numpy()
        metrics = {"total_corr": float(corr.sum()),
                   "train_total_corr": float(cca.correlations(train_x, train_y).sum())}
        metrics.update({f"corr_{i + 1}": float(c) for i, c in enumerate(corr)})
        return metrics


class LinearProbeEvaluator(Evaluator):
    """Linear classifier on view-1 (image) embeddings: test ``error`` and ``accuracy``.

    Trains logistic regression (``classifier: logistic``) or a linear SVM (``svm``, as Wang et al. 2015)
    with inverse regularisation ``C`` on the training split's image embeddings and
    ``split.extras["labels"]``, on standardised features. With ``cca_k`` set, the features are first
    projected onto the top ``cca_k`` view-1 canonical directions of a ``linear-cca`` fitted on the
    training pairs (Wang et al.'s protocol); otherwise the raw embeddings are used.
    """

    lower_is_better = frozenset({"error"})

    def __init__(self, classifier: str = "logistic", C: float = 1.0, cca_k: int | None = None,
                 max_iter: int = 2000):
        if classifier not in ("logistic", "svm"):
            raise ValueError(f"classifier must be 'logistic' or 'svm', got {classifier!r}")
        self.classifier = classifier
        self.C = C
        self.cca_k = cca_k
        self.max_iter = max_iter

    def metric_names(self) -> list[str]:
        return ["accuracy", "error"]

    def chance(self, context: EvalContext) -> dict[str, float]:
        """A constant guess of the most frequent training class."""
        labels = context.train_split.extras.get("labels")
        if labels is None or len(labels) == 0:
            return {}
        top = float(np.bincount(np.asarray(labels)[np.asarray(labels) >= 0]).max() / len(labels))
        return {"accuracy": top, "error": 1.0 - top}

    def _model(self, seed: int):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        if self.classifier == "svm":
            clf = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=seed)
        else:
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
        return make_pipeline(StandardScaler(), clf)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        train, test = context.train_split, context.split
        for s in (train, test):
            if s.extras.get("labels") is None:
                raise ValueError(f"linear-probe needs split.extras['labels'] (split {s.name!r} has none)")
        train_img, _ = context.pooled(train)
        test_img, _ = context.pooled(test)
        train_img = torch.as_tensor(train_img).to(torch.float64)
        test_img = torch.as_tensor(test_img).to(torch.float64)
        if self.cca_k is not None:
            px, py = _paired_embeddings(context, train)
            cca = LinearCCA(k=self.cca_k).fit(px, py)
            train_img, test_img = cca.transform_x(train_img), cca.transform_x(test_img)
        model = self._model(context.seed).fit(train_img.cpu().numpy(), np.asarray(train.extras["labels"]))
        accuracy = float(model.score(test_img.cpu().numpy(), np.asarray(test.extras["labels"])))
        return {"accuracy": accuracy, "error": 1.0 - accuracy}
