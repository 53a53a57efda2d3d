"""The matching method: a head fuses the two pooled encoder outputs and scores the pair with one logit,
trained with binary cross-entropy on matching pairs, in-batch negatives and minimal-pair hard negatives.

A method names the head and the loss finds it by that key::

    - name: match-mlb
      heads: {match: {name: matcher, fusion: {name: mlb, dim: 256}, hidden: [64]}}
      loss: {name: matching, negatives: 3, hard_negatives: true}

After training the head's logit is the method's pair score: retrieval, zero-shot, minimal pairs and
matching score every (image, text) pair they compare with it — N_images × N_texts evaluations of the
fusion's ``combine`` and the MLP (each side's projections are computed once), in bounded chunks. That
is the price of a joint representation: 1,000 test images × 5,000 captions are 5 million head
evaluations, where a dual encoder needs one matrix product.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.components import FalseNegatives, TokenFeatures
from harness.errors import UnknownComponentError
from harness.model import to_device
from harness_plugins.contrastive.scores import check_flag
from harness_plugins.datasets.shapes_relevance import caption_relevance
from harness_plugins.encoders.heads import mlp_layers
from harness_plugins.evaluators.minimal_pairs import KINDS, SCENE_EXTRAS, edit_candidates

#: bytes of intermediate values per chunk when a head scores a grid of pairs
PAIR_CHUNK_BYTES = 64 << 20


def build_fusion(spec: Any, x_dim: int | None, y_dim: int | None) -> nn.Module:
    """A registered fusion from ``{name: …, <params>}`` (or a bare name), with ``x_dim`` / ``y_dim``.
    Errors name the field under ``fusion`` (``fusion.name``, ``fusion.dim``)."""
    import harness

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"fusion must be a registered fusion's name or {{name: …, <params>}}, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    given = sorted({"x_dim", "y_dim"} & set(params))
    if given:
        raise UnknownComponentError(f"{given[0]} is filled in from the encoders' output sizes; leave it out",
                                    field=f"fusion.{given[0]}")
    try:
        return harness.create("fusion", spec["name"], x_dim=x_dim, y_dim=y_dim, **params)
    except UnknownComponentError as exc:
        raise UnknownComponentError(exc.message, field=f"fusion.{exc.field or 'name'}") from None
    except ValueError as exc:
        raise ValueError(f"fusion {spec['name']!r}: {exc}") from None


def _pooled(value: Any, side: str) -> torch.Tensor:
    if isinstance(value, TokenFeatures) or value.dim() != 2:
        raise ValueError(f"a matching head fuses pooled vectors [B, D]; the {side} encoder returns "
                         f"{'token features' if isinstance(value, TokenFeatures) else tuple(value.shape)} "
                         "(leave the encoders' `pool` at its default)")
    return value


class MatchingHead(nn.Module):
    """Scores an image–text pair: s(x, y) = MLP(fusion(x, y)) ∈ ℝ, a logit (σ(s) = P(the pair matches)).

    ``fusion`` is a registered fusion with its parameters (``{name: mcb, dim: 4096}``, or a bare name;
    ``harness list fusion``), built with x_dim, y_dim = the image and text encoders' output sizes; the
    MLP has ``hidden`` widths (``activation``, ``dropout``) and one output. With ``norm: layer`` (the
    default) both inputs and the fused vector are standardised over their features (layer norm without
    parameters): multiplicative fusions otherwise start from products of small numbers, with gradients
    as small, and MCB's unit-norm 16,000 values would enter the MLP at ~1/126 each. ``pair_scores(image, text)``
    is the ``[N_images, N_texts]`` logit of every pair (each side embedded by the fusion once, then
    ``combine`` + MLP per pair, in chunks of bounded memory).
    """

    def __init__(self, fusion: dict[str, Any] | str = "concat", hidden: Sequence[int] = (64,),
                 activation: str = "relu", dropout: float = 0.0, norm: str = "layer",
                 x_dim: int | None = None, y_dim: int | None = None):
        super().__init__()
        if norm not in ("layer", "none"):
            raise ValueError(f"norm must be 'layer' or 'none', got {norm!r}")
        self.fusion = build_fusion(fusion, x_dim, y_dim)
        self.mlp = mlp_layers(self.fusion.output_dim, list(hidden), 1, activation, dropout)
        # products of two small inputs are smaller still (and their gradients too): unit-scale inputs
        self.norm = norm

    def _inputs(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _pooled(x, "image"), _pooled(y, "text")
        if self.norm == "layer":
            x, y = F.layer_norm(x, x.shape[-1:]), F.layer_norm(y, y.shape[-1:])
        return x, y

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        if self.norm == "layer":
            z = F.layer_norm(z, z.shape[-1:])
        return self.mlp(z).squeeze(-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B]`` logits of the pairs (x_i, y_i)."""
        return self._logits(self.fusion(*self._inputs(x, y)))

    def scores_at(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
                  ) -> torch.Tensor:
        """``[P]`` logits of the pairs (x[rows[p]], y[cols[p]]), with gradient: each side is embedded by
        the fusion once, however many pairs it is in."""
        x, y = self._inputs(x, y)
        a, b = self.fusion.embed_x(x), self.fusion.embed_y(y)
        return self._logits(self.fusion.combine(a[rows], b[cols]))

    def pair_scores(self, image: Any, text: Any) -> torch.Tensor:
        """``[N_images, N_texts]`` logits of every pair."""
        x, y = self._inputs(image, text)
        a, b = self.fusion.embed_x(x), self.fusion.embed_y(y)
        n_i, n_t = len(a), len(b)
        out = torch.empty(n_i * n_t, dtype=torch.float32, device=a.device)
        if not n_i or not n_t:
            return out.view(n_i, n_t)
        per_pair = (a[0].numel() * a.element_size() + b[0].numel() * b.element_size()
                    + 4 * (self.fusion.output_dim + max((m.out_features for m in self.mlp
                                                         if isinstance(m, nn.Linear)), default=1)))
        chunk = max(1, PAIR_CHUNK_BYTES // (2 * per_pair))  # ×2: combine's temporaries
        for p0 in range(0, n_i * n_t, chunk):
            index = torch.arange(p0, min(p0 + chunk, n_i * n_t), device=a.device)
            z = self.fusion.combine(a[index // n_t], b[index % n_t])
            out[p0:p0 + len(index)] = self._logits(z).float()
        return out.view(n_i, n_t)


def find_head(heads: Any, key: str) -> nn.Module:
    keys = list(heads.keys()) if heads is not None else []
    if key not in keys:
        raise ValueError(f"the matching loss needs a head named {key!r}, e.g. method `heads: {{{key}: "
                         f"{{name: matcher, fusion: {{name: mlb}}}}}}`; the method's heads: {keys or 'none'}")
    head = heads[key]
    if not hasattr(head, "pair_scores"):
        raise ValueError(f"head {key!r} has no pair_scores(); the matching loss needs a matcher head")
    return head


def hard_negative_captions(captions: Sequence[str], scene: Mapping[str, np.ndarray],
                           rng: np.random.Generator) -> dict[int, str]:
    """For each caption i (of image i): a minimal edit of a kind drawn at random among those that have
    candidates (:func:`~harness_plugins.evaluators.minimal_pairs.edit_candidates`), the candidates
    tried in random order until one is false of image i (``caption_relevance``); captions with no false
    edit of that kind get none. ``ValueError`` for captions outside the ``shapes`` grammar."""
    color, shape = scene["obj_color"], scene["obj_shape"]
    n_objects = scene.get("n_objects")
    candidates: dict[int, list[str]] = {}
    for i, caption in enumerate(captions):
        slots = range(color.shape[1] if n_objects is None else int(n_objects[i]))
        present = {(int(color[i, m]), int(shape[i, m])) for m in slots if color[i, m] >= 0}
        for k in rng.permutation(len(KINDS)):  # one kind per caption: cheaper than every kind
            edits = edit_candidates(caption, KINDS[k], present)
            if edits:
                candidates[i] = [edits[j] for j in rng.permutation(len(edits))]
                break
    chosen, tried, pending = {}, dict.fromkeys(candidates, 0), list(candidates)
    while pending:  # the first untried candidate of every open caption, checked in one call
        texts = [candidates[i][tried[i]] for i in pending]
        truth = caption_relevance(texts, scene)
        still = []
        for row, i in enumerate(pending):
            if not truth[row, i]:
                chosen[i] = texts[row]
            else:
                tried[i] += 1
                if tried[i] < len(candidates[i]):
                    still.append(i)
        pending = still
    return chosen


def _scene(extras: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The batch's scene annotations as numpy arrays, or None when the dataset has none."""
    if any(extras.get(k) is None for k in SCENE_EXTRAS) or \
            (extras.get("relations") is None and extras.get("obj_bbox") is None):
        return None
    return {k: torch.as_tensor(v).cpu().numpy() for k, v in extras.items() if v is not None}


class MatchingLoss(nn.Module):
    """Binary cross-entropy of a matching head's logit s_ij = head(x_i, y_j) on a batch of B pairs.

    L = ½ [ mean_{(i,j) ∈ P} softplus(−s_ij) + mean_{(i,j) ∈ N} softplus(s_ij) ]

    (−log σ(s) on matches, −log(1 − σ(s)) on non-matches; each group weighs one half). P holds the
    batch's pairs (i, i); N holds, for each image, ``negatives`` captions of other pairs of the batch
    (drawn at random, j ≠ i; B − 1 or more: every other caption) and, with ``hard_negatives``, one minimal-pair caption: the image's caption
    minimally edited (subject and object, colours or shapes exchanged, a size flipped, an object
    replaced: the ``minimal-pairs`` edits, one kind drawn at random) so that it is false of the image,
    encoded by the method's text encoder (:func:`hard_negative_captions`). Hard negatives need captions of the ``shapes`` grammar and scene
    annotations; other datasets get in-batch negatives only. With ``relabel`` (and scene annotations)
    an in-batch caption that is true of the image (``shapes`` repeats "a red circle") counts as a match,
    not a negative: the right label, but it teaches the head how generic a caption is, which then ranks
    generic captions first for every image (off by default: on ``shapes`` it cost retrieval and
    minimal-pair accuracy in a pilot). ``mask_false_negatives`` instead leaves such captions out of N
    (from the dataset's relevance, as for the contrastive losses). ``head`` is the key of the method's
    :class:`MatchingHead`, whose logit is the method's pair score after training.
    """

    def __init__(self, head: str = "match", negatives: int = 3, hard_negatives: bool = True,
                 relabel: bool = False, mask_false_negatives: bool = False):
        super().__init__()
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
            raise ValueError(f"negatives must be an integer >= 0, got {negatives!r}")
        for name, value in (("hard_negatives", hard_negatives), ("relabel", relabel)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if negatives == 0 and not hard_negatives:
            raise ValueError("negatives is 0 and hard_negatives false: the loss needs non-matching pairs")
        self.head, self.negatives, self.hard_negatives, self.relabel = head, negatives, hard_negatives, relabel
        self.mask_false_negatives = check_flag("mask_false_negatives", mask_false_negatives)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, heads: Any, model: Any = None,
                captions: Sequence[str] | None = None, obj_color: Any = None, obj_shape: Any = None,
                obj_size: Any = None, n_objects: Any = None, relations: Any = None,
                obj_bbox: Any = None, false_negatives: FalseNegatives | None = None) -> torch.Tensor:
        if self.mask_false_negatives and false_negatives is None:
            raise ValueError("MatchingLoss(mask_false_negatives=True) needs false_negatives=FalseNegatives(...)")
        head = find_head(heads, self.head)
        image, text = _pooled(image_emb, "image"), _pooled(text_emb, "text")
        B, device = image.shape[0], image.device
        scene = None if captions is None else _scene(
            {"obj_color": obj_color, "obj_shape": obj_shape, "obj_size": obj_size, "n_objects": n_objects,
             "relations": relations, "obj_bbox": obj_bbox})
        rows = [torch.arange(B, device=device)]
        cols = [torch.arange(B, device=device)]
        labels = [torch.ones(B, device=device)]
        if self.negatives and B > 1:
            if self.negatives >= B - 1:  # every other caption of the batch
                i, j = (~torch.eye(B, dtype=torch.bool)).nonzero(as_tuple=True)
            else:
                i = torch.arange(B).repeat(self.negatives)
                j = (i + torch.randint(1, B, (len(i),))) % B  # any other caption of the batch
            truth = torch.zeros(len(i))
            if self.relabel and scene is not None:
                true_of = caption_relevance(list(captions), scene).toarray()  # [caption, image]
                truth = torch.as_tensor(true_of[j.numpy(), i.numpy()], dtype=torch.float32)
            if false_negatives is not None:  # caption j true of image i: not a negative, left out
                fn = false_negatives
                keep = ~fn.relevant(fn.text_ids.cpu()[j], fn.image_ids.cpu()[i]).cpu()
                i, j, truth = i[keep], j[keep], truth[keep]
            rows.append(i.to(device))
            cols.append(j.to(device))
            labels.append(truth.to(device))
        scores = head.scores_at(image, text, torch.cat(rows), torch.cat(cols)).float()
        labels = torch.cat(labels)
        if self.hard_negatives and scene is not None and model is not None:
            rng = np.random.default_rng(int(torch.randint(2**62, ())))  # the run's seeded stream
            try:
                hard = hard_negative_captions(list(captions), scene, rng)
            except ValueError:  # captions outside the shapes grammar: no hard negatives here
                hard = {}
            if hard:
                prepared = to_device(model.text_encoder.prepare(list(hard.values())), device)
                hard_text = _pooled(model.text_encoder(prepared), "text")
                hard_image = torch.tensor(list(hard), device=device)
                scores = torch.cat([scores, head(image[hard_image], hard_text).float()])
                labels = torch.cat([labels, torch.zeros(len(hard), device=device)])
        positive = labels > 0.5
        loss_pos = F.softplus(-scores[positive]).mean()
        if not (~positive).any():  # every drawn caption was true of its image
            return loss_pos
        return 0.5 * (loss_pos + F.softplus(scores[~positive]).mean())

    def pair_scores(self, image: Any, text: Any, heads: Any) -> torch.Tensor:
        """The method's pair score after training: the matching head's logit of every pair."""
        return find_head(heads, self.head).pair_scores(image, text)
