"""Base classes for the component kinds registered through :mod:`harness.hookspecs`.

They are small on purpose: a component only has to honour the call shapes below, so a third-party
plugin may subclass these or simply duck-type them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from harness.data import DatasetInfo, Split


class Encoder(nn.Module):
    """Maps a prepared batch of one modality to ``[B, output_dim]`` (or ``[B, N, output_dim]``).

    ``prepare`` turns a raw batch (a ``uint8`` image tensor, a list of caption strings, a feature array)
    into the tensors ``forward`` takes; it runs on the CPU, outside autograd, so tokenizers and image
    normalisation live with the encoder that needs them.
    """

    modality: str = "any"  # "image", "text" or "any"
    output_dim: int
    trainable: bool = True  # False for fixed feature extractors (pixels, bag-of-words)

    def prepare(self, raw: Any) -> Any:
        return torch.as_tensor(raw)


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
        and ``extras`` the keyword extras the loss's ``forward`` accepts."""
        return loss(image_emb, text_emb, **extras)

    def after_step(self, model: nn.Module, batch: dict[str, Any], image_emb: torch.Tensor,
                   text_emb: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@runtime_checkable
class EmbeddingModel(Protocol):
    """What evaluators see of a trained method: batched, gradient-free embedding of either side."""

    def embed_images(self, images: Any) -> torch.Tensor: ...

    def embed_texts(self, texts: Any) -> torch.Tensor: ...


@dataclass
class EvalContext:
    """Everything an evaluator may use. ``split`` is the split being scored (usually ``test``)."""

    model: EmbeddingModel
    split: Split
    train_split: Split
    dataset_info: DatasetInfo
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0

    def embed(self, split: Split | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed every image and every text of ``split`` (default: the evaluated split) once."""
        split = self.split if split is None else split
        return self.model.embed_images(split.images), self.model.embed_texts(split.texts)


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


@runtime_checkable
class Estimator(Protocol):
    """A closed-form two-view method, sklearn style (linear CCA, kernel CCA)."""

    def fit(self, X: Any, Y: Any) -> "Estimator": ...

    def transform(self, X: Any, Y: Any) -> tuple[Any, Any]: ...

    def correlations(self, X: Any, Y: Any) -> Any: ...
