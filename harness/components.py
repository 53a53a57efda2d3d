"""Base classes for the component kinds registered through :mod:`harness.hookspecs`.

They are small on purpose: a component only has to honour the call shapes below, so a third-party
plugin may subclass these or simply duck-type them.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from harness.data import DatasetInfo, Split
from harness.errors import EmptySplitError


@dataclass
class TokenFeatures:
    """Per-location / per-token features of one modality: ``features`` ``[B, N, D]`` and ``mask``
    ``[B, N]`` (bool, True = a real location or token; ``None`` = all real).

    An encoder returns this instead of a pooled ``[B, D]`` tensor when a method scores pairs from
    locations and tokens (match-map grounding). Batches of different ``N`` concatenate with padding.
    """

    features: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ValueError(f"token features are [B, N, D], got shape {tuple(self.features.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.features.shape[:2]):
            raise ValueError(f"mask shape {tuple(self.mask.shape)} does not match features "
                             f"{tuple(self.features.shape)}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        """The mask, or all True."""
        if self.mask is not None:
            return self.mask.bool()
        return torch.ones(self.features.shape[:2], dtype=torch.bool, device=self.features.device)

    def map(self, fn) -> "TokenFeatures":
        """The same features with ``fn`` applied to the feature tensor (``.float()``, ``.detach()``)."""
        return TokenFeatures(fn(self.features), self.mask)

    def to(self, *args: Any, **kwargs: Any) -> "TokenFeatures":
        mask = self.mask.to(self.features.to(*args, **kwargs).device) if self.mask is not None else None
        return TokenFeatures(self.features.to(*args, **kwargs), mask)

    def detach(self) -> "TokenFeatures":
        return self.map(torch.Tensor.detach)

    def float(self) -> "TokenFeatures":
        return self.map(torch.Tensor.float)

    def __getitem__(self, index: Any) -> "TokenFeatures":
        return TokenFeatures(self.features[index], None if self.mask is None else self.mask[index])

    @staticmethod
    def cat(parts: list["TokenFeatures"]) -> "TokenFeatures":
        """Concatenate along the batch, padding ``N`` to the longest part (padding is masked out)."""
        n = max(p.features.shape[1] for p in parts)
        if all(p.features.shape[1] == n for p in parts) and all(p.mask is None for p in parts):
            return TokenFeatures(torch.cat([p.features for p in parts]))
        feats, masks = [], []
        for p in parts:
            pad = n - p.features.shape[1]
            feats.append(torch.nn.functional.pad(p.features, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(p.valid, (0, pad), value=False))
        return TokenFeatures(torch.cat(feats), torch.cat(masks))


@dataclass
class FalseNegatives:
    """What a loss needs to drop false negatives (``mask_false_negatives: true``): the training rows'
    ``image_ids`` and ``text_ids`` (``[B]`` long tensors, indices into the training split: row b pairs
    image ``image_ids[b]`` with text ``text_ids[b]``) and ``relevant``, a
    :class:`harness.data.PairRelevance` lookup ``relevant(text_ids, image_ids) -> bool`` (broadcast).

    The runner passes it as the loss's ``false_negatives`` keyword when masking is on; a loss then leaves
    out of every anchor's negatives the items true of it: for an image anchor, texts true of that image
    (and images its text is true of); for a text anchor, images it is true of (and texts true of its
    image). Under DDP the loss gathers the ids with the embeddings, so the mask is the global batch's."""

    image_ids: torch.Tensor
    text_ids: torch.Tensor
    relevant: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def matrix(self, text_ids: torch.Tensor | None = None, image_ids: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``R[t, i]``: text ``text_ids[t]`` is true of image ``image_ids[i]`` (defaults: the batch's)."""
        text_ids = self.text_ids if text_ids is None else text_ids
        image_ids = self.image_ids if image_ids is None else image_ids
        return self.relevant(text_ids[:, None], image_ids[None, :])


def pooled_or_tokens(value: Any) -> str:
    """``"tokens"`` for :class:`TokenFeatures`, ``"pooled"`` for a ``[B, D]`` tensor."""
    return "tokens" if isinstance(value, TokenFeatures) else "pooled"


def call_loss(loss: nn.Module, image: Any, text: Any, **extras: Any) -> torch.Tensor:
    """Call a loss on what the encoders returned: pooled ``[B, D]`` tensors as ``loss(image, text)``;
    :class:`TokenFeatures` as ``loss(image_feats, text_feats, image_mask=…, text_mask=…)`` (each mask
    passed when ``forward`` names it and the features have one)."""
    names = inspect.signature(loss.forward).parameters
    for side, value in (("image", image), ("text", text)):
        if isinstance(value, TokenFeatures) and value.mask is not None and f"{side}_mask" in names:
            extras[f"{side}_mask"] = value.mask
    image = image.features if isinstance(image, TokenFeatures) else image
    text = text.features if isinstance(text, TokenFeatures) else text
    return loss(image, text, **extras)


class Encoder(nn.Module):
    """Maps a prepared batch of one modality to ``[B, output_dim]``, or to :class:`TokenFeatures`
    (``[B, N, output_dim]`` + mask) for methods that score locations against tokens.

    ``prepare`` turns a raw batch (a ``uint8`` image tensor, a list of caption strings, a feature array)
    into the tensors ``forward`` takes; it runs on the CPU, outside autograd, so tokenizers and image
    normalisation live with the encoder that needs them.
    """

    modality: str = "any"  # "image", "text" or "any"
    output_dim: int
    trainable: bool = True  # False for fixed feature extractors (pixels, bag-of-words)

    def prepare(self, raw: Any) -> Any:
        return torch.as_tensor(raw)


class Transform(nn.Module):
    """A training-time batch transform: ``transform(images, **extras)`` on raw images as floats in
    [0, 1] ``[B, C, H, W]``, before the image encoder's ``prepare``; never applied at evaluation.

    ``forward`` names the per-image extras it needs (``gaze``, ``obj_bbox``, ``relations``, ``captions``)
    and returns the new images, or ``(images, {extra: new_value})`` for extras it changed with them.
    Random draws use torch's global generator, which the runner seeds per batch from the run's seed.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def transform_extras(transform: nn.Module, required: bool = False) -> list[str]:
    """The keyword extras a transform's ``forward`` names after the images (``required``: only those
    without a default, which the dataset must provide; the others are passed when it has them)."""
    params = list(inspect.signature(transform.forward).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and not (required and p.default is not p.empty)]


def apply_transforms(transforms: list[nn.Module], images: torch.Tensor,
                     extras: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Apply ``transforms`` in order; each gets the extras it names (as changed by earlier ones) and
    may return changed extras, which replace the old ones in the returned dict."""
    extras = dict(extras)
    for transform in transforms:
        wanted = {name: extras[name] for name in transform_extras(transform) if name in extras}
        out = transform(images, **wanted)
        if isinstance(out, tuple):
            images, changed = out
            unknown = sorted(set(changed) - set(wanted))
            if unknown:
                raise ValueError(f"transform {type(transform).__name__} returned extras it was not given: "
                                 f"{', '.join(unknown)}")
            extras.update(changed)
        else:
            images = out
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"transform {type(transform).__name__} must return images [B, C, H, W]")
    return images, extras


class Sampler:
    """Decides which negatives a loss sees, and may keep state across steps.

    The runner calls ``setup`` once, ``compute_loss`` every step instead of calling the loss directly,
    and ``after_step`` after the optimizer step (momentum updates, enqueueing keys).
    """

    def check_loss(self, loss: nn.Module) -> None:
        """Raise ``ValueError`` with a clear message if ``loss`` cannot use this sampler's negatives."""

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        pass

    def compute_loss(self, loss: nn.Module, model: nn.Module, batch: dict[str, Any],
                     image_emb: torch.Tensor, text_emb: torch.Tensor,
                     extras: dict[str, Any]) -> torch.Tensor:
        """``batch`` holds the prepared inputs on the device (``batch["images"]``, ``batch["texts"]``);
        ``model`` is a :class:`harness.model.DualEncoder` (``model.image_encoder``, ``model.text_encoder``)
        and ``extras`` the keyword extras the loss's ``forward`` accepts. ``image_emb``/``text_emb`` are
        pooled ``[B, D]`` tensors or :class:`TokenFeatures` (see :func:`call_loss`)."""
        return call_loss(loss, image_emb, text_emb, **extras)

    def after_step(self, model: nn.Module, batch: dict[str, Any], image_emb: torch.Tensor,
                   text_emb: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@runtime_checkable
class EmbeddingModel(Protocol):
    """What evaluators see of a trained method: batched, gradient-free embedding of either side, and
    the method's pair scores. ``embed_*`` return ``[N, D]`` tensors or :class:`TokenFeatures`;
    ``score(image_emb, text_emb)`` is the ``[N_images, N_texts]`` score matrix (higher = more alike),
    computed in bounded blocks; ``cosine_scores`` is True when it is the cosine of pooled vectors."""

    cosine_scores: bool

    def embed_images(self, images: Any) -> Any: ...

    def embed_texts(self, texts: Any) -> Any: ...

    def score(self, image_emb: Any, text_emb: Any) -> torch.Tensor: ...


_UNSET: Any = object()


@dataclass
class EvalContext:
    """Everything an evaluator may use. ``split`` is the split being scored (usually ``test``).

    ``relevance_fn`` (optional) returns the split's exact relevance, as ``Dataset.relevance(split)``
    does; the runner passes the dataset's, bound to the split. Evaluators reach it through
    :meth:`relevance`, which calls it at most once, so only evaluators that ask pay for it.
    ``split_fn(name)`` (optional) returns another split of the dataset; :attr:`val_split` uses it."""

    model: EmbeddingModel
    split: Split
    train_split: Split
    dataset_info: DatasetInfo
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    relevance_fn: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    split_fn: Callable[[str], Split] | None = field(default=None, repr=False, compare=False)
    _relevance: Any = field(default=_UNSET, init=False, repr=False, compare=False)
    # embeddings of whole splits, shared by every evaluator scoring this context (the model is fixed)
    _embedded: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def relevance(self) -> Any:
        """Which images each text of the evaluated split is true of: a boolean ``[n_texts, n_images]``
        matrix (dense or scipy.sparse), or ``None`` when the dataset has no exact relevance (then each
        text's only positive is its own image, ``split.text_to_image``). Computed once per context."""
        if self._relevance is _UNSET:
            self._relevance = None if self.relevance_fn is None else self.relevance_fn()
        return self._relevance

    @property
    def val_split(self) -> Split | None:
        """The dataset's ``val`` split (to fit thresholds on), or None when it has none or it is empty."""
        if self.split_fn is None:
            return None
        try:
            split = self.split_fn("val")
        except (ValueError, KeyError, EmptySplitError):  # no such split, or (file datasets) an empty one
            return None
        return split if len(split) else None

    def embed(self, split: Split | None = None) -> tuple[Any, Any]:
        """Every image and every text of ``split`` (default: the evaluated split) embedded — once per
        context, however many evaluators ask."""
        return self.embed_images(split), self.embed_texts(split)

    def embed_images(self, split: Split | None = None) -> Any:
        """Every image of ``split`` (default: the evaluated split) embedded, once per context."""
        split = self.split if split is None else split
        key = ("images", id(split))
        if key not in self._embedded:
            self._embedded[key] = (split, self.model.embed_images(split.images))  # keeps split alive
        return self._embedded[key][1]

    def embed_texts(self, split: Split | None = None) -> Any:
        """Every text of ``split`` (default: the evaluated split) embedded, once per context."""
        split = self.split if split is None else split
        key = ("texts", id(split))
        if key not in self._embedded:
            self._embedded[key] = (split, self.model.embed_texts(split.texts))
        return self._embedded[key][1]

    def cosine_scores(self, image_emb: Any, text_emb: Any) -> bool:
        """Whether these embeddings are scored by the cosine of pooled vectors, so that evaluators may
        use their fast pooled paths (models that do not say are taken to be cosine models)."""
        pooled = not isinstance(image_emb, TokenFeatures) and not isinstance(text_emb, TokenFeatures)
        return pooled and bool(getattr(self.model, "cosine_scores", True))

    def scores(self, image_emb: Any, text_emb: Any) -> torch.Tensor:
        """The method's ``[N_images, N_texts]`` pair scores: evaluators that compare images with texts
        use these, never assuming a dot product (match-map methods score locations against tokens)."""
        return self.model.score(image_emb, text_emb)

    def pooled(self, split: Split | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embed` for evaluators that need one vector per item (CCA, linear probes): a clear
        error for methods whose encoders return token features."""
        image, text = self.embed(split)
        if isinstance(image, TokenFeatures) or isinstance(text, TokenFeatures):
            raise ValueError("this evaluator needs pooled [N, D] embeddings; the method's encoders return "
                             "token/location features (set the encoders' `pool`)")
        return image, text


class Evaluator:
    """Scores a trained model: ``evaluate(context) -> {metric: float}``.

    Subclasses list metrics whose *lower* values are better in ``lower_is_better``; every other metric
    counts as higher-is-better when tables mark the best value. ``metric_names()`` declares what
    ``evaluate`` can return for the evaluator's parameters (names, or ``fnmatch`` patterns such as
    ``"R@*"``), so a typo in ``report.metrics`` is caught before anything trains; ``None`` (the
    default) means undeclared. ``units`` maps metric names or patterns to a unit (``{"*R@*": "%"}``);
    ``chance(context)`` gives metrics' values for a random model where the evaluator knows them.
    """

    lower_is_better: frozenset[str] = frozenset()
    units: dict[str, str] = {}

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.lower_is_better

    def metric_names(self) -> list[str] | None:
        return None

    def unit(self, metric: str) -> str | None:
        return next((unit for pattern, unit in self.units.items() if fnmatch.fnmatchcase(metric, pattern)),
                    None)

    def chance(self, context: EvalContext) -> dict[str, float]:
        return {}

    def check_split(self, split: Split) -> None:
        """Raise ``ValueError`` if this evaluator cannot score ``split`` (e.g. it needs per-image
        annotations the dataset lacks): ``harness validate`` and ``run`` call it on every split in
        ``eval_splits`` before anything trains, so the problem is a config error, not a failed run."""


@runtime_checkable
class Estimator(Protocol):
    """A closed-form two-view method, sklearn style (linear CCA, kernel CCA)."""

    def fit(self, X: Any, Y: Any) -> "Estimator": ...

    def transform(self, X: Any, Y: Any) -> tuple[Any, Any]: ...

    def correlations(self, X: Any, Y: Any) -> Any: ...
