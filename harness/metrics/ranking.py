"""Ranking metrics with several relevant items per query: R@k, R-Precision, mAP@R and the median rank of
the first relevant item, from a score matrix and a boolean relevance matrix (dense or sparse).

Tests check them against pytorch-metric-learning's ``AccuracyCalculator`` and a naive sort written in
the test file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from harness.metrics.retrieval import _TIE_EPS_FACTOR, DEFAULT_CHUNK_BYTES, _to_tensor

__all__ = ["ranking_metrics"]

# Bytes of per-chunk bookkeeping per (query, relevant slot): padded sorted scores, thresholds, counts.
_SLOT_BYTES = 40
# Smallest top-k taken for the mAP@R / R-Precision positions (a k this small costs the same as 1).
_MIN_TOPK = 16


def ranking_metrics(
    scores,
    relevant,
    ks: Sequence[int] = (1, 5, 10),
    *,
    tol: float | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Retrieval metrics for queries with any number of relevant items.

    ``scores`` is ``[Q, N]`` (a torch tensor on any device, or a numpy array; higher = more similar),
    row q ranking the N items for query q. ``relevant`` is a boolean ``[Q, N]`` matrix: a dense bool
    numpy array or torch tensor, or a sparse one (any ``scipy.sparse`` matrix/array, or a torch sparse
    tensor; stored entries must be 0/1 or bool, stored zeros and duplicates are fine).

    Returns, for the queries with at least one relevant item (``R`` = the query's number of relevant
    items), averaged over queries:

    - ``R@k`` for each ``k`` in ``ks``: percent of queries with at least one relevant item in the top k;
    - ``R-Precision``: percent of the top R positions that hold relevant items;
    - ``mAP@R`` (Musgrave et al. 2020, "A metric learning reality check"): percent,
      ``(1/R) * sum over positions i <= R of P(i) * rel(i)``, P(i) the precision of the top i;
    - ``medr`` and ``meanr``: median (as :func:`numpy.median`) and mean 1-based rank of the first
      relevant item — ranks, not percents;
    - ``n_queries``: how many queries these average over, and ``n_empty``: how many queries were left
      out because no item is relevant to them (``n_queries + n_empty == Q``). When every query is
      empty the metrics are NaN.

    Ties count against the relevant items, as in :func:`retrieval_metrics`: with the relevant scores
    of a query sorted descending, ``s_1 >= s_2 >= ... >= s_R``, the k-th relevant item sits at position
    ``rank_k = k + #{irrelevant items scoring >= s_k - tol}``: after every irrelevant item it ties with
    (within ``tol``), after the relevant items scoring higher, and relevant items among themselves in
    any order (which does not change any metric). So constant scores give the worst ranks, never 100.
    ``tol`` defaults to ``2 * eps(dtype) * max(1, max|scores|)``, as in
    :func:`retrieval_metrics_from_scores`; pass ``tol=0`` for exact comparisons. Scores are compared in
    float32 (float64 for float64 or integer scores); NaN or infinite scores raise ``ValueError``.

    One pass over the scores in blocks of ``chunk_size`` query rows (default: as many as fit
    ``DEFAULT_CHUNK_BYTES`` with a float32 comparison buffer and a copy of some rows for top-k), so
    memory is O(chunk + nnz(relevant)), never a sort or a copy of the whole matrix. A block gives each query its first relevant rank by
    counting the items at or above its best relevant score minus ``tol``; only queries whose first
    relevant item lies within the top R can score mAP@R or R-Precision, and for those the top
    ``R + 1`` (at least 16, more where relevant items tie) scores of the row, from :func:`torch.topk`,
    locate every relevant item that lies within the top R.
    """
    s, dtype = _scores(scores)
    n_q, n_items = s.shape
    ks = _check_ks(ks)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    lo, hi = torch.aminmax(s)  # one reduction pass, no copy: NaN propagates, inf shows
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("scores contain NaN or infinite values")
    if tol is None:
        tol = _TIE_EPS_FACTOR * torch.finfo(dtype).eps * max(1.0, abs(lo), abs(hi))
    elif isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    tol = float(tol)

    indptr, cols = _relevant_csr(relevant, (n_q, n_items))
    n_rel = np.diff(indptr)
    device = s.device
    cols_t = torch.from_numpy(cols).to(device)

    first = np.zeros(n_q, dtype=np.int64)  # rank of the first relevant item (0: empty query)
    ap = torch.zeros(n_q, dtype=torch.float64, device=device)  # sum of P(rank_k) over rank_k <= R
    hit = torch.zeros(n_q, dtype=torch.float64, device=device)  # relevant items within the top R
    # 0/1 comparison results go to a float32 buffer: summing floats is ~4x faster than bools (which
    # torch sums through an int64 copy of the block) and exact below 2**24 items.  A block also holds
    # its scores in dtype (a copy unless given in dtype) and, for top-k, a gathered copy of some rows.
    itemsize = torch.finfo(dtype).bits // 8
    per_elem = 4 + itemsize + (0 if s.dtype == dtype and s.is_contiguous() else itemsize)
    rows = chunk_size or max(1, DEFAULT_CHUNK_BYTES // (n_items * per_elem))
    h = torch.empty(min(rows, n_q), n_items, dtype=torch.float32, device=device)
    count_dtype = torch.float64 if n_items >= 2**24 else torch.float32
    for r0, r1 in _chunks(n_rel, rows, n_items):
        block = s[r0:r1].to(dtype).contiguous()  # a view when already in dtype and row-major
        e0, e1 = int(indptr[r0]), int(indptr[r1])
        if e0 == e1:
            continue
        r = r1 - r0
        counts = torch.from_numpy(n_rel[r0:r1]).to(device)
        q = torch.repeat_interleave(torch.arange(r, device=device), counts)  # local row of each entry
        start = torch.from_numpy(indptr[r0:r1] - e0).to(device)
        k = torch.arange(e1 - e0, device=device) - start[q]  # slot of each entry within its row
        width = int(counts.max())
        # Each row's relevant scores, sorted descending in a padded [r, width] matrix (-inf padding);
        # negated, so ascending for searchsorted, together with the negated thresholds (score - tol).
        rel_sorted = torch.full((r, width), -math.inf, dtype=dtype, device=device)
        rel_sorted[q, k] = block[q, cols_t[e0:e1]]
        neg_sorted = rel_sorted.sort(dim=1, descending=True).values.neg_()
        neg_thr = neg_sorted + tol
        # Relevant items at or above each relevant item's threshold (itself and ties within tol).
        rel_above = torch.searchsorted(neg_sorted, neg_thr, right=True)

        # First relevant rank: count the whole row at or above the best relevant score - tol.
        best = torch.full((r,), math.inf, dtype=dtype, device=device)
        nonempty = counts > 0
        best[nonempty] = -neg_thr[nonempty, 0]  # the best relevant score - tol
        hb = h[:r]
        torch.ge(block, best[:, None], out=hb)
        rank1 = hb.sum(1, dtype=count_dtype).long() - rel_above[:, 0] + 1
        first[r0:r1] = np.where(n_rel[r0:r1] > 0, rank1.cpu().numpy(), 0)

        # Only a query whose first relevant item is within its top R scores mAP@R / R-Precision.
        live = nonempty & (rank1 <= counts)
        if not bool(live.any()):
            continue
        # The top K scores of the row, K = R + 1 + the most relevant items any relevant item ties with
        # below it: wherever fewer than K of them reach a threshold, that is the row's exact count;
        # where all K do, at least R + 1 - k irrelevant items precede the k-th relevant item, which
        # then lies beyond position R and counts for nothing anyway.
        slot = torch.arange(1, width + 1, device=device)
        excess = torch.where(slot <= counts[:, None], rel_above - slot, 0).amax(1)
        need = (counts + 1 + excess).clamp(min=_MIN_TOPK).double()
        kk = torch.ceil(2 ** (torch.ceil(4 * torch.log2(need)) / 4)).long()  # a few sizes, <= 19% over
        kk = torch.clamp(torch.maximum(kk, need.long()), max=n_items)
        for size in torch.unique(kk[live]).tolist():
            sel = live & (kk == size)
            idx = torch.nonzero(sel).squeeze(1)
            sub = block if len(idx) == r else block.index_select(0, idx)
            top = sub.topk(size, dim=1, sorted=True).values
            above = torch.searchsorted(-top, neg_thr[idx], right=True)  # items >= each threshold
            rank = slot + above - rel_above[idx]  # 1-based position of the k-th relevant item
            r_q = counts[idx, None]
            within = (slot <= r_q) & (rank <= r_q) & ((above < size) | (size == n_items))
            prec = torch.where(within, slot.double() / rank.double(), 0.0)
            ap.index_add_(0, idx + r0, prec.sum(1))
            hit.index_add_(0, idx + r0, within.sum(1).double())

    evaluated = n_rel > 0
    n_eval, n_empty = int(evaluated.sum()), int(n_q - evaluated.sum())
    out: dict[str, float] = {}
    nan = float("nan")
    ranks = first[evaluated]
    r_eval = n_rel[evaluated].astype(np.float64)
    for k_ in ks:
        out[f"R@{k_}"] = float(100.0 * np.mean(ranks <= k_)) if n_eval else nan
    out["R-Precision"] = float(100.0 * np.mean(hit.cpu().numpy()[evaluated] / r_eval)) if n_eval else nan
    out["mAP@R"] = float(100.0 * np.mean(ap.cpu().numpy()[evaluated] / r_eval)) if n_eval else nan
    out["medr"] = float(np.median(ranks)) if n_eval else nan
    out["meanr"] = float(np.mean(ranks)) if n_eval else nan
    out["n_queries"] = float(n_eval)
    out["n_empty"] = float(n_empty)
    return out


def _scores(scores: Any) -> tuple[torch.Tensor, torch.dtype]:
    if sp.issparse(scores):
        raise ValueError("scores must be a dense [Q, N] matrix, got a scipy.sparse one")
    s = _to_tensor(scores, "scores")
    if s.layout != torch.strided:
        raise ValueError("scores must be a dense [Q, N] matrix, got a sparse tensor")
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"scores must be a non-empty [Q, N] matrix, got shape {tuple(s.shape)}")
    if s.is_complex() or s.dtype == torch.bool:
        raise ValueError(f"scores must be real numbers, got {s.dtype}")
    # integers convert exactly to float64; half precisions widen to float32 (exact too)
    dtype = torch.float32 if s.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    return s, dtype


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(dict.fromkeys(int(k) for k in ks))


def _relevant_csr(relevant: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers ``[Q + 1]`` and column indices of the true entries (int64 numpy), rows grouped."""
    n_q, n_items = shape
    if sp.issparse(relevant) or (isinstance(relevant, torch.Tensor) and relevant.layout != torch.strided):
        if tuple(relevant.shape) != shape:
            raise ValueError(f"relevant has shape {tuple(relevant.shape)}, scores {shape}")
        if sp.issparse(relevant):
            coo = sp.coo_array(relevant)  # keeps duplicates and stored zeros
            rows, cols, vals = coo.row, coo.col, np.asarray(coo.data)
        else:
            t = relevant.detach().cpu().to_sparse_coo()  # maybe uncoalesced: duplicates are fine
            (rows, cols), vals = t._indices().numpy(), t._values().numpy()
        if vals.dtype != bool and vals.size and not np.isin(vals, (0, 1)).all():
            raise ValueError("relevant must hold booleans (or 0/1 entries)")
        keep = vals != 0
        m = sp.csr_array((np.ones(int(keep.sum()), dtype=bool), (rows[keep], cols[keep])), shape=shape)
        m.sum_duplicates()  # boolean: duplicates or together
        return m.indptr.astype(np.int64), m.indices.astype(np.int64)
    if isinstance(relevant, torch.Tensor):
        if tuple(relevant.shape) != shape:
            raise ValueError(f"relevant has shape {tuple(relevant.shape)}, scores {shape}")
        if relevant.dtype != torch.bool:
            raise ValueError(f"a dense relevant matrix must be boolean, got {relevant.dtype}")
        rows, cols = torch.nonzero(relevant.detach()).cpu().numpy().T
    else:
        arr = np.asarray(relevant)
        if arr.shape != shape:
            raise ValueError(f"relevant has shape {arr.shape}, scores {shape}")
        if arr.dtype != bool:
            raise ValueError(f"a dense relevant matrix must be boolean, got {arr.dtype}")
        rows, cols = np.nonzero(arr)  # row-major: rows come out grouped
    indptr = np.zeros(n_q + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_q), out=indptr[1:])
    return indptr, np.asarray(cols, dtype=np.int64)


def _chunks(n_rel: np.ndarray, rows: int, n_items: int):
    """Row blocks of at most ``rows`` queries, smaller where many relevant items would make the padded
    per-query bookkeeping outgrow the comparison buffer."""
    n_q = len(n_rel)
    budget = max(rows * n_items, 1)
    r0 = 0
    while r0 < n_q:
        r1 = min(n_q, r0 + rows)
        while r1 - r0 > 1 and (r1 - r0) * int(n_rel[r0:r1].max()) * _SLOT_BYTES > budget:
            r1 = r0 + (r1 - r0) // 2
        yield r0, r1
        r0 = r1
