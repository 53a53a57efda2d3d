"""The multimodal autoencoder (Ngiam et al. 2011): a shared code from both modalities, decoders that
reconstruct both, trained with one modality often missing, so that either modality alone embeds."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import DatasetInfo
from harness.model import to_device
from harness_plugins.encoders.heads import mlp_layers
from harness_plugins.encoders.small import BagOfWords


class MultimodalAutoencoder(nn.Module):
    """Multimodal autoencoder loss (Ngiam et al. 2011) on the method's encoders f (image) and g (text).

    h = (m_x f(x) + m_y g(y)) / (m_x + m_y),   L = w_x ‖D_x(h) − t_x‖²/d_x + w_y ‖D_y(h) − t_y‖²/d_y

    (mean over the batch). Per pair, with probability ``p_drop`` one modality, either with equal chance,
    is missing (m = 0), otherwise both are present; both are always reconstructed, so the code of one
    modality alone must carry the other (Ngiam et al. train a third of the data with each modality
    alone: ``p_drop`` = 2/3, the default). The shared layer is linear — the mean of the present
    modalities' codes — so one modality's code alone is exactly its encoder's output: evaluators embed
    each side alone, and retrieval compares h(x, ·) with h(·, y) by cosine.

    The decoders D_x, D_y (MLPs from ``embed_dim`` through ``hidden``, ``activation``) belong to this
    loss. Targets t are fixed descriptions of the raw modalities, never the learned codes (which would
    collapse): t_x is the prepared image average-pooled to ``image_size``² per channel (a feature-vector
    view as it is); t_y the caption's word counts over the dataset vocabulary (a feature-vector text
    view as it is). d_x, d_y are their sizes: each term is a mean squared error per feature.
    """

    def __init__(self, p_drop: float = 2 / 3, hidden: Sequence[int] = (256,), activation: str = "relu",
                 image_size: int = 16, image_weight: float = 1.0, text_weight: float = 1.0,
                 embed_dim: int = 64, dataset_info: DatasetInfo | None = None):
        super().__init__()
        if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float)) or not 0 <= p_drop <= 1:
            raise ValueError(f"p_drop must be a probability in [0, 1], got {p_drop!r}")
        for name, value in (("image_weight", image_weight), ("text_weight", text_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if dataset_info is None or not dataset_info.image_shape:
            raise ValueError("multimodal-ae needs the dataset's info (image shape, vocabulary) to size "
                             "its decoders")
        shape = tuple(dataset_info.image_shape)
        self.image_size = image_size
        image_dim = shape[0] * image_size ** 2 if len(shape) == 3 else math.prod(shape)
        if dataset_info.text_kind == "vector":
            self.words = None
            text_dim = int(dataset_info.text_dim or 0)
        else:
            self.words = BagOfWords(dataset_info)  # fixed: no parameters
            text_dim = self.words.output_dim
        self.p_drop, self.weights = float(p_drop), (float(image_weight), float(text_weight))
        self.decoder_image = mlp_layers(embed_dim, list(hidden), image_dim, activation)
        self.decoder_text = mlp_layers(embed_dim, list(hidden), text_dim, activation)
        self.dims = (image_dim, text_dim)

    def targets(self, images: torch.Tensor, texts: Any = None,
                captions: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t_x from the prepared images, t_y from the captions (or the prepared feature-vector texts)."""
        images = torch.as_tensor(images)
        images = images.to(torch.promote_types(images.dtype, torch.float32))  # uint8 or bf16: float32
        if images.dim() == 4:
            images = F.adaptive_avg_pool2d(images, self.image_size)
        t_x = images.flatten(1)
        if self.words is None:
            texts = torch.as_tensor(texts)
            t_y = texts.flatten(1).to(torch.promote_types(texts.dtype, torch.float32))
        else:
            if captions is None:
                raise ValueError("multimodal-ae reconstructs the captions' words: it needs the captions")
            t_y = self.words(to_device(self.words.prepare(list(captions)), t_x.device))
        for name, t, d in (("image", t_x, self.dims[0]), ("text", t_y, self.dims[1])):
            if t.shape[1] != d:
                raise ValueError(f"multimodal-ae: the {name} decoder outputs {d} values but the {name} "
                                 f"target has {t.shape[1]} (the image encoder's prepared images must keep "
                                 f"the dataset's channels)")
        return t_x, t_y

    def reconstruct(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_x(h), D_y(h)): both modalities reconstructed from a shared code."""
        return self.decoder_image(code), self.decoder_text(code)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, images: Any, texts: Any = None,
                captions: Sequence[str] | None = None) -> torch.Tensor:
        if image_emb.dim() != 2 or text_emb.shape != image_emb.shape:
            raise ValueError(f"multimodal-ae needs pooled codes of one size from both encoders, got "
                             f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
        t_x, t_y = self.targets(images, texts, captions)
        u = torch.rand(image_emb.shape[0]).to(image_emb.device)
        keep_x = (u >= self.p_drop / 2).to(image_emb.dtype)[:, None]  # u < p/2: image missing
        keep_y = ((u < self.p_drop / 2) | (u >= self.p_drop)).to(image_emb.dtype)[:, None]  # p/2 ≤ u < p: text
        code = (keep_x * image_emb + keep_y * text_emb) / (keep_x + keep_y)
        recon_x, recon_y = self.reconstruct(code)
        # squared errors in float32 at least (bf16 autocast would round a mean over thousands of values)
        return (self.weights[0] * F.mse_loss(recon_x.to(t_x.dtype), t_x)
                + self.weights[1] * F.mse_loss(recon_y.to(t_y.dtype), t_y))

