"""Heads that sit between an encoder and the shared space: the MLP "teacher" of student–teacher encoders
(Podguzova & Nguyen 2020: fully connected layers, leaky ReLU, dropout, ending at the shared size).

An encoder's ``head`` option stacks one on it: ``{name: resnet, depth: 50, head: {name: mlp, hidden:
[1024], activation: leaky_relu, dropout: 0.2}}``; the runner builds it with ``input_dim`` (the encoder's
``output_dim``) and ``embed_dim``. :func:`mlp_layers` is shared with the ``mlp`` encoder.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from harness import hookimpl

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
               "sigmoid": nn.Sigmoid, "elu": nn.ELU, "silu": nn.SiLU}


NORMS = ("none", "batch", "layer")


def mlp_layers(input_dim: int, hidden: Sequence[int], output_dim: int, activation: str = "relu",
               dropout: float = 0.0, negative_slope: float = 0.01, norm: str = "none") -> nn.Sequential:
    """``Linear → [norm] → activation → Dropout`` per hidden width, then a final ``Linear`` to
    ``output_dim`` (no activation after it: the output is an embedding). Clear errors name the
    parameter."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if isinstance(hidden, (str, bytes)) or not all(isinstance(w, int) and w > 0 for w in hidden):
        raise ValueError(f"hidden must be a list of positive layer widths, got {hidden!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    d_in = int(input_dim)
    for width in hidden:
        act = ACTIVATIONS[activation](negative_slope) if activation == "leaky_relu" else ACTIVATIONS[activation]()
        normalize = {"none": [], "batch": [nn.BatchNorm1d(width)], "layer": [nn.LayerNorm(width)]}[norm]
        layers += [nn.Linear(d_in, width), *normalize, act, nn.Dropout(dropout)]
        d_in = width
    layers.append(nn.Linear(d_in, output_dim))
    return nn.Sequential(*layers)


class MLPHead(nn.Module):
    """An MLP from an encoder's output to the shared space (the teacher of a student–teacher encoder).

    z = W_L · φ(… φ(W_1 · x + b_1) …) + b_L, with φ = ``activation`` (``leaky_relu`` with
    ``negative_slope``, relu, gelu, tanh, sigmoid, elu, silu) followed by dropout after every hidden layer
    of ``hidden`` widths; the last layer maps to ``embed_dim`` (``hidden: []`` is a linear projection).
    ``norm`` (``batch`` or ``layer``) normalises each hidden layer before its activation, as SimCLR's
    projection head does (``batch`` needs token-free ``[B, D]`` inputs).
    """

    def __init__(self, hidden: Sequence[int] = (512,), activation: str = "leaky_relu", dropout: float = 0.1,
                 negative_slope: float = 0.01, norm: str = "none", input_dim: int | None = None,
                 embed_dim: int = 64):
        super().__init__()
        if input_dim is None:
            raise ValueError("the mlp head needs input_dim (the encoder's output size; the runner fills it "
                             "in when the head is an encoder's `head` option)")
        self.net = mlp_layers(input_dim, list(hidden), embed_dim, activation, dropout, negative_slope, norm)
        self.input_dim, self.output_dim = int(input_dim), int(embed_dim)

    def forward(self, x):
        return self.net(x)


@hookimpl
def register_heads(register):
    register("mlp", MLPHead)
