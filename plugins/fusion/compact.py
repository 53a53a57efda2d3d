"""Compact bilinear pooling (MCB, Fukui et al. 2016): the outer product x ⊗ y, approximated in ``dim``
values by count sketches multiplied in the frequency domain (Pham & Pagh 2013's tensor sketch)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from harness_plugins.fusion.fusions import Fusion, check_size


def count_sketch(x: torch.Tensor, h: torch.Tensor, s: torch.Tensor, d: int) -> torch.Tensor:
    """Ψ(x)_j = Σ_{i: h(i) = j} s(i) x_i for x ``[B, n]``, bucket ``h`` ``[n]`` (int64 in [0, d)) and sign
    ``s`` ``[n]`` (±1): ``[B, d]``, linear in x. E_{h,s}⟨Ψ(x), Ψ(z)⟩ = ⟨x, z⟩."""
    return x.new_zeros(x.shape[0], d).index_add(1, h, x * s.to(x.dtype))


def full_precision(t: torch.Tensor):
    """Autocast off around FFTs (no half-precision FFT of arbitrary length on CPU)."""
    device = t.device.type
    if not torch.amp.is_autocast_available(device):
        return contextlib.nullcontext()
    return torch.autocast(device, enabled=False)


def signed_sqrt(z: torch.Tensor, eps: float) -> torch.Tensor:
    """sign(z) · (√(|z| + ε) − √ε): the signed square root, continuous at 0, with a gradient
    1 / (2√(|z| + ε)) that stays finite (≤ 1 / (2√ε)) where the plain one is infinite."""
    return torch.sign(z) * (torch.sqrt(z.abs() + eps) - eps ** 0.5)


class MCB(Fusion):
    """Multimodal compact bilinear pooling (Fukui et al. 2016), output size ``dim`` (default 16,000).

    Ψ_x, Ψ_y: count sketches with fixed random hashes h_x, h_y ∈ [0, dim) and signs s_x, s_y ∈ {±1};
    Φ = FFT⁻¹(FFT(Ψ_x(x)) ∘ FFT(Ψ_y(y))), the circular convolution Ψ_x(x) ⊛ Ψ_y(y) (a complex product
    of the spectra, ``torch.fft.rfft`` / ``irfft``), which is the count sketch of the outer product
    x ⊗ y with hash h_x(i) + h_y(j) mod dim and sign s_x(i) s_y(j): E⟨Φ(x, y), Φ(z, w)⟩ = ⟨x, z⟩⟨y, w⟩.
    With ``normalize`` (default), z = ŝ / ‖ŝ‖ for ŝ = sign(Φ)(√(|Φ| + ε) − √ε) (signed square root, ε =
    ``eps`` keeps its gradient finite at 0); otherwise z = Φ. No trainable parameters.

    Hashes and signs are drawn once from ``seed`` and are buffers: saved in the state dict and identical
    after a reload (never re-drawn at load time).
    """

    def __init__(self, dim: int = 16000, normalize: bool = True, eps: float = 1e-6, seed: int = 0,
                 x_dim: int | None = None, y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        self.output_dim = check_size("dim", dim)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be true or false, got {normalize!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.normalize, self.eps = normalize, float(eps)
        g = torch.Generator().manual_seed(seed)  # its own stream: the run's random draws are untouched
        for side, n in (("x", self.x_dim), ("y", self.y_dim)):
            self.register_buffer(f"hash_{side}", torch.randint(self.output_dim, (n,), generator=g))
            self.register_buffer(f"sign_{side}", torch.randint(2, (n,), generator=g).float() * 2 - 1)

    def _spectrum(self, v: torch.Tensor, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        v = v.to(torch.promote_types(v.dtype, torch.float32))  # FFTs in float32 at least
        return torch.fft.rfft(count_sketch(v, h, s, self.output_dim), n=self.output_dim)

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            return self._spectrum(x, self.hash_x, self.sign_x)

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        with full_precision(y):
            return self._spectrum(y, self.hash_y, self.sign_y)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with full_precision(a):
            phi = torch.fft.irfft(a * b, n=self.output_dim)  # complex product of the spectra
            if not self.normalize:
                return phi
            return F.normalize(signed_sqrt(phi, self.eps), dim=-1)
