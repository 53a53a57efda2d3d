"""Probes of a semantic space: clustering, concreteness, composition, composed image search.

Pure functions on word, phrase and image vectors (tensors or arrays, computed in float64); the
``semantic-space`` evaluator embeds the words and images and calls these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["masked_mean", "cosine_silhouette", "pc1_concreteness_r", "precision_at_k",
           "analogy_accuracy", "composition_accuracy", "search_relevance", "composed_query_precision",
           "SCORE_TIE_TOLERANCE"]

#: cosines closer than this count as tied (float32 embeddings resolve a cosine to about 1e-7·√D)
SCORE_TIE_TOLERANCE = 1e-6


def _float64(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row stays zero (it has cosine 0 with everything)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def masked_mean(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N, D]`` token / location features pooled to ``[B, D]`` by the mean over the real ones
    (``mask`` ``[B, N]``, True = real; ``None`` = all real); a row with none pools to zeros."""
    if mask is None:
        return features.mean(dim=1)
    weight = mask.to(features.dtype).unsqueeze(-1)
    return (features * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def cosine_silhouette(vectors: Any, labels: Any) -> float:
    """Mean silhouette coefficient of ``vectors`` ``[n, D]`` grouped by ``labels`` ``[n]`` under the
    cosine distance 1 − cos(x, y): s(i) = (b − a) / max(a, b) with a the mean distance to the other
    members of i's group and b the smallest mean distance to another group (0 for a group of one).
    Needs 2 ≤ number of groups ≤ n − 1 (ValueError otherwise). In [−1, 1]; higher = tighter groups."""
    x = _float64(vectors, "vectors", 2)
    labels = np.asarray(labels)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} vectors but {len(labels)} labels")
    groups = len(np.unique(labels))
    if not 2 <= groups <= len(x) - 1:
        raise ValueError(f"the silhouette needs 2 to n - 1 groups; got {groups} groups of {len(x)} vectors")
    from sklearn.metrics import silhouette_score  # on first use: sklearn.metrics takes ~0.5 s to import

    return float(silhouette_score(x, labels, metric="cosine"))


def pc1_concreteness_r(vectors: Any, ratings: Any) -> float:
    """|Pearson r| between the first principal component scores of ``vectors`` ``[n, D]`` (centred,
    unscaled; the component's sign is arbitrary, hence the absolute value) and ``ratings`` ``[n]``.
    NaN when either side has no variance; ValueError for fewer than 3 words."""
    x = _float64(vectors, "vectors", 2)
    y = _float64(ratings, "ratings", 1)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} vectors but {len(y)} ratings")
    if len(x) < 3:
        raise ValueError(f"a correlation needs at least 3 rated words, got {len(x)}")
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    if singular[0] == 0:
        return float("nan")
    pc1 = centred @ vt[0]
    pc1, y = pc1 - pc1.mean(), y - y.mean()
    denominator = np.sqrt((pc1 @ pc1) * (y @ y))
    return float(abs(pc1 @ y) / denominator) if denominator > 0 else float("nan")


def precision_at_k(scores: Any, relevant: Any, k: int, valid: Any = None,
                   tol: float = SCORE_TIE_TOLERANCE) -> np.ndarray:
    """Per-row precision@k ``[Q]`` of ranking candidates by ``scores`` ``[Q, M]`` (higher first), with
    ``relevant`` ``[Q, M]`` bool and optionally ``valid`` ``[Q, M]`` (False = never retrieved).

    k is capped at a row's number of valid candidates. Scores within ``tol`` of the k-th best are
    tied, and ties are broken uniformly at random in expectation: the tied candidates fill the
    remaining places with their mean relevance (so a model that scores everything alike gets chance).
    """
    s = _float64(scores, "scores", 2)
    rel = np.asarray(relevant, dtype=bool)
    ok = np.ones_like(rel) if valid is None else np.asarray(valid, dtype=bool)
    if rel.shape != s.shape or ok.shape != s.shape:
        raise ValueError(f"scores {s.shape}, relevant {rel.shape} and valid {ok.shape} must match")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_valid = ok.sum(axis=1)
    if (n_valid == 0).any():
        raise ValueError("every row needs at least one valid candidate")
    k_row = np.minimum(k, n_valid)
    s = np.where(ok, s, -np.inf)
    kth = -np.sort(-s, axis=1)[np.arange(len(s)), k_row - 1][:, None]
    above = ok & (s > kth + tol)
    tied = ok & ~above & (s >= kth - tol)
    rel = rel & ok
    slots = k_row - above.sum(axis=1)
    hits = (rel & above).sum(axis=1) + slots * (rel & tied).sum(axis=1) / tied.sum(axis=1)
    return hits / k_row


def analogy_accuracy(candidates: Any, queries: Any, targets: Any, exclude: Any = None,
                     tol: float = SCORE_TIE_TOLERANCE) -> float:
    """Accuracy (in %) of nearest-candidate (cosine) answers: query q is right when ``candidates``
    row ``targets[q]`` is the most similar to ``queries[q]`` among all candidates except
    ``exclude[q]`` (an index per query, or ``None``). Ties share the credit (:func:`precision_at_k`)."""
    c = _unit(_float64(candidates, "candidates", 2))
    q = _unit(_float64(queries, "queries", 2))
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != len(q):
        raise ValueError(f"{len(q)} queries but {len(targets)} targets")
    rows = np.arange(len(q))
    relevant = np.zeros((len(q), len(c)), dtype=bool)
    relevant[rows, targets] = True
    valid = np.ones_like(relevant)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if (exclude == targets).any():
            raise ValueError("a query's target cannot be excluded")
        valid[rows, exclude] = False
    return 100.0 * float(precision_at_k(q @ c.T, relevant, 1, valid, tol).mean())


def composition_accuracy(phrases: Any, attributes: Any, exclude_input: bool = True,
                         tol: float = SCORE_TIE_TOLERANCE) -> float:
    """Phrase arithmetic accuracy (in %): ``phrases`` ``[A, S, D]`` embeds "<attribute a> <noun s>"
    and ``attributes`` ``[A, D]`` the attribute words. For every a, b ≠ a and s the query
    phrase(a, s) − word(a) + word(b) ("red circle" − "red" + "blue") must be nearest (cosine) to
    phrase(b, s) among all A·S phrases, less the input phrase(a, s) when ``exclude_input`` (the usual
    analogy protocol; else an unchanged input phrase often wins)."""
    p = _float64(phrases, "phrases", 3)
    w = _float64(attributes, "attributes", 2)
    n_attr, n_noun, _ = p.shape
    if len(w) != n_attr or n_attr < 2:
        raise ValueError(f"need one attribute vector per phrase row and at least 2 attributes; got "
                         f"phrases {p.shape}, attributes {w.shape}")
    a, b, s = (g.ravel() for g in np.meshgrid(np.arange(n_attr), np.arange(n_attr), np.arange(n_noun),
                                              indexing="ij"))
    keep = a != b
    a, b, s = a[keep], b[keep], s[keep]
    queries = p[a, s] - w[a] + w[b]
    return analogy_accuracy(p.reshape(n_attr * n_noun, -1), queries, b * n_noun + s,
                            a * n_noun + s if exclude_input else None, tol)


def search_relevance(obj_color: Any, obj_shape: Any, query_colors: Any, query_shapes: Any) -> np.ndarray:
    """``[Q, N]`` bool: image n holds an object with colour ``query_colors[q]`` and shape
    ``query_shapes[q]`` (``obj_color`` / ``obj_shape`` ``[N, max_objects]`` indices, −1 = no object)."""
    color, shape = np.asarray(obj_color), np.asarray(obj_shape)
    qc, qs = np.asarray(query_colors)[:, None, None], np.asarray(query_shapes)[:, None, None]
    return ((color[None] == qc) & (shape[None] == qs) & (color[None] >= 0)).any(axis=-1)


def composed_query_precision(image_emb: Any, word_emb: Any, query_images: Any, relevant: Any,
                             k: int = 5, alpha: float = 0.5, tol: float = SCORE_TIE_TOLERANCE,
                             block: int = 256) -> float:
    """Precision@k (in %) of image search with composed queries q = unit((1 − α)·unit(image) +
    α·unit(word)), one per row of ``word_emb`` ``[Q, D]`` with its image ``query_images[q]`` (an index
    into ``image_emb`` ``[N, D]``); candidates are every image but the query's own, ranked by cosine
    with q, and ``relevant`` ``[Q, N]`` marks the right ones (ties as in :func:`precision_at_k`)."""
    images = _unit(_float64(image_emb, "image_emb", 2))
    words = _unit(_float64(word_emb, "word_emb", 2))
    query_images = np.asarray(query_images, dtype=np.int64)
    relevant = np.asarray(relevant, dtype=bool)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if len(words) != len(query_images) or relevant.shape != (len(words), len(images)):
        raise ValueError(f"{len(words)} words, {len(query_images)} query images and relevant "
                         f"{relevant.shape} do not match {len(images)} images")
    if len(words) == 0:
        raise ValueError("no queries")
    queries = _unit((1.0 - alpha) * images[query_images] + alpha * words)
    precision = []
    for start in range(0, len(queries), block):  # bounded memory: block × N scores at a time
        rows = np.arange(start, min(start + block, len(queries)))
        valid = np.ones((len(rows), len(images)), dtype=bool)
        valid[np.arange(len(rows)), query_images[rows]] = False
        precision.append(precision_at_k(queries[rows] @ images.T, relevant[rows], k, valid, tol))
    return 100.0 * float(np.concatenate(precision).mean())
