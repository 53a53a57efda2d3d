"""Gathering embeddings across DDP ranks with gradient, so in-batch losses see the global batch.

Scaling convention (what makes DDP exact): every rank gathers the global batch and computes the *same*
global loss ``L``. The backward of :func:`all_gather` sums the incoming gradients over ranks before
slicing out this rank's rows, so the gradient each rank gets for its local rows is ``world_size · ∂L/∂x``.
DDP then *averages* parameter gradients over ranks, ``(1/W) Σ_r W · ∂L/∂x_r · ∂x_r/∂θ = ∂L/∂θ``: exactly
the single-process gradient of the concatenated batch, even when ranks hold different batch sizes.
Parameters that are not upstream of a gather (a learnable temperature) get the plain ``∂L/∂θ``, the
same on every rank, so averaging them changes nothing.

Every rank must call the same gathers in the same order and run backward through them (collectives
block until all ranks arrive). When ``torch.distributed`` is not initialized all functions are no-ops.

The second half runs a job under ``torchrun``: joining the process group, each rank's shard of a batch or
a split, averaging gradients, and sharing rank 0's decisions.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialized with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _local_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order (ranks may hold different batch sizes)."""
    # gloo only reduces CPU tensors, NCCL only CUDA ones; the tensor follows the data.
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def row_offset(n_local: int, device: torch.device | str = "cpu") -> int:
    """Index of this rank's first row in the gathered global batch (0 when not distributed)."""
    if not is_distributed():
        return 0
    return sum(_local_sizes(n_local, torch.device(device))[: dist.get_rank()])


def _gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The collective itself, outside autograd."""
    longest = max(sizes)
    # all_gather needs equal shapes: pad to the longest, strip afterwards.
    padded = x.new_zeros((longest,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's rows; backward sums gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        me = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:me]), sum(sizes[: me + 1])
        return _gather_rows(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Each rank holds ∂L_r/∂(global batch); the gradient of Σ_r L_r w.r.t. our rows is their sum.
        # Clone: autograd may hand the same buffer to other consumers, and all_reduce works in place.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start: ctx.stop], None


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order along dim 0, with gradient.

    ``x`` is ``[n_r, ...]``; ranks may differ in ``n_r`` but not in the trailing shape. Without an
    initialized process group this returns ``x`` itself. See the module docstring for the gradient scale.
    """
    return all_gather_with_offset(x)[0]


def all_gather_with_offset(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(all_gather(x), index of this rank's first row in it)``, with a single size exchange."""
    if not is_distributed():
        return x, 0
    sizes = _local_sizes(x.shape[0], x.device)
    offset = sum(sizes[: dist.get_rank()])
    if x.requires_grad and torch.is_grad_enabled():
        return _AllGather.apply(x, sizes), offset
    # Keys and queues need no gradient: same collective, no autograd node (and no backward to join).
    return _gather_rows(x, sizes), offset


def all_gather_tokens(features: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token / location features ``[n_r, N_r, D]`` and their mask ``[n_r, N_r]`` (True = real, ``None``
    = all real) from every rank, concatenated in rank order, with gradient for the features.

    Ranks may differ in ``n_r`` and in ``N_r``: every rank pads its features to the longest ``N`` with
    zeros, masked out (False), so the result is ``[Σ n_r, max N_r, D]`` with a mask. Without an
    initialized process group this returns the inputs themselves.
    """
    if not is_distributed():
        return features, mask
    longest = torch.tensor([features.shape[1]], dtype=torch.long, device=features.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    pad = int(longest.item()) - features.shape[1]
    valid = mask.bool() if mask is not None else torch.ones(features.shape[:2], dtype=torch.bool,
                                                            device=features.device)
    # F.pad is differentiable: the gradient of the padding is simply dropped.
    features = torch.nn.functional.pad(features, (0, 0, 0, pad))
    valid = torch.nn.functional.pad(valid, (0, pad), value=False)
    # uint8 rather than bool: not every backend gathers bool tensors
    return all_gather(features), all_gather(valid.to(torch.uint8)).bool()


# --- running a job under torchrun ---------------------------------------------------------------------

def init_from_env() -> str | None:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), once
    per process, and return the backend; None for a plain run. CPU tensors go through gloo, CUDA tensors
    through NCCL (one backend per device type), and each rank takes GPU ``LOCAL_RANK``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return None
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return dist.get_backend()


def backend_for(device: torch.device) -> str | None:
    """The backend that carries this device's tensors (``gloo``, ``nccl``), None when not distributed."""
    if not is_distributed():
        return None
    backend = dist.get_backend()
    if ":" not in backend:  # one backend for every device type
        return backend
    return dict(part.split(":") for part in backend.split(","))[device.type]


def shard(n: int) -> slice:
    """This rank's contiguous rows of ``n`` (sizes differ by at most one, the first ranks hold the extra
    rows): concatenated in rank order the shards are the rows themselves, so gathered embeddings are
    in the single-process order."""
    size, me = world_size(), rank()
    base, extra = divmod(n, size)
    start = me * base + min(me, extra)
    return slice(start, start + base + (me < extra))


def gather(x: Any) -> Any:
    """Every rank's rows of ``x`` (a tensor or :class:`harness.components.TokenFeatures`), concatenated in
    rank order, without gradient; ``x`` itself when not distributed."""
    if not is_distributed():
        return x
    if hasattr(x, "features"):  # token features: pad to the longest N, then gather with the mask
        features, mask = all_gather_tokens(x.features.detach(), x.mask)
        return type(x)(features, mask)
    return all_gather(x.detach())


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks in one collective (what DDP's reducer does, but for
    every parameter the step touched, including those a loss, a sampler or a head used outside the
    model's forward). A parameter without a gradient on some rank counts as zero there; one without a
    gradient on every rank keeps none, as in a single process (so the optimizer skips it alike)."""
    if not is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat[:-len(params)] /= dist.get_world_size()
    offset = 0
    for p, g, seen in zip(params, grads, flat[-len(params):].tolist()):
        n = g.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone() if seen else None
        offset += n


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers (batch-norm statistics) to every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over ranks (a loss every rank computed on its own rows); ``value`` itself
    when not distributed or when every rank holds the same number (as gathered losses do)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / dist.get_world_size())


def broadcast_json(value: Any = None) -> Any:
    """Rank 0's ``value`` (anything JSON can hold) on every rank: a decision every rank must share, such
    as which jobs are already done. Plain JSON bytes, never pickle."""
    if not is_distributed():
        return value
    data = json.dumps(value).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.long)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8)
    if dist.get_rank() == 0:
        buffer[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    dist.broadcast(buffer, src=0)
    return json.loads(buffer.numpy().tobytes().decode())


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (e.g. "the cache file exists here")."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()
