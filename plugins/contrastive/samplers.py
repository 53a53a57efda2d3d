"""Samplers: which negatives a loss sees (in-batch, a MoCo queue, a re-ranked pool).

How negatives reach a loss: a sampler calls ``loss(image_emb, text_emb, negatives=Negatives(...),
**extras)`` (:class:`harness_plugins.contrastive.losses.Negatives`), so the loss keeps its own formula and
temperature (a learnable one included) and the sampler only decides *which* embeddings it scores.
A loss can take sampler negatives iff its ``forward`` has a ``negatives`` parameter; ``check_loss``
rejects any other loss (``devise``, which scores against label embeddings) before training starts.

Distributed: queues hold keys gathered from every rank, so they are identical on all ranks.

False negatives: every sampler takes ``mask_false_negatives`` (default false), which turns masking on for
the method as the loss's option does (either is enough). Queues then also keep the split ids of their
keys, so the loss can drop queued keys relevant to an anchor, and ``rerank`` picks its hardest negatives
among the candidates *not* relevant to the anchor (the relevant ones are what it would otherwise pick).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import hookimpl
from harness.components import FalseNegatives, Sampler, TokenFeatures
from harness.distributed import all_gather, all_gather_with_offset
from harness_plugins.contrastive.scores import Negatives, check_flag


def _require_pooled(sampler: Sampler, image_emb, text_emb) -> None:
    if isinstance(image_emb, TokenFeatures) or isinstance(text_emb, TokenFeatures):
        raise ValueError(f"sampler {type(sampler).__name__} keeps pooled [B, D] embeddings; this method's "
                         "encoders return token features")


class InBatch(Sampler):
    """In-batch negatives: each anchor's negatives are the other rows of the (global) batch."""

    def __init__(self, mask_false_negatives: bool = False):
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)


class _Queue:
    """FIFO of the last ``size`` rows (a ring buffer; any number of rows per push)."""

    def __init__(self, size: int):
        self.size, self.buffer, self.ptr, self.count = size, None, 0, 0

    def push(self, rows: torch.Tensor) -> None:
        rows = rows.detach()[-self.size:] if self.size else rows[:0]
        if not len(rows):
            return
        if self.buffer is None:
            self.buffer = rows.new_zeros((self.size,) + tuple(rows.shape[1:]))
        index = (self.ptr + torch.arange(len(rows), device=rows.device)) % self.size
        self.buffer[index] = rows.to(self.buffer.dtype)
        self.ptr = (self.ptr + len(rows)) % self.size
        self.count = min(self.count + len(rows), self.size)

    def rows(self) -> torch.Tensor | None:
        # Until the first wrap the filled rows are the prefix; after it, all of them.
        return None if self.count == 0 else self.buffer[: self.count]

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer, self.ptr, self.count = state["buffer"], int(state["ptr"]), int(state["count"])


class _MemorySampler(Sampler):
    """Shared machinery: a queue per modality and, when ``momentum`` is set, EMA key encoders."""

    name = "memory"

    def __init__(self, size: int, momentum: float | None, mask_false_negatives: bool = False):
        if size < 0:
            raise ValueError(f"size must be ≥ 0, got {size}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.size, self.momentum = int(size), momentum
        self.image_queue, self.text_queue = _Queue(self.size), _Queue(self.size)
        # the split ids of the queued keys, row-aligned with the queues (only while masking)
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)
        self.image_id_queue, self.text_id_queue = _Queue(self.size), _Queue(self.size)
        self._pending_ids: tuple[torch.Tensor, torch.Tensor] | None = None
        self.image_key: nn.Module | None = None
        self.text_key: nn.Module | None = None
        self._pending_keys: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_state: dict[str, Any] | None = None

    def check_loss(self, loss: nn.Module) -> None:
        if "negatives" not in inspect.signature(loss.forward).parameters:
            raise ValueError(
                f"the {self.name!r} sampler supplies extra negatives, but loss "
                f"{type(loss).__name__} has no negatives term (its forward takes no `negatives` "
                f"argument); use it with the default in-batch sampler")

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        model = getattr(model, "module", model)  # a DDP wrapper holds the DualEncoder as .module
        if self.momentum is not None:
            # Key encoders start as exact copies and only ever move by EMA, never by gradient.
            self.image_key = copy.deepcopy(model.image_encoder).requires_grad_(False)
            self.text_key = copy.deepcopy(model.text_encoder).requires_grad_(False)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    @torch.no_grad()
    def _keys(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        model = getattr(model, "module", model)
        for key in (self.image_key, self.text_key):
            key.train(model.training)  # as in MoCo: keys see the same dropout/BN mode as queries
        return self.image_key(batch["images"]).detach(), self.text_key(batch["texts"]).detach()

    @torch.no_grad()
    def _momentum_update(self, model: nn.Module) -> None:
        model = getattr(model, "module", model)
        m = self.momentum
        for key, online in ((self.image_key, model.image_encoder), (self.text_key, model.text_encoder)):
            key_params = list(key.parameters())
            online_params = [p.detach() for p in online.parameters()]
            # θ_k ← m θ_k + (1 − m) θ_q, in one fused pass over all tensors.
            torch._foreach_mul_(key_params, m)
            torch._foreach_add_(key_params, online_params, alpha=1.0 - m)
            # BatchNorm statistics are not averaged: the key encoder's own forward passes update them.

    def _enqueue(self, image_rows: torch.Tensor, text_rows: torch.Tensor) -> None:
        self.image_queue.push(all_gather(image_rows.detach()))
        self.text_queue.push(all_gather(text_rows.detach()))
        if self._pending_ids is not None:
            self.image_id_queue.push(all_gather(self._pending_ids[0]))
            self.text_id_queue.push(all_gather(self._pending_ids[1]))

    def _remember_ids(self, extras: dict[str, Any]) -> FalseNegatives | None:
        """The batch's ``false_negatives`` (when masking), whose ids are queued with this step's keys."""
        fn = extras.get("false_negatives")
        self._pending_ids = None if fn is None else (fn.image_ids, fn.text_ids)
        return fn

    @staticmethod
    def _queued_ids(queue: _Queue, ids: _Queue, fn: FalseNegatives | None) -> torch.Tensor | None:
        if fn is None or queue.rows() is None:
            return None
        if ids.count != queue.count:  # e.g. a queue filled before masking was turned on
            raise ValueError("mask_false_negatives: the queue holds keys without ids")
        return ids.rows()

    def after_step(self, model: nn.Module, batch: dict[str, Any], image_emb: torch.Tensor,
                   text_emb: torch.Tensor) -> None:
        if self.momentum is not None:
            self._momentum_update(model)
            if self._pending_keys is not None:
                self._enqueue(*self._pending_keys)  # keys of this step, enqueued after its loss
        else:
            self._enqueue(image_emb, text_emb)
        self._pending_keys = self._pending_ids = None

    def state_dict(self) -> dict[str, Any]:
        state = {"image_queue": self.image_queue.state_dict(),
                 "text_queue": self.text_queue.state_dict()}
        if self.image_id_queue.count:
            state["image_id_queue"] = self.image_id_queue.state_dict()
            state["text_id_queue"] = self.text_id_queue.state_dict()
        if self.image_key is not None:
            state["image_key"] = self.image_key.state_dict()
            state["text_key"] = self.text_key.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.momentum is not None and self.image_key is None:
            self._pending_state = state  # key encoders exist only after setup(): apply it there
            return
        self._pending_state = None
        self.image_queue.load_state_dict(state["image_queue"])
        self.text_queue.load_state_dict(state["text_queue"])
        if "image_id_queue" in state:
            self.image_id_queue.load_state_dict(state["image_id_queue"])
            self.text_id_queue.load_state_dict(state["text_id_queue"])
        if self.image_key is not None:
            self.image_key.load_state_dict(state["image_key"])
            self.text_key.load_state_dict(state["text_key"])


class MoCo(_MemorySampler):
    """MoCo queue of momentum keys, cross-modal both ways.

    EMA copies (``momentum``) of the image and text encoders encode each batch into keys k; each
    modality keeps a FIFO queue of its last ``size`` keys (gathered from every rank). Image queries q
    are scored against their text key k₊ and the text queue, text queries against their image key and
    the image queue; for ``infonce`` that is MoCo's logits [q·k₊, q·queueᵀ]/τ, target 0, the two
    directions averaged, with the loss's own τ. ``in_batch`` also counts the other keys of the batch
    as negatives (ALBEF-style). Keys are enqueued in ``after_step``, after the loss; any batch size
    works (a batch larger than the queue keeps its last ``size`` keys). The queues and key encoders
    are part of ``state_dict``.
    """

    name = "moco"

    def __init__(self, size: int = 4096, momentum: float = 0.999, in_batch: bool = False,
                 mask_false_negatives: bool = False):
        super().__init__(size, momentum, mask_false_negatives)
        self.in_batch = check_flag("in_batch", in_batch)

    def compute_loss(self, loss, model, batch, image_emb, text_emb, extras):
        _require_pooled(self, image_emb, text_emb)
        key_image, key_text = self._keys(model, batch)
        self._pending_keys = (key_image, key_text)
        fn = self._remember_ids(extras)
        negatives = Negatives(text=self.text_queue.rows(), image=self.image_queue.rows(),
                              text_positive=key_text, image_positive=key_image,
                              in_batch=self.in_batch,
                              text_ids=self._queued_ids(self.text_queue, self.text_id_queue, fn),
                              image_ids=self._queued_ids(self.image_queue, self.image_id_queue, fn))
        return loss(image_emb, text_emb, negatives=negatives, **extras)


class Rerank(_MemorySampler):
    """Hard negatives re-ranked from a candidate pool (after Ma & Collins, 2018).

    For every anchor the pool is the other rows of the global batch plus a FIFO memory of the last
    ``size`` embeddings of the other modality; each candidate is scored by cosine similarity with the
    anchor and only the ``top_n`` most similar (hardest) reach the loss, as ``[B, top_n, D]``
    per-anchor negatives. Without ``momentum`` the memory is a bank of past (detached) online
    embeddings and in-batch candidates keep their gradient; with ``momentum`` positives, in-batch
    candidates and the queue are MoCo momentum keys.

    Cost per step, B local and B_g global rows, K = ``size``: scoring 2·B·(B_g + K)·D multiply-adds
    and a ``topk`` over a B × (B_g + K) matrix per direction (no gradient), plus 2·B·top_n·D memory
    for the selected negatives; the loss then scores B_g × top_n pairs. Everything is batched tensor
    work, no Python loop over anchors.
    """

    name = "rerank"

    def __init__(self, top_n: int = 16, size: int = 4096, momentum: float | None = None,
                 mask_false_negatives: bool = False):
        if top_n < 1:
            raise ValueError(f"top_n must be ≥ 1, got {top_n}")
        super().__init__(size, momentum, mask_false_negatives)
        self.top_n = int(top_n)

    def _hardest(self, anchor: torch.Tensor, batch_pool: torch.Tensor, offset: int,
                 memory: torch.Tensor | None, relevant: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``top_n`` candidates most similar to each anchor, excluding its own positive (and, given
        ``relevant`` ``[B, pool]``, ranking the candidates relevant to the anchor last), with their
        indices into the pool."""
        pool = batch_pool if memory is None else torch.cat([batch_pool, memory.to(batch_pool.dtype)])
        n = min(self.top_n, len(pool) - 1)  # every candidate but the positive, at most
        if n <= 0:
            return pool.new_zeros(len(anchor), 0, pool.shape[1]), torch.zeros(
                len(anchor), 0, dtype=torch.long, device=pool.device)
        with torch.no_grad():  # selection only: the gradient flows through the gathered rows
            a = F.normalize(anchor.float(), dim=-1)
            scores = a @ F.normalize(pool.float(), dim=-1).T
            if relevant is not None:  # below every real score (cosines ≥ −1), above the positive's −∞
                scores = scores.masked_fill(relevant.to(scores.device), -3.0)
            own = offset + torch.arange(len(anchor), device=scores.device)
            scores[torch.arange(len(anchor), device=scores.device), own] = -float("inf")
            index = scores.topk(n, dim=1).indices
        return pool[index], index  # [B, n, D], [B, n]

    def compute_loss(self, loss, model, batch, image_emb, text_emb, extras):
        _require_pooled(self, image_emb, text_emb)
        key_image = key_text = None
        if self.momentum is not None:
            key_image, key_text = self._keys(model, batch)
            self._pending_keys = (key_image, key_text)
        pos_image = image_emb if key_image is None else key_image
        pos_text = text_emb if key_text is None else key_text
        # Global candidates: every rank's positives (with gradient when they are online embeddings).
        all_text, offset = all_gather_with_offset(pos_text)
        all_image = all_gather(pos_image)
        fn = self._remember_ids(extras)
        if fn is None:
            text_neg, _ = self._hardest(image_emb, all_text, offset, self.text_queue.rows())
            image_neg, _ = self._hardest(text_emb, all_image, offset, self.image_queue.rows())
            negatives = Negatives(text=text_neg, image=image_neg, text_positive=key_text,
                                  image_positive=key_image, in_batch=False)
            return loss(image_emb, text_emb, negatives=negatives, **extras)
        # the candidates' ids: the global batch's, then the queue's
        text_ids, image_ids = all_gather(fn.text_ids), all_gather(fn.image_ids)
        queued = self._queued_ids(self.text_queue, self.text_id_queue, fn)
        text_pool_ids = text_ids if queued is None else torch.cat([text_ids, queued.to(text_ids.device)])
        queued = self._queued_ids(self.image_queue, self.image_id_queue, fn)
        image_pool_ids = image_ids if queued is None else torch.cat([image_ids,
                                                                     queued.to(image_ids.device)])
        text_neg, text_index = self._hardest(image_emb, all_text, offset, self.text_queue.rows(),
                                             fn.relevant(text_pool_ids[None, :], fn.image_ids[:, None]))
        image_neg, image_index = self._hardest(text_emb, all_image, offset, self.image_queue.rows(),
                                               fn.relevant(fn.text_ids[:, None], image_pool_ids[None, :]))
        negatives = Negatives(text=text_neg, image=image_neg, text_positive=key_text,
                              image_positive=key_image, in_batch=False,
                              text_ids=text_pool_ids[text_index], image_ids=image_pool_ids[image_index])
        return loss(image_emb, text_emb, negatives=negatives, **extras)


@hookimpl
def register_samplers(register):
    register("in-batch", InBatch)
    register("moco", MoCo)
    register("rerank", Rerank)
