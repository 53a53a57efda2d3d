"""What a method becomes after training: something that embeds images and texts for evaluators."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


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


class DualEncoder(nn.Module):
    """An image encoder and a text encoder trained jointly; ``forward`` embeds a prepared pair batch."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, *, batch_size: int = 512,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.device = torch.device(device)

    def forward(self, images: Any, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_encoder(images), self.text_encoder(texts)

    @torch.no_grad()
    def _embed(self, encoder: nn.Module, items: Any) -> torch.Tensor:
        was_training = encoder.training
        encoder.eval()
        chunks = []
        for start in range(0, len(items), self.batch_size):
            index = np.arange(start, min(start + self.batch_size, len(items)))
            prepared = to_device(encoder.prepare(take(items, index)), self.device)
            chunks.append(encoder(prepared).float())
        encoder.train(was_training)
        if not chunks:
            return torch.empty(0, getattr(encoder, "output_dim", 0), device=self.device)
        return torch.cat(chunks)

    def embed_images(self, images: Any) -> torch.Tensor:
        return self._embed(self.image_encoder, images)

    def embed_texts(self, texts: Any) -> torch.Tensor:
        return self._embed(self.text_encoder, texts)


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
