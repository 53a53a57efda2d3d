"""Fusion modules: the lecture's joint representations of two vectors, ``fusion(x, y) -> z``.

Each fusion is one small class with its formula in the docstring, built with ``x_dim`` and ``y_dim``
(the sizes of its two inputs: context parameters the runner fills in from the encoders, explicit in
Python) and ``dim`` where it has an output size or rank. Every fusion factors as
``combine(embed_x(x), embed_y(y))``: the per-side parts are computed once per item, so that scoring
every image against every text (a matching head's pair scores) repeats only ``combine`` per pair.
"""

from __future__ import annotations

import torch
from torch import nn


def check_size(name: str, value: object) -> int:
    """``value`` as an int, or a ``ValueError`` naming the parameter unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Fusion(nn.Module):
    """Base of the fusions: ``forward(x [B, x_dim], y [B, y_dim]) -> [B, output_dim]``, computed as
    ``combine(embed_x(x), embed_y(y))``; ``embed_*`` may return any per-item tensor (first axis B)."""

    def __init__(self, x_dim: int | None, y_dim: int | None):
        super().__init__()
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim)):
            if value is None:
                raise ValueError(f"a fusion needs {name}, the size of its {'first' if name == 'x_dim' else 'second'} "
                                 "input (the runner fills it in from the encoders; in Python pass it: "
                                 "harness.create('fusion', NAME, x_dim=…, y_dim=…))")
        self.x_dim, self.y_dim = check_size("x_dim", x_dim), check_size("y_dim", y_dim)
        self.output_dim = 0  # set by each fusion

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or y.dim() != 2 or x.shape[1] != self.x_dim or y.shape[1] != self.y_dim:
            raise ValueError(f"{type(self).__name__} fuses x [B, {self.x_dim}] with y [B, {self.y_dim}]; got "
                             f"{tuple(x.shape)} and {tuple(y.shape)} (pooled vectors of those sizes)")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
        return self.combine(self.embed_x(x), self.embed_y(y))


class Concat(Fusion):
    """Concatenation (early fusion): z = [x; y], of size x_dim + y_dim. No parameters."""

    def __init__(self, x_dim: int | None = None, y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        self.output_dim = self.x_dim + self.y_dim

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=-1)


class Sum(Fusion):
    """Element-wise sum after linear maps to a common size: z = W_x x + W_y y + b, z ∈ ℝ^dim."""

    def __init__(self, dim: int = 512, x_dim: int | None = None, y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        self.output_dim = check_size("dim", dim)
        self.proj_x = nn.Linear(self.x_dim, self.output_dim)
        self.proj_y = nn.Linear(self.y_dim, self.output_dim, bias=False)  # one bias is enough

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_x(x)

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj_y(y)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Product(Fusion):
    """Element-wise (Hadamard) product after linear maps: z = (W_x x + b_x) ∘ (W_y y + b_y), z ∈ ℝ^dim."""

    def __init__(self, dim: int = 512, x_dim: int | None = None, y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        self.output_dim = check_size("dim", dim)
        self.proj_x = nn.Linear(self.x_dim, self.output_dim)
        self.proj_y = nn.Linear(self.y_dim, self.output_dim)

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_x(x)

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj_y(y)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Bilinear(Fusion):
    """Full bilinear pooling: z_k = xᵀ W_k y + b_k for k = 1…dim (``torch.nn.Bilinear``).

    Every element of x interacts with every element of y, at x_dim · y_dim · dim weights (2,048-d inputs
    and 16,000 outputs would need 67 billion): the reason for the low-rank and compact fusions below.
    """

    def __init__(self, dim: int = 64, x_dim: int | None = None, y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        self.output_dim = check_size("dim", dim)
        self.bilinear = nn.Bilinear(self.x_dim, self.y_dim, self.output_dim)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.bilinear(a, b)


ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "none": lambda t: t}


class MLB(Fusion):
    """Low-rank bilinear pooling (MLB, Kim et al. 2017): z = Pᵀ(σ(Uᵀx + b_U) ∘ σ(Vᵀy + b_V)) + b_P.

    Rank ``dim`` (default 1,200, the paper's): each output is a bilinear form xᵀ(U diag(p_k) Vᵀ)y of
    rank ≤ dim (up to σ and the biases), at (x_dim + y_dim) · dim weights. σ = ``activation`` (``tanh``,
    the paper's, ``relu`` or ``none``). ``out`` sets P's output size; unset (the default), P = I and
    z ∈ ℝ^dim (a head after the fusion projects anyway).
    """

    def __init__(self, dim: int = 1200, out: int | None = None, activation: str = "tanh",
                 x_dim: int | None = None, y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.rank = check_size("dim", dim)
        self.activation = activation
        self.U = nn.Linear(self.x_dim, self.rank)
        self.V = nn.Linear(self.y_dim, self.rank)
        self.P = nn.Linear(self.rank, check_size("out", out)) if out is not None else None
        self.output_dim = self.rank if out is None else int(out)

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](self.U(x))

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](self.V(y))

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = a * b
        return z if self.P is None else self.P(z)


class Mutan(Fusion):
    """Tucker fusion with rank-constrained core (MUTAN, Ben-younes et al. 2017):
    x̃ = tanh(W_x x + b_x), ỹ = tanh(W_y y + b_y) (size ``hidden``), z = Σ_{r=1}^R (W_r x̃ + c_r) ∘ (V_r ỹ + d_r).

    z ∈ ℝ^dim (default 510, the paper's t_o; ``hidden`` 310 its t_q = t_v, ``rank`` R = 10). Each slice
    of the Tucker core has rank ≤ R; with R = 1 the fusion is the Hadamard product of two projections of
    x̃ and ỹ, i.e. MLB (``activation: none``, P = I) applied to x̃ and ỹ with U = W_1, V = V_1.
    """

    def __init__(self, dim: int = 510, rank: int = 10, hidden: int = 310, x_dim: int | None = None,
                 y_dim: int | None = None):
        super().__init__(x_dim, y_dim)
        self.output_dim, self.rank = check_size("dim", dim), check_size("rank", rank)
        self.hidden = check_size("hidden", hidden)
        self.in_x = nn.Linear(self.x_dim, self.hidden)
        self.in_y = nn.Linear(self.y_dim, self.hidden)
        # the R projections of each side as one layer: rows r·dim … (r+1)·dim − 1 are W_r (resp. V_r)
        self.proj_x = nn.Linear(self.hidden, self.rank * self.output_dim)
        self.proj_y = nn.Linear(self.hidden, self.rank * self.output_dim)

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_x(torch.tanh(self.in_x(x))).unflatten(-1, (self.rank, self.output_dim))

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj_y(torch.tanh(self.in_y(y))).unflatten(-1, (self.rank, self.output_dim))

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(-2)  # Σ_r over [B, R, dim]
