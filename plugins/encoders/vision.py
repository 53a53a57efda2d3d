"""Pretrained-architecture image encoders: VGG-16 conv features with self-attention over locations
(the visual stream of VG-BERT, Zhang et al. 2021). Weights come from local files only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness import hookimpl
from harness.components import Encoder, TokenFeatures
from harness.data import DatasetInfo

from .small import PositionalAttention, check_choice

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VGG_CHANNELS = 512  # channels of VGG-16's last conv block
VGG_STRIDE = 16  # four 2×2 max-pools before the last conv block


def vgg16_features(init: bool = True) -> nn.Sequential:
    """torchvision's VGG-16 ``.features`` without its last max-pool (state-dict keys ``0.weight`` …
    ``28.bias`` as in ``vgg16().features``), initialised as torchvision's VGG does (``init``; otherwise
    left uninitialised for loading). Built from torchvision's own layer list on the meta device, so
    that neither its 100M-parameter classifier nor a discarded default init costs time."""
    from torchvision.models.vgg import cfgs, make_layers

    with torch.device("meta"):
        features = make_layers(cfgs["D"])[:-1]
    features = features.to_empty(device="cpu")
    for m in features.modules():
        if isinstance(m, nn.Conv2d) and init:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def read_state_dict(path: str | Path, param: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` file or a ``torch.save`` file (read with
    ``weights_only=True``: no code runs); errors name ``param``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{param}: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ValueError(f"{param}: reading {path.name} needs the safetensors package") from None
    except Exception as exc:  # unpickling, zip and header errors all mean "not a state dict file"
        raise ValueError(f"{param}: cannot read {path} as a state dict "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{param}: {path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_vgg16_features(features: nn.Sequential, path: str | Path) -> None:
    """Load a torchvision VGG-16 state dict (the whole model, whose ``features.*`` are used, or
    ``.features`` alone) into ``features``; a clear error naming ``weights`` when it does not fit."""
    state = read_state_dict(path)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    expected = features.state_dict()
    missing = sorted(set(expected) - set(state), key=_layer_order)
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = [f"{what}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}"
                    for what, items in (("missing", missing), ("unexpected", unexpected),
                                        ("wrong shape", shapes)) if items]
        raise ValueError(f"weights: {path} is not a torchvision VGG-16 state dict ({'; '.join(problems)})")
    features.load_state_dict(state)


def _layer_order(key: str) -> tuple[int, str]:
    index, _, rest = key.partition(".")
    return (int(index) if index.isdigit() else -1, rest)


class VGG16(Encoder):
    """VGG-16 conv features with self-attention over their H/16×W/16 locations (VG-BERT's visual stream).

    The convs (without the last max-pool) are followed by a 1×1 projection to ``embed_dim`` and a
    learned position embedding. ``weights``: null trains the convs from scratch; otherwise a local
    torchvision VGG-16 state dict (``.pth`` via ``torch.load(weights_only=True)``, or
    ``.safetensors``), of the whole model or of ``.features`` only. ``freeze`` (default: true when
    ``weights`` are given) keeps the convs fixed: no gradient, eval mode. ``attention_layers`` post-LN
    transformer layers (``heads`` must divide ``embed_dim``; FFN 4×embed_dim) follow. ``pool``:
    ``none`` returns the locations as :class:`TokenFeatures` (match-map grounding), ``mean`` their
    average ``[B, embed_dim]``.
    """

    modality = "image"

    def __init__(self, embed_dim: int = 64, weights: str | None = None, freeze: bool | None = None,
                 attention_layers: int = 1, heads: int = 8, dropout: float = 0.1, pool: str = "none",
                 dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("pool", pool, ("none", "mean"))
        shape = (tuple(dataset_info.image_shape) if dataset_info and dataset_info.image_shape
                 else (3, 224, 224))
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"vgg16 needs RGB or grayscale images shaped (C, H, W); "
                             f"this dataset's are {shape}")
        height, width = shape[1] // VGG_STRIDE, shape[2] // VGG_STRIDE
        if not height or not width:
            raise ValueError(f"vgg16 needs images of at least {VGG_STRIDE}×{VGG_STRIDE} pixels; got {shape}")
        self.features = vgg16_features(init=weights is None)
        if weights is not None:
            load_vgg16_features(self.features, weights)
        self.frozen = weights is not None if freeze is None else bool(freeze)
        self.features.requires_grad_(not self.frozen)
        self.project = nn.Conv2d(VGG_CHANNELS, embed_dim, 1)
        self.attention = PositionalAttention(height * width, embed_dim, attention_layers, heads, dropout)
        self.pool = pool
        self.num_locations = height * width
        self.output_dim = embed_dim
        self.train()

    def train(self, mode: bool = True) -> "VGG16":
        """Frozen convs stay in eval mode whatever the rest of the model does."""
        super().train(mode)
        if self.frozen:
            self.features.eval()
        return self

    def prepare(self, raw) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` (float input: already in [0, 1]) → ImageNet-normalised RGB floats."""
        x = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:  # grayscale: the same channel three times
            x = x.expand(-1, 3, -1, -1)
        return (x - IMAGENET_MEAN) / IMAGENET_STD

    def forward(self, images: torch.Tensor) -> torch.Tensor | TokenFeatures:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):  # no activations kept
            grid = self.features(images)
        x = self.attention(self.project(grid).flatten(2).transpose(1, 2))  # [B, h·w, D]
        return x.mean(1) if self.pool == "mean" else TokenFeatures(x)


@hookimpl
def register_encoders(register):
    register("vgg16", VGG16)
