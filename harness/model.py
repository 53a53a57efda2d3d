"""What a method becomes after training: something that embeds images and texts for evaluators."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.components import TokenFeatures
from harness.distributed import gather, is_distributed, shard, world_size
from harness.loader import prepared_chunks
from harness.sources import LazySource, SourceRows


def to_device(value: Any, device: torch.device) -> Any:
    """Move tensors (possibly nested in dicts/lists/tuples, e.g. tokenizer output) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def take(items: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of a tensor, array or list."""
    if isinstance(items, (list, tuple)):
        return [items[i] for i in index]
    if isinstance(items, torch.Tensor):
        return items[torch.as_tensor(index, dtype=torch.long)]
    return items[index]


#: pair scores are computed in blocks of at most this many image × text pairs (bounded memory)
SCORE_BLOCK_PAIRS = 1 << 18


def cosine_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``[N_images, N_texts]`` cosine similarities of pooled embeddings (a zero vector scores 0)."""
    return F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T


def blockwise_scores(score_fn: Callable[[Any, Any], torch.Tensor], image_emb: Any, text_emb: Any,
                     block_pairs: int = SCORE_BLOCK_PAIRS) -> torch.Tensor:
    """``score_fn`` over blocks of images × texts (rows of tensors or :class:`TokenFeatures`), assembled
    into the ``[N_images, N_texts]`` matrix: only one block's intermediate values live at a time."""
    n_img, n_txt = len(image_emb), len(text_emb)
    text_block = min(max(n_txt, 1), 1024)
    image_block = max(1, block_pairs // text_block)
    out = None
    for i0 in range(0, n_img, image_block):
        for t0 in range(0, n_txt, text_block):
            block = score_fn(image_emb[i0:i0 + image_block], text_emb[t0:t0 + text_block]).float()
            if out is None:
                out = torch.empty(n_img, n_txt, dtype=torch.float32, device=block.device)
            out[i0:i0 + block.shape[0], t0:t0 + block.shape[1]] = block
    return out if out is not None else torch.empty(n_img, n_txt)


class HeadedEncoder(nn.Module):
    """An encoder (``base``: the student) followed by a head (``head``: the teacher, e.g. an MLP to
    ``embed_dim``), built by the runner from an encoder's ``head`` option. ``prepare`` is the base's;
    token features go through the head token by token."""

    def __init__(self, base: nn.Module, head: nn.Module):
        super().__init__()
        self.base, self.head = base, head
        self.modality = getattr(base, "modality", "any")
        self.trainable = getattr(base, "trainable", True) or any(p.requires_grad for p in head.parameters())
        self.output_dim = int(getattr(head, "output_dim"))

    def prepare(self, raw: Any) -> Any:
        return self.base.prepare(raw)

    def forward(self, batch: Any) -> Any:
        out = self.base(batch)
        if isinstance(out, TokenFeatures):
            return out.map(self.head)
        return self.head(out)


class DualEncoder(nn.Module):
    """An image encoder and a text encoder trained jointly; ``forward`` embeds a prepared pair batch.

    ``scorer`` (set by the runner from a loss that defines ``pair_scores``) replaces the cosine of
    pooled vectors as the method's pair score; ``heads`` holds trainable task heads (relation
    modules), trained and saved with the encoders."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, *, batch_size: int = 512,
                 device: torch.device | str = "cpu", workers: int | str = "auto"):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.heads = nn.ModuleDict()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.workers = workers  # data workers that decode and prepare evaluation batches (train.workers)
        self.scorer: Callable[[Any, Any], torch.Tensor] | None = None

    def forward(self, images: Any, texts: Any) -> tuple[Any, Any]:
        return self.image_encoder(images), self.text_encoder(texts)

    @property
    def cosine_scores(self) -> bool:
        return self.scorer is None

    @torch.no_grad()
    def _embed(self, encoder: nn.Module, items: Any) -> Any:
        was_training = encoder.training
        encoder.eval()
        chunks = []
        for prepared in prepared_chunks(items, encoder.prepare, self.batch_size, self.workers, self.device):
            chunks.append(encoder(to_device(prepared, self.device)).float())
        encoder.train(was_training)
        if not chunks:
            return torch.empty(0, getattr(encoder, "output_dim", 0), device=self.device)
        if isinstance(chunks[0], TokenFeatures):
            return TokenFeatures.cat(chunks)
        return torch.cat(chunks)

    def _embed_all(self, encoder: nn.Module, items: Any) -> Any:
        """Every item embedded; under DDP each rank embeds its shard and the shards are gathered."""
        if not is_distributed() or len(items) < world_size():  # a rank with no rows would skip the gather
            return self._embed(encoder, items)
        rows = shard(len(items))
        if isinstance(items, LazySource):  # decoded chunk by chunk, like the whole split
            mine = SourceRows(items, rows.start, rows.stop)
        else:
            mine = take(items, np.arange(rows.start, rows.stop))
        return gather(self._embed(encoder, mine))

    def embed_images(self, images: Any) -> Any:
        return self._embed_all(self.image_encoder, images)

    def embed_texts(self, texts: Any) -> Any:
        return self._embed_all(self.text_encoder, texts)

    @torch.no_grad()
    def score(self, image_emb: Any, text_emb: Any) -> torch.Tensor:
        if self.scorer is None:
            if isinstance(image_emb, TokenFeatures) or isinstance(text_emb, TokenFeatures):
                raise ValueError("the encoders return token features but the method defines no pair "
                                 "score (use a loss with pair_scores, e.g. matchmap, or pooled encoders)")
            return blockwise_scores(cosine_scores, image_emb, text_emb)
        return blockwise_scores(self.scorer, image_emb, text_emb)


class EstimatorModel:
    """A closed-form method: fixed encoders (or raw features) followed by a fitted estimator.

    Each side is projected on its own: estimators whose ``transform(X, Y)`` is separable per view (linear
    and kernel CCA are) get a zero placeholder for the other view; an estimator may instead define
    ``transform_x(X)`` / ``transform_y(Y)``.
    """

    def __init__(self, features: DualEncoder, estimator: Any):
        self.features = features
        self.estimator = estimator
        self._dims: tuple[int, int] | None = None

    def fit(self, images: Any, texts: Any, text_to_image: np.ndarray) -> "EstimatorModel":
        X = self.features.embed_images(images).double().cpu().numpy()[text_to_image]
        Y = self.features.embed_texts(texts).double().cpu().numpy()
        self._dims = (X.shape[1], Y.shape[1])
        self.estimator.fit(X, Y)
        return self

    def _project(self, side: int, features: torch.Tensor) -> torch.Tensor:
        F = features.double().cpu().numpy()
        own = getattr(self.estimator, "transform_x" if side == 0 else "transform_y", None)
        if own is not None:
            out = own(F)
        else:
            other = np.zeros((len(F), self._dims[1 - side]))
            out = self.estimator.transform(*((F, other) if side == 0 else (other, F)))[side]
        return torch.as_tensor(np.asarray(out), dtype=torch.float32)

    def embed_images(self, images: Any) -> torch.Tensor:
        return self._project(0, self.features.embed_images(images))

    def embed_texts(self, texts: Any) -> torch.Tensor:
        return self._project(1, self.features.embed_texts(texts))

    cosine_scores = True

    def score(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return blockwise_scores(cosine_scores, image_emb, text_emb)
