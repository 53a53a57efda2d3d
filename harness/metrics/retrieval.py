"""Retrieval metrics: recall at k and rank statistics, from embeddings (cosine) or from a score matrix.

Evaluators call these; tests check them against naive float64 computations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["retrieval_metrics", "retrieval_metrics_from_scores", "retrieval_ranks", "tie_tolerance",
           "DEFAULT_CHUNK_BYTES"]

# Working memory of one row chunk (similarity block + comparison buffer).  Big enough that the
# GEMM runs at full speed, small enough to be harmless next to a model on a GPU.
DEFAULT_CHUNK_BYTES = 128 * 2**20

# Tie tolerance, in units of eps(dtype) * sqrt(D): scores this close to the correct one count as ties.
# Needed because equal scores do not come out bit-equal: a GEMM rounds identical dot products
# differently at different output positions (edge tiles), and the text->image positive score is a
# separate row-wise dot.  Measured on unit vectors (collapsed embeddings, D = 2..4096, CPU) the
# discrepancy never exceeded 0.71 eps * sqrt(D) (0.13 for D >= 512); sequential summation has a
# standard deviation of about 0.4 eps * sqrt(D).  2 covers both with margin and is 5e-6 for float32
# at D = 512, far below any score difference a model means.
_TIE_EPS_FACTOR = 2.0
# Unit roundoff of the inputs when torch is told to run float32 GEMMs in reduced precision
# (e.g. torch.backends.cuda.matmul.fp32_precision = "tf32"); the row-wise dot stays IEEE.
_REDUCED_PRECISION_UNIT = {"tf32": 2.0**-11, "bf16": 2.0**-8}


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array or tensor, got dtype object")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _matmul_unit_roundoff(device: torch.device) -> float:
    """Input roundoff of float32 GEMMs on ``device`` under torch's global settings (0 when IEEE)."""
    backend = {"cuda": "cuda", "cpu": "mkldnn"}.get(device.type)
    if backend is None:
        return 0.0
    try:
        # Only read the per-backend setting: it answers whichever API the user set it with, while
        # the legacy global getter raises once both APIs have been used.
        mode = getattr(torch.backends, backend).matmul.fp32_precision
    except AttributeError:  # torch without the per-backend API
        legacy = torch.get_float32_matmul_precision()
        mode = {"medium": "bf16", "high": "tf32" if backend == "cuda" else "ieee"}.get(legacy, "ieee")
    return _REDUCED_PRECISION_UNIT.get(str(mode), 0.0)


def _prepare(image_emb, text_emb, text_to_image, ks, chunk_size):
    img = _to_tensor(image_emb, "image_emb")
    txt = _to_tensor(text_emb, "text_emb")
    for name, t in (("image_emb", img), ("text_emb", txt)):
        if t.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n, D], got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got {t.dtype}")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"embedding dimension mismatch: image_emb has D={img.shape[1]}, text_emb has D={txt.shape[1]}"
        )
    if img.device != txt.device:
        raise ValueError(f"image_emb is on {img.device} but text_emb is on {txt.device}")

    idx = _to_tensor(text_to_image, "text_to_image")
    if idx.ndim != 1 or idx.shape[0] != txt.shape[0]:
        raise ValueError(
            f"text_to_image must be 1-D with one entry per caption ({txt.shape[0]}), "
            f"got shape {tuple(idx.shape)}"
        )
    if idx.dtype.is_floating_point or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer image indices, got {idx.dtype}")
    idx = idx.to(device=img.device, dtype=torch.int64)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= img.shape[0]:
        raise ValueError(
            f"text_to_image values must lie in [0, {img.shape[0] - 1}] (number of images), "
            f"found {lo if lo < 0 else hi}"
        )

    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    if chunk_size is not None and (
        not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    # float32 at least (half inputs would tie far too often), float64 when given float64.
    dtype = torch.float64 if torch.float64 in (img.dtype, txt.dtype) else torch.float32
    return img.to(dtype), txt.to(dtype), idx, tuple(dict.fromkeys(int(k) for k in ks)), chunk_size


def _normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    # Any NaN/inf in a row makes its norm non-finite: checking N norms is far cheaper than N*D values.
    if not bool(torch.isfinite(norm).all()):
        raise ValueError(f"{name} contains NaN or infinite values (or values too large for {x.dtype})")
    # Zero rows stay zero (score 0 against everything) instead of becoming NaN.
    return x / norm.clamp_min(torch.finfo(x.dtype).tiny)


def _exact_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    # Sums of 0/1 floats are exact while the count fits the mantissa; widen beyond that.
    if x.dtype == torch.float32 and x.shape[dim] >= 2**24:
        return x.sum(dim, dtype=torch.float64)
    return x.sum(dim)


def retrieval_ranks(
    image_emb,
    text_emb,
    text_to_image,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of the first correct item, for each image (i2t) and each caption (t2i).

    Returns ``(i2t_ranks, t2i_ranks)`` as int64 numpy arrays: ``i2t_ranks`` holds only the images that
    have at least one caption (in image order), ``t2i_ranks`` one entry per caption.  See
    :func:`retrieval_metrics` for the arguments, the tie rule and how the computation is chunked.
    """
    img, txt, idx, _, chunk_size = _prepare(image_emb, text_emb, text_to_image, (1,), chunk_size)
    return _ranks(img, txt, idx, chunk_size)


def _ranks(img, txt, idx, chunk_size):
    n_img, dim = img.shape
    n_txt = txt.shape[0]
    dtype, device = img.dtype, img.device
    img, txt = _normalize(img, "image_emb"), _normalize(txt, "text_emb")
    itemsize = torch.finfo(dtype).bits // 8
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_BYTES // (2 * n_txt * itemsize)
    rows = int(max(1, min(chunk_size, n_img)))

    # Captions grouped by image (CSR), so each chunk finds its positives with one slice.
    order = torch.argsort(idx, stable=True)
    counts = torch.bincount(idx, minlength=n_img)
    offsets = np.concatenate([[0], np.cumsum(counts.cpu().numpy())])

    # Each caption's positive score is needed before its image's block comes round, so it is
    # precomputed by a row-wise dot, in caption blocks of ~4 MB: they stay in cache and the
    # allocator reuses them (one big gather costs 5x more, mostly in page faults).
    tol = _TIE_EPS_FACTOR * torch.finfo(dtype).eps * math.sqrt(dim)
    if dtype == torch.float32:
        # Reduced-precision inputs move a dot of unit vectors by up to ~2u: cover it twice.
        tol += 4.0 * _matmul_unit_roundoff(device)
    thr_col = torch.empty(n_txt, dtype=dtype, device=device)
    step = max(1, 2**22 // (dim * itemsize))
    for c0 in range(0, n_txt, step):
        c1 = min(n_txt, c0 + step)
        thr_col[c0:c1] = (img[idx[c0:c1]] * txt[c0:c1]).sum(1)
    thr_col -= tol
    thr_col_row = thr_col.unsqueeze(0)

    sim = torch.empty(rows, n_txt, dtype=dtype, device=device)
    hits = torch.empty_like(sim)  # 0/1 comparison results, summed as floats (fast, exact)
    t2i_count = torch.zeros(n_txt, dtype=torch.float64, device=device)
    i2t_count = torch.empty(n_img, dtype=torch.float64, device=device)
    txt_t = txt.t()

    for r0 in range(0, n_img, rows):
        r1 = min(n_img, r0 + rows)
        s, h = sim[: r1 - r0], hits[: r1 - r0]
        torch.mm(img[r0:r1], txt_t, out=s)

        caps = order[offsets[r0] : offsets[r1]]
        local = idx[caps] - r0
        pos = s[local, caps]  # the GEMM's own scores of the correct pairs

        # image -> text: the block holds whole rows.  Count everything within the tie band of the
        # best correct caption, then take the image's own captions back out (same values, same
        # comparison, so exactly the ones counted).
        best = torch.full((r1 - r0,), -math.inf, dtype=dtype, device=device)
        best.scatter_reduce_(0, local, pos, reduce="amax")
        thr_row = best - tol
        torch.ge(s, thr_row.unsqueeze(1), out=h)
        above = _exact_sum(h, 1).to(torch.float64)
        i2t_count[r0:r1] = above.index_add_(0, local, (pos >= thr_row[local]).to(torch.float64), alpha=-1)

        # text -> image: every image of the block against each caption's threshold; the correct
        # image is taken out through the block's positive mask the same way.
        torch.ge(s, thr_col_row, out=h)
        t2i_count += _exact_sum(h, 0)
        t2i_count.index_add_(0, caps, (pos >= thr_col[caps]).to(torch.float64), alpha=-1)

    has_caption = (counts > 0).cpu().numpy()
    i2t = i2t_count.cpu().numpy().astype(np.int64)[has_caption] + 1
    t2i = t2i_count.cpu().numpy().astype(np.int64) + 1
    return i2t, t2i


def retrieval_metrics(
    image_emb,
    text_emb,
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Image<->text retrieval recall and rank statistics from embeddings.

    ``image_emb`` is ``[N, D]``, ``text_emb`` is ``[M, D]`` (torch tensors on any device, or numpy
    arrays); caption ``j`` describes image ``text_to_image[j]``.  An image may have any number of
    captions; one with none is left out of the image->text numbers.  Scores are cosine similarities
    (rows normalized here; a zero vector scores 0 against everything), computed in float32, or in
    float64 when either input is float64.

    Returns percentages ``i2t_R@k`` (images with at least one of their captions in the top k) and
    ``t2i_R@k`` (captions whose image is in the top k) for each ``k`` in ``ks``; ``i2t_medr``,
    ``t2i_medr``, ``i2t_meanr``, ``t2i_meanr`` (1-based rank of the first correct item; median as
    :func:`numpy.median`); and ``rsum``, the sum of every R@k of both directions.

    Ties count against the correct item: rank = 1 + #{incorrect items scoring >= s - tol}, where s is
    the correct item's score (for i2t the best of the image's captions; the other correct captions
    never count) and ``tol = 2 * eps(dtype) * sqrt(D)`` (5e-6 for float32 at D = 512, 1e-14 for
    float64).  So a collapsed model, all embeddings equal, gets the worst ranks, not R@1 = 100.  The
    tolerance is there because equal scores do not come out bit-equal: a GEMM rounds identical dot
    products differently at different output positions, and the text->image positive score comes
    from a separate row-wise dot (an ulp or so apart from the GEMM's entry).  Scores closer than
    that are not resolved by the arithmetic anyway.  If torch is set to run float32 matmuls in
    TF32/bf16 (off by default), ``tol`` grows by 4x their input roundoff (2e-3 / 1.6e-2) for the
    same reason.

    One pass over the similarity matrix, in blocks of ``chunk_size`` image rows (default: as many as
    fit ``DEFAULT_CHUNK_BYTES`` with one comparison buffer), so memory is O(chunk + (N + M) * D),
    never O(N * M).  A block holds whole rows, so it gives its images' image->text counts directly,
    and adds to each caption's text->image count the images in the block scoring at least the
    caption's precomputed positive minus ``tol``; the correct image is removed through the block's
    positive mask, with the very comparison that counted it.
    """
    img, txt, idx, ks, chunk_size = _prepare(image_emb, text_emb, text_to_image, ks, chunk_size)
    i2t, t2i = _ranks(img, txt, idx, chunk_size)
    return _metrics_from_ranks(i2t, t2i, ks)


def tie_tolerance(dtype: torch.dtype, dim: int, device: torch.device | str = "cpu") -> float:
    """The tie band :func:`retrieval_metrics` uses for cosine scores of ``dim``-dimensional vectors."""
    tol = _TIE_EPS_FACTOR * torch.finfo(dtype).eps * math.sqrt(dim)
    if dtype == torch.float32:
        tol += 4.0 * _matmul_unit_roundoff(torch.device(device))
    return tol


def _metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """R@k (percent of queries whose first correct item ranks ≤ k), median and mean ranks, and rsum."""
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = float(100.0 * np.mean(ranks <= k))
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_medr"] = float(np.median(ranks))
        out[f"{name}_meanr"] = float(np.mean(ranks))
    out["rsum"] = float(sum(out[f"{name}_R@{k}"] for name in ("i2t", "t2i") for k in ks))
    return out


def retrieval_metrics_from_scores(scores, text_to_image, ks: Sequence[int] = (1, 5, 10),
                                  tol: float | None = None) -> dict[str, float]:
    """:func:`retrieval_metrics` from a full ``[n_images, n_texts]`` score matrix (higher = more alike),
    for methods whose pair score is not the cosine of pooled vectors (match-map grounding).

    Same metrics and the same tie rule: rank = 1 + #{incorrect items scoring ≥ s − tol}, s the correct
    item's score (for image→text the best of the image's captions). ``tol`` defaults to
    ``2·eps(dtype)·max(1, max|scores|)`` (relative to the scores' scale); with the ``tol`` that
    :func:`retrieval_metrics` uses (:func:`tie_tolerance`) on the cosine matrix the two agree exactly.
    Scores are compared in float32 (float64 for float64 or integer scores). Works through row blocks
    of one comparison buffer (``DEFAULT_CHUNK_BYTES`` of bools), never a copy of the matrix.
    """
    s = _to_tensor(scores, "scores")
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"scores must be a non-empty [n_images, n_texts] matrix, got shape {tuple(s.shape)}")
    if s.is_complex() or s.dtype == torch.bool:
        raise ValueError(f"scores must be real numbers, got {s.dtype}")
    # integers convert exactly to float64; half precisions widen to float32 (exact too)
    dtype = torch.float32 if s.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    s = s.to(dtype)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contain NaN or infinite values")
    n_img, n_txt = s.shape
    idx = _to_tensor(text_to_image, "text_to_image")
    if idx.ndim != 1 or idx.shape[0] != n_txt or idx.dtype.is_floating_point or idx.is_complex() \
            or idx.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold one integer image index per text ({n_txt}), "
                         f"got shape {tuple(idx.shape)} of {idx.dtype}")
    idx = idx.to(device=s.device, dtype=torch.int64)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_img:
        raise ValueError(f"text_to_image values must lie in [0, {n_img - 1}] (number of images), "
                         f"found {lo if lo < 0 else hi}")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    ks = tuple(dict.fromkeys(int(k) for k in ks))
    if tol is None:
        tol = _TIE_EPS_FACTOR * torch.finfo(dtype).eps * max(1.0, float(s.abs().max()))
    elif isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    tol = float(tol)

    # Each text's score with its own image, and each image's best own text (-inf: it has none).
    positive = s[idx, torch.arange(n_txt, device=s.device)]
    thr_col = positive - tol
    best = torch.full((n_img,), -math.inf, dtype=dtype, device=s.device).scatter_reduce_(
        0, idx, positive, reduce="amax")
    thr_row = best - tol
    # The correct items pass their own threshold (tol >= 0 for a text's image; its best text for an
    # image): count everything at or above the threshold, then take those correct ones back out.
    own_above = torch.zeros(n_img, dtype=torch.int64, device=s.device).index_add_(
        0, idx, (positive >= thr_row[idx]).to(torch.int64))
    t2i_count = torch.zeros(n_txt, dtype=torch.int64, device=s.device)
    i2t_count = torch.empty(n_img, dtype=torch.int64, device=s.device)
    rows = int(max(1, min(n_img, DEFAULT_CHUNK_BYTES // n_txt)))
    hits = torch.empty(rows, n_txt, dtype=torch.bool, device=s.device)
    for r0 in range(0, n_img, rows):
        r1 = min(n_img, r0 + rows)
        block, h = s[r0:r1], hits[: r1 - r0]
        torch.ge(block, thr_col, out=h)
        t2i_count += h.sum(0)
        torch.ge(block, thr_row[r0:r1, None], out=h)
        i2t_count[r0:r1] = h.sum(1)
    has_caption = own_above > 0
    i2t_ranks = (i2t_count - own_above + 1)[has_caption].cpu().numpy()
    t2i_ranks = t2i_count.cpu().numpy()  # already counts the correct image itself: rank = count
    return _metrics_from_ranks(i2t_ranks, t2i_ranks, ks)
