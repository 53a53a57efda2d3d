"""The Deep CCA and DCCAE losses (notation in :mod:`harness_plugins.cca`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from harness_plugins.contrastive.scores import _full_precision

# --- Deep CCA loss ------------------------------------------------------------------------------------


class DCCALoss(nn.Module):
    """Deep CCA objective (Andrew et al. 2013): minus the sum of the top k singular values of T.

    L = −Σᵢ₌₁ᵏ σᵢ(T) on the batch, Σ₁₁, Σ₂₂ the (n−1)-normalised covariances of the centred outputs
    plus reg·I. T is formed with Cholesky factors, T' = L₁⁻¹ Σ₁₂ L₂⁻ᵀ (Σ = LLᵀ), which has the singular
    values of Σ₁₁^{-1/2} Σ₁₂ Σ₂₂^{-1/2} (L⁻¹Σ^{1/2} is orthogonal). This keeps the gradient finite
    where the eigendecomposition route is not: the Cholesky backward has no 1/(λᵢ − λⱼ) terms (already
    whitened outputs have all-equal eigenvalues), and the singular values' gradient U diag(1ₖ) Vᵀ has
    none either (perfectly correlated views have all-equal σ). With reg > 0 it is also finite when the
    batch is smaller than the output dimension. At reg = 0 on a well-conditioned batch −L equals the
    ``linear-cca`` total correlation of that batch.

    A tiny floor eps(dtype)·tr(Σ) is added with reg so Cholesky never sees an exactly singular matrix;
    if a factorisation still fails the loss is NaN (the runner marks the run diverged) rather than
    raising mid-epoch. Half-precision inputs are computed in float32, with autocast switched off: a
    bf16 autocast would otherwise run the covariance products in bf16 (−7.63 instead of −8.63 measured on
    1000 × 10 outputs).

    Note the minibatch bias: the batch estimate of the total correlation is biased upwards — for two
    independent d-dimensional views and batch B it is about 0.85·d·√(d/B) while d ≪ B (2.7 for d = 10,
    B = 100) and tends to d as B approaches d — so use large batches or full-batch L-BFGS.
    """

    def __init__(self, k: int | None = None, reg: float = 1e-3):
        super().__init__()
        if k is not None and not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be None (all components) or a positive integer, got {k!r}")
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.k = k
        self.reg = reg

    def _factor(self, H: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        S = H.T @ H / (n - 1)
        floor = torch.finfo(S.dtype).eps * torch.diagonal(S).sum().detach()
        S = S + (self.reg + floor) * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
        L, info = torch.linalg.cholesky_ex(S)
        return L, info

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32)
        H1, H2 = image_emb.to(dtype), text_emb.to(dtype)
        if H1.ndim != 2 or H2.ndim != 2 or H1.shape[0] != H2.shape[0]:
            raise ValueError(f"dcca expects two [B, D] tensors with the same B, got "
                             f"{tuple(H1.shape)} and {tuple(H2.shape)}")
        n = H1.shape[0]
        if n < 2:
            raise ValueError("dcca needs a batch of at least 2 pairs")
        H1 = H1 - H1.mean(0)
        H2 = H2 - H2.mean(0)
        L1, info1 = self._factor(H1, n)
        L2, info2 = self._factor(H2, n)
        S12 = H1.T @ H2 / (n - 1)
        T = torch.linalg.solve_triangular(L1, S12, upper=False)  # L₁⁻¹ Σ₁₂
        T = torch.linalg.solve_triangular(L2, T.T, upper=False).T  # (L₁⁻¹ Σ₁₂) L₂⁻ᵀ
        sigma = torch.linalg.svdvals(T)
        k = sigma.shape[0] if self.k is None else min(self.k, sigma.shape[0])
        loss = -sigma[:k].sum()
        # No host sync: a failed factorisation turns the loss into NaN instead of raising.
        ok = (info1 == 0) & (info2 == 0)
        return torch.where(ok, loss, torch.full_like(loss, math.nan))


class DCCAELoss(nn.Module):
    """Deep CCA autoencoders (DCCAE, Wang et al. 2015): Deep CCA plus a decoder reconstructing each view.

    L = −Σᵢ₌₁ᵏ σᵢ(T(f(X), g(Y))) + λ · (1/n) Σⱼ (‖xⱼ − p(f(xⱼ))‖² + ‖yⱼ − q(g(yⱼ))‖²)

    The first term is the ``dcca`` loss (same ``k`` and ``reg``); ‖·‖² sums over the input features and
    the mean is over the n pairs of the batch, so λ = ``lambda_recon`` weighs a per-sample squared error
    in the units of the prepared inputs (``images``/``texts``, flattened to [n, d]). The decoders p and q
    belong to the loss (their weights are trained with the encoders): MLPs from the embedding
    (``embed_dim``) through ``hidden`` to the view's input size — ``image_dim`` and ``text_dim``, by
    default prod(``image_shape``) and ``text_dim`` of a dataset whose two views are feature vectors —
    with ``activation`` between layers and a linear output (``output: sigmoid`` for inputs in [0, 1]).
    λ = 0 is Deep CCA with idle decoders; large λ makes the embeddings autoencoder codes.
    """

    def __init__(self, lambda_recon: float = 1e-3, hidden: list[int] | tuple[int, ...] = (256,),
                 activation: str = "relu", output: str = "linear", k: int | None = None,
                 reg: float = 1e-3, image_dim: int | None = None, text_dim: int | None = None,
                 embed_dim: int = 64, dataset_info: Any = None):
        super().__init__()
        if not lambda_recon >= 0:
            raise ValueError(f"lambda_recon must be >= 0, got {lambda_recon}")
        acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
        if output not in ("linear", "sigmoid"):
            raise ValueError(f"output must be 'linear' or 'sigmoid', got {output!r}")
        if image_dim is None and dataset_info is not None and dataset_info.image_shape:
            image_dim = int(np.prod(dataset_info.image_shape))
        if text_dim is None and dataset_info is not None and dataset_info.text_kind == "vector":
            text_dim = dataset_info.text_dim
        if not image_dim or not text_dim:
            raise ValueError("dccae reconstructs both views, so it needs their sizes: a dataset whose "
                             "views are feature vectors (image_shape, text_dim) or image_dim and text_dim")
        self.dcca = DCCALoss(k=k, reg=reg)
        self.lambda_recon = float(lambda_recon)
        self.input_dims = (int(image_dim), int(text_dim))

        def decoder(d_out: int) -> nn.Sequential:
            layers, d_in = [], int(embed_dim)
            for width in hidden:
                layers += [nn.Linear(d_in, int(width)), acts[activation]()]
                d_in = int(width)
            layers.append(nn.Linear(d_in, d_out))
            if output == "sigmoid":
                layers.append(nn.Sigmoid())
            return nn.Sequential(*layers)

        self.decoder_image = decoder(self.input_dims[0])
        self.decoder_text = decoder(self.input_dims[1])

    @staticmethod
    def _squared_error(decoder: nn.Module, emb: torch.Tensor, target: torch.Tensor, d: int,
                       view: str) -> torch.Tensor:
        target = torch.as_tensor(target).flatten(1)
        if target.shape[1] != d:
            raise ValueError(f"dccae: the {view} decoder outputs {d} features but the prepared {view} "
                             f"inputs have {target.shape[1]}")
        recon = decoder(emb.to(decoder[0].weight.dtype))  # e.g. bf16 outputs into a float32 decoder
        # The error summed over d features in float32 at least, whatever the decoder's dtype.
        dtype = torch.promote_types(recon.dtype, torch.float32)
        return (target.to(dtype) - recon.to(dtype)).pow(2).sum(1).mean()

    @_full_precision  # the decoders too: the term is a sum of d squared errors, imprecise in bf16
    def reconstruction(self, image_emb: torch.Tensor, text_emb: torch.Tensor, images: torch.Tensor,
                       texts: torch.Tensor) -> torch.Tensor:
        """(1/n) Σⱼ ‖xⱼ − p(f(xⱼ))‖² + ‖yⱼ − q(g(yⱼ))‖² (the term λ multiplies)."""
        return (self._squared_error(self.decoder_image, image_emb, images, self.input_dims[0], "image")
                + self._squared_error(self.decoder_text, text_emb, texts, self.input_dims[1], "text"))

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, images: torch.Tensor,
                texts: torch.Tensor) -> torch.Tensor:
        corr = self.dcca(image_emb, text_emb)
        if self.lambda_recon == 0:
            return corr
        return corr + self.lambda_recon * self.reconstruction(image_emb, text_emb, images, texts)
