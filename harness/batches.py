"""Training batches: the CPU half that the data workers run (:func:`load_batch`: decode, transforms, the
encoders' ``prepare``, the loss's per-image extras) and the half that needs the model and the device
(:func:`finish_batch`); :func:`make_batch` runs both in this process."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from harness.components import apply_transforms, transform_extras
from harness.data import Split
from harness.model import DualEncoder, take, to_device


def float_images(raw: Any) -> torch.Tensor:
    """A raw image batch as floats in [0, 1] (``uint8`` is divided by 255; floats are kept)."""
    x = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def load_batch(split: Split, index: np.ndarray, captions: np.ndarray, transform_seed: int | None, *,
               prepare_images: Callable[[Any], Any], prepare_texts: Callable[[Any], Any],
               extras_wanted: Sequence[str] = (), transforms: Sequence[torch.nn.Module] = (),
               rows: slice | None = None) -> dict[str, Any]:
    """The CPU half of a training batch, which the data workers run: images ``index`` (decoded when the
    split reads them from files) and texts ``captions``, the training ``transforms``, the encoders'
    ``prepare``, and the per-image extras the loss names (as the transforms moved them).

    ``transforms`` run on the raw images as floats in [0, 1] before ``prepare`` (which then gets them
    back in the dataset's own dtype, uint8 for ``shapes``, as at evaluation), with torch's global
    generator seeded from ``transform_seed`` inside :func:`torch.random.fork_rng`, so they neither
    depend on nor shift the model's random stream, and give the same result in any worker.

    ``rows`` (DDP) keeps this rank's rows of the global batch ``index``; transforms still draw for the
    whole batch first, so every image is transformed as in a single process."""
    if rows is not None and not transforms:
        index, captions = index[rows], captions[rows]
    images, texts = take(split.images, index), split.take_texts(captions)
    moved: dict[str, Any] = {}
    if transforms:
        wanted = {name for t in transforms for name in transform_extras(t)}
        given: dict[str, Any] = {name: torch.as_tensor(take(split.extras[name], index))
                                 for name in wanted if name in split.extras}
        if "captions" in wanted:
            given["captions"] = list(texts)
        raw_dtype = images.dtype if isinstance(images, torch.Tensor) else np.asarray(images).dtype
        with torch.random.fork_rng(devices=[]):
            if transform_seed is not None:
                torch.manual_seed(transform_seed)
            images, moved = apply_transforms(list(transforms), float_images(images), given)
        if raw_dtype in (torch.uint8, np.uint8):  # prepare sees what evaluation feeds it: the raw dtype
            images = images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        texts = moved.pop("captions", texts)
        if rows is not None:
            images, texts, index = images[rows], list(texts)[rows], index[rows]
            moved = {name: value[rows] for name, value in moved.items()}
    extras = {}
    for name in extras_wanted:
        if name == "captions":  # the batch's caption strings (after transforms), e.g. to edit them
            extras[name] = list(texts)
        elif name in moved:
            extras[name] = torch.as_tensor(moved[name])
        elif name in split.extras:
            extras[name] = torch.as_tensor(take(split.extras[name], index))
    return {"images": prepare_images(images), "texts": prepare_texts(texts), "extras": extras}


def finish_batch(model: DualEncoder, loaded: dict[str, Any], extras_wanted: Sequence[str],
                 class_names: list[str], device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """The main-process half of a training batch: the loaded batch on the device, and the loss's extras
    (the data's, and those that need the model: ``model``, ``heads``, ``label_emb``, the prepared
    ``images``/``texts``)."""
    batch = {"images": to_device(loaded["images"], device), "texts": to_device(loaded["texts"], device)}
    extras = {}
    for name in extras_wanted:
        if name in ("images", "texts"):  # the prepared inputs, e.g. for reconstruction losses
            extras[name] = batch[name]
        elif name == "model":  # the DualEncoder, e.g. to embed object phrases with its text encoder
            extras[name] = model
        elif name == "heads":  # the method's trainable task heads (model.heads)
            extras[name] = model.heads
        elif name == "captions":
            extras[name] = list(loaded["extras"]["captions"])
        elif name == "label_emb":
            labels_in = model.text_encoder.prepare(class_names)
            extras[name] = model.text_encoder(to_device(labels_in, device))
        elif name in loaded["extras"]:
            extras[name] = loaded["extras"][name].to(device)
    return batch, extras


def make_batch(model: DualEncoder, split: Split, index: np.ndarray, captions: np.ndarray,
               extras_wanted: list[str], class_names: list[str], device: torch.device,
               transforms: Sequence[torch.nn.Module] = (), transform_seed: int | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prepared inputs of images ``index`` paired with texts ``captions``, and the loss's extras:
    :func:`load_batch` then :func:`finish_batch`, in this process."""
    loaded = load_batch(split, index, captions, transform_seed, prepare_images=model.image_encoder.prepare,
                        prepare_texts=model.text_encoder.prepare, extras_wanted=extras_wanted,
                        transforms=transforms)
    return finish_batch(model, loaded, extras_wanted, class_names, device)
