"""Relational grounding (Zhang, Choi, Han & Liu 2021): object phrases, embedded by the language stream,
query the image locations through multi-head cross-attention, and a bilinear operator per predicate
scores the relation between two grounded objects.

A method names its heads and the loss finds them by those keys::

    - name: relation
      encoders: {image: {name: small-cnn, pool: none}, text: {name: gru}}
      heads: {grounding: {name: cross-attention, heads: 8}, relation: {name: bilinear-relation, rank: 32}}
      loss: {name: relation, pair_weight: 1.0}

with the ``relation`` evaluator (same ``attention_head`` / ``relation_head`` keys, default
``grounding`` / ``relation``). Heads: :mod:`.relation_heads`; loss: :mod:`.relation_loss`; evaluator:
:mod:`.relation_eval`; shared plumbing: :mod:`.relation_objects`.
"""

from __future__ import annotations

from harness import hookimpl
from harness_plugins.grounding.relation_eval import RelationEvaluator
from harness_plugins.grounding.relation_heads import BilinearRelation, CrossAttentionGrounding
from harness_plugins.grounding.relation_loss import RelationLoss

__all__ = ["BilinearRelation", "CrossAttentionGrounding", "RelationEvaluator", "RelationLoss"]


@hookimpl
def register_heads(register):
    register("cross-attention", CrossAttentionGrounding)
    register("bilinear-relation", BilinearRelation)


@hookimpl
def register_losses(register):
    register("relation", RelationLoss)


@hookimpl
def register_evaluators(register):
    register("relation", RelationEvaluator)
