"""The ``matching`` evaluator: match / non-match classification of image–caption pairs, for any method."""

from __future__ import annotations

import numbers
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness import hookimpl
from harness.components import EvalContext, Evaluator, TokenFeatures
from harness.data import Split
from harness_plugins.datasets.shapes_relevance import caption_relevance
from harness_plugins.evaluators.minimal_pairs import _pair_scores, check_scene_extras, generate_pairs

KINDS = ("random", "hard")
_REDRAWS = 20  # attempts to draw a random caption that is false of the image


@dataclass(frozen=True)
class MatchingSet:
    """The labelled pairs of a split: image ``image[p]`` with split text ``text[p]`` or, where that is
    -1, the generated caption ``hard_captions[hard[p]]``; ``label[p]`` 1 for a match; ``kind[p]``
    ``"positive"``, ``"random"`` or ``"hard"``."""

    image: np.ndarray
    text: np.ndarray
    hard: np.ndarray
    hard_captions: list[str]
    label: np.ndarray
    kind: np.ndarray


def matching_set(split: Split, seed: int = 0) -> MatchingSet:
    """Per image with a caption: the positive (its first caption), one random negative (a caption of
    another image, drawn with a generator seeded by ``(seed, image)``; with scene annotations redrawn
    until it is false of the image) and, with scene annotations and captions of the ``shapes``
    grammar, one hard negative: a minimal-pair edit of the first caption, false of the image, of a
    kind chosen at random (see :func:`~harness_plugins.evaluators.minimal_pairs.generate_pairs`)."""
    t2i = split.text_to_image
    first = {}
    for j in np.argsort(t2i, kind="stable"):  # each image's first caption, in text order
        first.setdefault(int(t2i[j]), int(j))
    images = np.array(sorted(first), dtype=np.int64)
    if len(images) == 0:
        raise ValueError(f"split {split.name!r} has no image with a caption")
    try:
        check_scene_extras(split.extras)
        scene = True
    except ValueError:
        scene = False
    rngs = {int(i): np.random.default_rng([seed, int(i)]) for i in images}
    n_texts = len(t2i)

    def draw(i: int) -> int:
        while True:  # a text of another image (an image with every text would loop: checked below)
            j = int(rngs[i].integers(n_texts))
            if t2i[j] != i:
                return j

    if np.all(t2i == t2i[0]):
        raise ValueError(f"split {split.name!r}: every caption belongs to one image; no random negatives")
    negative = {int(i): draw(int(i)) for i in images}
    if scene:  # redraw negatives that happen to be true of the image ("a red circle" of another image)
        pending = list(negative)
        for _ in range(_REDRAWS):
            if not pending:
                break
            truth = caption_relevance([split.texts[negative[i]] for i in pending], split.extras)
            still = [i for row, i in enumerate(pending) if truth[row, i]]
            for i in still:
                negative[i] = draw(i)
            pending = still
    hard_of: dict[int, str] = {}
    if scene:
        try:
            pairs = generate_pairs(split.texts, t2i, split.extras, seed=seed, captions="first")
        except ValueError:  # captions outside the shapes grammar: no hard negatives
            pairs = []
        by_image: dict[int, list[str]] = {}
        for p in pairs:
            if first.get(p.image) == p.text:
                by_image.setdefault(p.image, []).append(p.false_caption)
        for i, options in by_image.items():
            hard_of[i] = options[int(np.random.default_rng([seed, i, 1]).integers(len(options)))]
    rows = []  # (image, text, hard index, label, kind)
    hard_captions: list[str] = []
    for i in images:
        i = int(i)
        rows.append((i, first[i], -1, 1, "positive"))
        rows.append((i, negative[i], -1, 0, "random"))
        if i in hard_of:
            rows.append((i, -1, len(hard_captions), 0, "hard"))
            hard_captions.append(hard_of[i])
    image, text, hard, label, kind = zip(*rows)
    return MatchingSet(np.array(image), np.array(text), np.array(hard), hard_captions,
                       np.array(label), np.array(kind))


def fit_threshold(scores: Any, labels: Any) -> float:
    """The threshold t maximising balanced accuracy ½(TPR + TNR) of "match iff s > t" on these scores:
    the midpoint between two consecutive distinct scores (±inf beyond them); ties: the lowest."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("fitting a threshold needs both matching and non-matching pairs")
    values = np.unique(s[np.isfinite(s)])
    if not len(values):
        return 0.0
    cuts = np.concatenate([[-np.inf], (values[:-1] + values[1:]) / 2, [np.inf]])
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tpr = 1.0 - np.searchsorted(pos, cuts, side="right") / len(pos)  # share of positives above t
    tnr = np.searchsorted(neg, cuts, side="right") / len(neg)  # share of negatives at or below t
    best = cuts[int(np.argmax(tpr + tnr))]
    return float(best) if np.isfinite(best) else float(np.sign(best) * np.finfo(np.float64).max)


def matching_metrics(scores: Any, labels: Any, kinds: Any, threshold: float) -> dict[str, float]:
    """In %: ``auc`` (ROC AUC of the matches against every non-match; a tie counts one half),
    ``accuracy`` = ½(TPR + TNR) of "match iff s > threshold" (balanced: chance 50), and per negative
    kind k (``random``, ``hard``) ``auc_k`` and ``accuracy_k`` = ½(TPR + TNR_k) on the matches and the
    non-matches of that kind. A kind without pairs is left out. NaN scores count as wrong."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    kinds = np.asarray(kinds, dtype=object)
    if not len(s) == len(y) == len(kinds):
        raise ValueError(f"need one score, label and kind per pair; got {len(s)}, {len(y)} and {len(kinds)}")
    if y.all() or not y.any():
        raise ValueError("matching metrics need both matching and non-matching pairs")
    s_auc = np.where(np.isnan(s), -np.inf, s)  # a NaN never ranks a match above a non-match
    tpr = float(np.mean(s[y] > threshold))
    out = {"auc": 100.0 * roc_auc_score(y, s_auc)}
    out["accuracy"] = 100.0 * 0.5 * (tpr + float(np.mean(s[~y] <= threshold)))
    for kind in KINDS:
        negative = ~y & (kinds == kind)
        if negative.any():
            keep = y | negative
            out[f"auc_{kind}"] = 100.0 * roc_auc_score(y[keep], s_auc[keep])
            out[f"accuracy_{kind}"] = 100.0 * 0.5 * (tpr + float(np.mean(s[negative] <= threshold)))
    return out


_SETS: dict[tuple[int, int], tuple[weakref.ref, MatchingSet]] = {}


class Matching(Evaluator):
    """Match / non-match classification of image–caption pairs with the method's pair score: ROC AUC
    and accuracy, overall and per kind of negative (in %; chance 50 for each).

    A fixed test set per split (:func:`matching_set`, from ``seed`` and the split only, not the run):
    each image's first caption as a match, a random caption of another image (false of the image,
    where the dataset can tell) and, where it has scene annotations (``shapes``), a minimal-pair hard
    negative. Scores are the method's own (a matching head's logit, match-map scores) or the cosine of
    pooled embeddings for dual encoders; "match iff score > t" with t fitted on the ``val`` split's set
    to maximise balanced accuracy (on the train split's when the dataset has no val split). Metrics:
    ``auc``, ``accuracy`` (½(TPR + TNR), balanced), ``auc_random`` / ``accuracy_random`` and
    ``auc_hard`` / ``accuracy_hard`` (the matches against that kind of non-match only;
    :func:`matching_metrics`).
    """

    units = {"auc*": "%", "accuracy*": "%"}

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)

    def metric_names(self) -> list[str]:
        return ["auc", "accuracy", *(f"{m}_{k}" for k in KINDS for m in ("auc", "accuracy"))]

    def chance(self, context: EvalContext) -> dict[str, float]:
        """A score that ignores the pair: AUC 50; balanced accuracy 50 at any threshold."""
        return {name: 50.0 for name in self.metric_names()}

    def pairs(self, split: Split) -> MatchingSet:
        key = (id(split), self.seed)  # made once per split object and seed in a process
        cached = _SETS.get(key)
        if cached is None or cached[0]() is not split:
            cached = (weakref.ref(split), matching_set(split, self.seed))
            _SETS[key] = cached
        return cached[1]

    def scores(self, context: EvalContext, split: Split) -> tuple[MatchingSet, np.ndarray]:
        """The split's set and the method's score of each of its pairs."""
        pairs = self.pairs(split)
        image_emb, text_emb = context.embed_images(split), context.embed_texts(split)
        text = pairs.text.copy()
        if pairs.hard_captions:  # generated captions after the split's texts
            hard_emb = context.model.embed_texts(pairs.hard_captions)
            text_emb = TokenFeatures.cat([text_emb, hard_emb]) if isinstance(text_emb, TokenFeatures) \
                else torch.cat([text_emb, hard_emb.to(text_emb.device)])
            text = np.where(pairs.text >= 0, pairs.text, len(split.texts) + pairs.hard)
        return pairs, _pair_scores(context, image_emb, text_emb, pairs.image, text)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        fit_on = context.val_split or context.train_split
        fit_pairs, fit_scores = self.scores(context, fit_on)
        threshold = fit_threshold(fit_scores, fit_pairs.label)
        pairs, scores = (fit_pairs, fit_scores) if fit_on is context.split else \
            self.scores(context, context.split)
        return matching_metrics(scores, pairs.label, pairs.kind, threshold)


@hookimpl
def register_evaluators(register):
    register("matching", Matching)
