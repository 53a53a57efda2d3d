"""Match-map scores of image locations against caption tokens (grounding family).

For location l of image i and token t of caption j the match map is M[i,j,l,t] = ⟨v_il, w_jt⟩ (raw
inner products); a pooling turns it into one score per pair, over real locations L_i and tokens T_j:

- ``misa`` (DAVEnet's, Harwath et al. 2018): s_ij = (1/|T_j|) Σ_{t∈T_j} max_{l∈L_i} M[i,j,l,t]
- ``sima``: s_ij = (1/|L_i|) Σ_{l∈L_i} max_{t∈T_j} M[i,j,l,t]
- ``sisa``: s_ij = (1/(|L_i||T_j|)) Σ_{l∈L_i, t∈T_j} M[i,j,l,t] = ⟨mean_l v_il, mean_t w_jt⟩

The B_i×B_t×L×T map is never materialised: blocks of pairs are one GEMM ``[b_i·L, D] @ [D, b_t·T]``
followed by the max, sized by a byte budget. Under autograd only the arg-max index of each (pair,
token) is kept, and the backward pass scatters the gradient to those locations, block by block.
"""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["matchmap_scores", "MATCHMAP_POOLINGS", "MATCHMAP_BLOCK_BYTES"]

MATCHMAP_POOLINGS = ("misa", "sima", "sisa")

#: bytes of one block of the match map (one GEMM output); the max rows and arg-max indices add ~3/L of
#: it and the backward pass one block of the same size: well under 256 MB extra in all.
MATCHMAP_BLOCK_BYTES = 32 * 2**20

# Columns (pairs' tokens) per block: wide enough for a full-speed GEMM, narrow enough that a block
# still holds many images' locations. Chosen on CPU; any value gives the same scores.
_TARGET_COLUMNS = 2048


def matchmap_scores(image_feats: torch.Tensor, text_feats: torch.Tensor,
                    text_mask: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                    pooling: str = "misa", *, block_bytes: int | None = None) -> torch.Tensor:
    """``[B_i, B_t]`` match-map scores of ``image_feats`` ``[B_i, L, D]`` against ``text_feats``
    ``[B_t, T, D]`` (see the module docstring for the poolings).

    Masks are bool ``[B, N]``, True = real (``None`` = all real): padded locations never win a max and
    padded tokens are never averaged; an item with no real location/token scores 0 against
    everything. Computed in float32 (float64 for float64 inputs), whatever the input dtype and with
    autocast off, in blocks of at most ``block_bytes`` (default :data:`MATCHMAP_BLOCK_BYTES`) of the
    match map, at least one pair. Differentiable: with ``misa``/``sima`` the gradient reaches only the
    arg-max location/token of each max (a single one on exact ties).
    """
    _check_features(image_feats, "image_feats")
    _check_features(text_feats, "text_feats")
    if image_feats.shape[2] != text_feats.shape[2]:
        raise ValueError(f"feature dimension mismatch: image_feats has D={image_feats.shape[2]}, "
                         f"text_feats has D={text_feats.shape[2]}")
    if image_feats.device != text_feats.device:
        raise ValueError(f"image_feats is on {image_feats.device} but text_feats is on {text_feats.device}")
    if pooling not in MATCHMAP_POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(MATCHMAP_POOLINGS)}, got {pooling!r}")
    if block_bytes is not None and (isinstance(block_bytes, bool) or not isinstance(block_bytes, int)
                                    or block_bytes < 1):
        raise ValueError(f"block_bytes must be a positive int or None, got {block_bytes!r}")
    image_valid = _valid(image_mask, image_feats, "image_mask")
    text_valid = _valid(text_mask, text_feats, "text_mask")
    dtype = torch.promote_types(torch.promote_types(image_feats.dtype, text_feats.dtype), torch.float32)
    budget = MATCHMAP_BLOCK_BYTES if block_bytes is None else block_bytes

    with _autocast_off(image_feats.device):
        if pooling == "sisa":
            return (_pooled_mean(image_feats, image_valid, dtype, budget)
                    @ _pooled_mean(text_feats, text_valid, dtype, budget).T)
        # misa: max over an image's locations, mean over a caption's tokens; sima the other way round
        if pooling == "misa":
            return _max_mean(image_feats, image_valid, text_feats, text_valid, dtype, budget)
        return _max_mean(text_feats, text_valid, image_feats, image_valid, dtype, budget).T.contiguous()


def _autocast_off(device: torch.device):
    """Autocast disabled on ``device`` (so the GEMMs really run in float32), where torch has one."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _check_features(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor [B, N, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be token/location features [B, N, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")


def _valid(mask, feats: torch.Tensor, name: str) -> torch.Tensor:
    """The mask as bool on the features' device (all True for ``None``), checked against the shape."""
    if mask is None:
        return torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a bool tensor [B, N], got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(feats.shape[:2]):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, the features need {tuple(feats.shape[:2])}")
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"{name} must be bool (True = real), got {mask.dtype}")
    return mask.to(device=feats.device, dtype=torch.bool)


def _real_rows(feats: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype, padded: bool) -> torch.Tensor:
    """``feats`` in ``dtype`` with padded rows zeroed when there are any (so that a NaN there cannot
    leak into a GEMM); ``padded`` is decided once per call, not synced per block."""
    x = feats.to(dtype)
    return torch.where(valid.unsqueeze(-1), x, 0) if padded else x


def _pooled_mean(feats: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype, budget: int) -> torch.Tensor:
    """Mean of the real rows of each item, ``[B, D]`` (zeros for an item with none), a few items at a
    time so that a cast or masked copy of the features stays within ``budget`` bytes."""
    weights, padded = _mean_weights(valid, dtype), not bool(valid.all())
    _, n, dim = feats.shape
    rows = max(1, budget // max(1, n * dim * torch.finfo(dtype).bits // 8))
    parts = [torch.einsum("bnd,bn->bd", _real_rows(feats[r:r + rows], valid[r:r + rows], dtype, padded),
                          weights[r:r + rows]) for r in range(0, feats.shape[0], rows)]
    return torch.cat(parts) if parts else feats.new_zeros(0, dim, dtype=dtype)


# --- max over one side, mean over the other -------------------------------------------------------------


def _block_shape(n_max: int, n_maxed: int, n_mean: int, n_meaned: int, itemsize: int, budget: int):
    """Items of the max side and of the mean side per block: a block is one GEMM output of
    ``n_max_b·n_maxed × n_mean_b·n_meaned`` entries within ``budget`` bytes (at least one pair)."""
    pairs = max(1, budget // max(1, itemsize * n_maxed * n_meaned))
    n_mean_b = max(1, min(n_mean, math.ceil(_TARGET_COLUMNS / max(1, n_meaned)), pairs))
    n_max_b = max(1, min(n_max, pairs // n_mean_b))
    return n_max_b, n_mean_b


def _max_mean(max_feats, max_valid, mean_feats, mean_valid, dtype, budget) -> torch.Tensor:
    """``[n_max, n_mean]``: s[m, a] = (1/|T_a|) Σ_{t∈T_a} max_{l∈L_m} ⟨x_ml, y_at⟩."""
    n_max, n_maxed, _ = max_feats.shape
    n_mean, n_meaned, _ = mean_feats.shape
    if 0 in (n_maxed, n_meaned):  # nothing real anywhere: every score is 0 (still on the graph)
        zero = (max_feats.sum() + mean_feats.sum()).to(dtype) * 0
        return zero + torch.zeros(n_max, n_mean, dtype=dtype, device=max_feats.device)
    if torch.is_grad_enabled() and (max_feats.requires_grad or mean_feats.requires_grad):
        return _MaxMean.apply(max_feats, mean_feats, max_valid, mean_valid, dtype, budget)
    scores, _ = _max_mean_forward(max_feats, max_valid, mean_feats, mean_valid, dtype, budget, keep_argmax=False)
    return scores


def _mean_weights(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return valid.to(dtype) / valid.sum(1, keepdim=True).clamp_min(1).to(dtype)


def _max_mean_forward(max_feats, max_valid, mean_feats, mean_valid, dtype, budget, keep_argmax):
    n_max, n_maxed, _ = max_feats.shape
    n_mean, n_meaned, _ = mean_feats.shape
    device = max_feats.device
    weights = _mean_weights(mean_valid, dtype)
    empty_max = ~max_valid.any(1)  # all -inf: their max would poison the mean, their scores are 0
    max_padded, mean_padded, any_empty = (not bool(max_valid.all()), not bool(mean_valid.all()),
                                          bool(empty_max.any()))
    itemsize = torch.finfo(dtype).bits // 8
    n_max_b, n_mean_b = _block_shape(n_max, n_maxed, n_mean, n_meaned, itemsize, budget)
    scores = torch.empty(n_max, n_mean, dtype=dtype, device=device)
    argmax = None
    if keep_argmax:  # small integers: this is all that autograd keeps of the match map
        index_dtype = torch.int16 if n_maxed <= torch.iinfo(torch.int16).max else torch.int64
        argmax = torch.empty(n_max, n_mean, n_meaned, dtype=index_dtype, device=device)
    # one buffer reused by every block: no allocation (or page faults) per block
    buffer = torch.empty(n_max_b * n_maxed * n_mean_b * n_meaned, dtype=dtype, device=device)
    for a0 in range(0, n_mean, n_mean_b):
        a1 = min(n_mean, a0 + n_mean_b)
        y = _real_rows(mean_feats[a0:a1], mean_valid[a0:a1], dtype, mean_padded).flatten(0, 1)
        for m0 in range(0, n_max, n_max_b):
            m1 = min(n_max, m0 + n_max_b)
            x = _real_rows(max_feats[m0:m1], max_valid[m0:m1], dtype, max_padded).flatten(0, 1)
            block = torch.mm(x, y.T, out=buffer[: x.shape[0] * y.shape[0]].view(x.shape[0], y.shape[0]))
            block = block.view(m1 - m0, n_maxed, y.shape[0])
            if max_padded:  # padded locations never win the max
                block.masked_fill_(~max_valid[m0:m1].unsqueeze(-1), -math.inf)
            if keep_argmax:
                best, where = block.max(1)
                argmax[m0:m1, a0:a1] = where.view(m1 - m0, a1 - a0, n_meaned)
            else:
                best = block.amax(1)
            best = best.view(m1 - m0, a1 - a0, n_meaned)
            if any_empty:
                best.masked_fill_(empty_max[m0:m1].view(-1, 1, 1), 0)
            scores[m0:m1, a0:a1] = (best * weights[a0:a1]).sum(-1)
    return scores, argmax


class _MaxMean(torch.autograd.Function):
    """:func:`_max_mean_forward` with the gradient scattered to each max's arg-max: for block (m, a),
    C[m, l, a, t] = g_ma · w_at · [l = argmax(m, a, t)], so ∂x_m = C·y_a and ∂y_a = Cᵀ·x_m (two GEMMs
    per block, the same shapes as the forward pass)."""

    @staticmethod
    def forward(ctx, max_feats, mean_feats, max_valid, mean_valid, dtype, budget):
        scores, argmax = _max_mean_forward(max_feats, max_valid, mean_feats, mean_valid, dtype, budget,
                                           keep_argmax=True)
        ctx.save_for_backward(max_feats, mean_feats, max_valid, mean_valid, argmax)
        ctx.dtype, ctx.budget = dtype, budget
        return scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_scores):
        max_feats, mean_feats, max_valid, mean_valid, argmax = ctx.saved_tensors
        with _autocast_off(max_feats.device):
            grads = _max_mean_backward(grad_scores.to(ctx.dtype), max_feats, mean_feats, max_valid,
                                       mean_valid, argmax, ctx.dtype, ctx.budget)
        return (*grads, None, None, None, None)


def _max_mean_backward(grad, max_feats, mean_feats, max_valid, mean_valid, argmax, dtype, budget):
    n_max, n_maxed, dim = max_feats.shape
    n_mean, n_meaned, _ = mean_feats.shape
    # an item with no real location has an arbitrary arg-max and score 0: no gradient through it
    grad = grad.masked_fill(~max_valid.any(1, keepdim=True), 0)
    weights = _mean_weights(mean_valid, dtype)
    max_padded, mean_padded = not bool(max_valid.all()), not bool(mean_valid.all())
    itemsize = torch.finfo(dtype).bits // 8
    n_max_b, n_mean_b = _block_shape(n_max, n_maxed, n_mean, n_meaned, itemsize, budget)
    d_max = torch.zeros(n_max * n_maxed, dim, dtype=dtype, device=max_feats.device)
    d_mean = torch.zeros(n_mean * n_meaned, dim, dtype=dtype, device=max_feats.device)
    buffer = torch.empty(n_max_b * n_maxed * n_mean_b * n_meaned, dtype=dtype, device=max_feats.device)
    for a0 in range(0, n_mean, n_mean_b):
        a1 = min(n_mean, a0 + n_mean_b)
        y = _real_rows(mean_feats[a0:a1], mean_valid[a0:a1], dtype, mean_padded).flatten(0, 1)
        for m0 in range(0, n_max, n_max_b):
            m1 = min(n_max, m0 + n_max_b)
            x = _real_rows(max_feats[m0:m1], max_valid[m0:m1], dtype, max_padded).flatten(0, 1)
            coef = (grad[m0:m1, a0:a1, None] * weights[a0:a1]).view(m1 - m0, 1, -1)
            onehot = buffer[: x.shape[0] * y.shape[0]].view(m1 - m0, n_maxed, y.shape[0]).zero_()
            onehot.scatter_(1, argmax[m0:m1, a0:a1].reshape(m1 - m0, 1, -1).long(), coef)
            onehot = onehot.view(x.shape[0], y.shape[0])
            d_max[m0 * n_maxed:m1 * n_maxed].addmm_(onehot, y)
            d_mean[a0 * n_meaned:a1 * n_meaned].addmm_(onehot.T, x)
    return (d_max.view(n_max, n_maxed, dim).to(max_feats.dtype),
            d_mean.view(n_mean, n_meaned, dim).to(mean_feats.dtype))
