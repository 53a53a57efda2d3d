"""Joint representations (the lecture's fusion family): fusion modules that combine two vectors into
one, the matching method that scores a pair with a head on a fusion, and the multimodal autoencoder.

- fusions (``register_fusions``, :mod:`.fusions`, :mod:`.compact`): ``concat``, ``sum``, ``product``,
  ``bilinear``, ``mlb``, ``mutan``, ``mcb``, each ``fusion(x [B, x_dim], y [B, y_dim]) -> [B, out]``;
- the ``matcher`` head and the ``matching`` loss (:mod:`.matching`): fusion + MLP → one logit, binary
  cross-entropy on matches, in-batch and minimal-pair negatives; the logit is the method's pair score;
- the ``multimodal-ae`` loss (:mod:`.autoencoder`): Ngiam et al.'s shared code with decoders for both
  modalities, trained with one modality dropped.
"""

from __future__ import annotations

from harness import hookimpl
from harness_plugins.fusion.autoencoder import MultimodalAutoencoder
from harness_plugins.fusion.compact import MCB
from harness_plugins.fusion.fusions import MLB, Bilinear, Concat, Fusion, Mutan, Product, Sum
from harness_plugins.fusion.matching import MatchingHead, MatchingLoss

__all__ = ["Fusion", "Concat", "Sum", "Product", "Bilinear", "MLB", "Mutan", "MCB", "MatchingHead",
           "MatchingLoss", "MultimodalAutoencoder"]

FUSIONS = {"concat": Concat, "sum": Sum, "product": Product, "bilinear": Bilinear, "mlb": MLB,
           "mutan": Mutan, "mcb": MCB}


@hookimpl
def register_fusions(register):
    for name, factory in FUSIONS.items():
        register(name, factory)


@hookimpl
def register_heads(register):
    register("matcher", MatchingHead)


@hookimpl
def register_losses(register):
    register("matching", MatchingLoss)
    register("multimodal-ae", MultimodalAutoencoder)
