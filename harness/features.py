"""Feature cache for frozen encoders.

An encoder whose output is a fixed function of its input (no trainable parameter, nothing that acts
differently in training: fixed features, or ``freeze: true`` backbones — with or without a trainable
``head`` on top) is run once per split: its outputs are stored on disk under a key made of the
encoder's configuration and plugin, a hash of its weights and the dataset's fingerprint, and every
method and seed that uses the same encoder on the same data reads them instead of running it again.

Files are safetensors (tensors only, nothing is unpickled), written to a temp file and renamed, so jobs
that share the cache folder (``processes``, ``submitit``) never see a partial file; two jobs that miss
at once both compute the same features and the last rename wins.

How the model reads them: the frozen encoder's ``prepare``/``forward`` are wrapped (on the instance,
so the model's state dict is unchanged) to pass cached rows straight through, and anything else (a
caption that was not cached, a transformed image) to the encoder itself. Images are replaced in the
split by :class:`CachedRows`; captions are looked up by their text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from harness.components import TokenFeatures
from harness.data import Dataset, Split
from harness.distributed import all_true, rank

FORMAT = 1  # bump when what is stored changes
CACHED, CACHED_MASK = "cached_features", "cached_mask"


def cache_dir() -> Path:
    """``$HARNESS_CACHE_DIR/features``, else ``~/.cache/multimodal-harness/features``."""
    root = os.environ.get("HARNESS_CACHE_DIR")
    base = Path(root).expanduser().resolve() if root else Path.home() / ".cache" / "multimodal-harness"
    return base / "features"


def cacheable(encoder: nn.Module) -> bool:
    """Whether ``encoder``'s output depends on its input alone: no parameter that trains, and no dropout
    or batch norm that would act differently in training mode."""
    if any(p.requires_grad for p in encoder.parameters()):
        return False
    was_training = encoder.training
    encoder.train()  # frozen backbones keep their own parts in eval mode
    try:
        moody = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
        return not any(m.training for m in encoder.modules() if isinstance(m, moody))
    finally:
        encoder.train(was_training)


def weights_hash(module: nn.Module) -> str:
    """A content hash of every parameter and buffer (names, dtypes, shapes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CachedRows:
    """Stands in a split for the images whose encoder outputs are cached: rows of those outputs (an
    ``[N, D]`` tensor or :class:`TokenFeatures`), indexed like the images they replace. Given ``load``
    and the number of rows instead, they are loaded (or computed) when first read, so a split that is
    never embedded costs nothing."""

    def __init__(self, rows: Any = None, load: Callable[[], Any] | None = None, n: int | None = None):
        self._rows, self._load, self._n = rows, load, n

    @property
    def rows(self) -> Any:
        if self._rows is None:
            self._rows = self._load()
        return self._rows

    def __len__(self) -> int:
        return self._n if self._rows is None else len(self._rows)

    def __getitem__(self, index: Any) -> "CachedRows":
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return CachedRows(self.rows[index])


def _pack(rows: Any) -> dict[str, torch.Tensor]:
    """Cached rows as a prepared batch (a dict of tensors, which the runner moves to the device)."""
    if isinstance(rows, TokenFeatures):
        return {CACHED: rows.features, CACHED_MASK: rows.valid}
    return {CACHED: rows}


def _unpack(batch: dict[str, torch.Tensor]) -> Any:
    if CACHED_MASK in batch:
        return TokenFeatures(batch[CACHED], batch[CACHED_MASK])
    return batch[CACHED]


class _CaptionRows:
    """Cached text outputs by caption: every split's captions, each split's rows loaded (or computed)
    when one of its captions is first looked up."""

    def __init__(self) -> None:
        self.index: dict[str, tuple[CachedRows, int]] = {}
        self.loading = False  # computing a split's rows runs the encoder on its captions: not from here

    def add(self, texts: list[str], rows: CachedRows) -> None:
        for i, text in enumerate(texts):
            self.index.setdefault(text, (rows, i))

    def find(self, texts: Any) -> Any | None:
        if isinstance(texts, np.ndarray):  # captions held as a numpy string array
            texts = texts.tolist()
        if self.loading or not isinstance(texts, (list, tuple)) or not texts or \
                not all(isinstance(t, str) and t in self.index for t in texts):
            return None
        self.loading = True
        try:
            picked = [(rows.rows, i) for rows, i in (self.index[t] for t in texts)]
        finally:
            self.loading = False
        if isinstance(picked[0][0], TokenFeatures):
            return TokenFeatures.cat([rows[i:i + 1] for rows, i in picked])
        return torch.stack([rows[i] for rows, i in picked])


def serve_cached(encoder: nn.Module, captions: _CaptionRows | None = None) -> None:
    """Make ``encoder`` pass cached rows through (:class:`CachedRows`, or captions found in
    ``captions``) and run itself on anything else. Set on the instance: its class, parameters and
    state dict are untouched."""
    prepare, forward = encoder.prepare, encoder.forward

    def cached_prepare(raw: Any) -> Any:
        if isinstance(raw, CachedRows):
            return _pack(raw.rows)
        found = captions.find(raw) if captions is not None else None
        return _pack(found) if found is not None else prepare(raw)

    def cached_forward(batch: Any) -> Any:
        return _unpack(batch) if isinstance(batch, dict) and CACHED in batch else forward(batch)

    encoder.prepare, encoder.forward = cached_prepare, cached_forward


class FeatureStore:
    """The cached outputs of one encoder on one dataset, split by split: loaded from disk, or computed
    with ``embed(items)`` and saved."""

    def __init__(self, encoder: nn.Module, identity: dict[str, Any], fingerprint: str,
                 embed: Callable[[Any], Any], folder: Path | None = None):
        self.embed, self.folder = embed, folder or cache_dir()
        self.identity = {**identity, "weights": weights_hash(encoder), "dataset": fingerprint, "format": FORMAT}
        self.loaded: dict[str, Any] = {}
        self.computed: list[str] = []  # splits this store had to compute (for reports and tests)

    def path(self, split_name: str) -> Path:
        key = json.dumps({**self.identity, "split": split_name}, sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.safetensors"

    def get(self, split_name: str, items: Any) -> Any:
        if split_name not in self.loaded:
            self.loaded[split_name] = self._load_or_compute(split_name, items)
        return self.loaded[split_name]

    def _load_or_compute(self, split_name: str, items: Any) -> Any:
        path = self.path(split_name)
        rows = _read(path, len(items)) if path.exists() else None
        if all_true(rows is not None):  # under DDP every rank must take the same branch
            return rows
        rows = self.embed(items)
        rows = rows.to("cpu") if isinstance(rows, TokenFeatures) else rows.cpu()
        self.computed.append(split_name)
        if rank() == 0:
            _write(path, rows)
        return rows


def _read(path: Path, n: int) -> Any | None:
    """Cached rows, or None when the file is unreadable or does not hold ``n`` rows (then recompute)."""
    from safetensors.torch import load_file
    try:
        data = load_file(str(path))
    except Exception:
        return None
    rows = TokenFeatures(data[CACHED], data[CACHED_MASK]) if CACHED_MASK in data else data.get(CACHED)
    return rows if rows is not None and len(rows) == n else None


def _write(path: Path, rows: Any) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in _pack(rows).items()}, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CachedDataset(Dataset):
    """A dataset whose splits read a frozen image encoder's outputs from ``images`` (in place of the
    images) and a frozen text encoder's from ``texts`` (captions registered for lookup by text; a
    numeric second view replaced like images); everything else is the wrapped dataset's."""

    def __init__(self, dataset: Dataset, images: FeatureStore | None = None,
                 texts: tuple[FeatureStore, _CaptionRows] | None = None):
        self.dataset, self.images, self.texts = dataset, images, texts
        self.info, self.splits = dataset.info, dataset.splits
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in self._splits:
            split = self.dataset.split(name)
            if self.texts is not None:
                store, captions = self.texts
                rows = _lazy(store, name, split.texts)
                if len(split.texts) and isinstance(split.texts[0], str):
                    captions.add(list(split.texts), rows)  # looked up by their text, which evaluators read
                else:  # a second numeric view: replaced like images
                    split = dataclasses.replace(split, texts=rows)
            if self.images is not None:
                split = dataclasses.replace(split, images=_lazy(self.images, name, split.images))
            self._splits[name] = split
        return self._splits[name]

    def relevance(self, split_name: str) -> Any:
        return getattr(self.dataset, "relevance", lambda _: None)(split_name)

    def fingerprint(self) -> str:
        return self.dataset.fingerprint()


def _lazy(store: FeatureStore, split_name: str, items: Any) -> CachedRows:
    return CachedRows(load=lambda: store.get(split_name, items), n=len(items))


def takes_inputs(loss_factory: Any) -> bool:
    """Whether a loss reads the prepared inputs (``images``/``texts`` extras, e.g. reconstruction
    losses), which cached rows would not be."""
    forward = getattr(loss_factory, "forward", None)
    return forward is not None and bool({"images", "texts"} & set(inspect.signature(forward).parameters))


def cached_views(model: Any, job: Any, dataset: Dataset, fingerprint: str, registry: Any
                 ) -> tuple[Dataset, Dataset]:
    """``(training view, evaluation view)`` of ``dataset`` for one job, reading the outputs of its frozen
    encoders from the cache (``dataset`` itself when neither encoder is frozen). Training reads cached
    images only when no training transform changes them."""
    from harness.jobs import encoder_head
    from harness.model import HeadedEncoder

    spec = job.spec
    if any(takes_inputs(registry.get("loss", stage.loss.name).factory) for stage in spec.stage_list()):
        return dataset, dataset
    stores: dict[str, FeatureStore] = {}
    texts: tuple[FeatureStore, _CaptionRows] | None = None
    for side in ("image", "text"):
        encoder = getattr(model, f"{side}_encoder")
        base = encoder.base if isinstance(encoder, HeadedEncoder) else encoder
        if not cacheable(base):
            continue
        comp, _, output_dim = encoder_head(getattr(spec.encoders, side))
        provider = next((p.identity() for p in job.providers or [] if p.kind == "encoder" and p.name == comp.name),
                        None)
        identity = {"encoder": {"name": comp.name, **comp.params}, "output_dim": output_dim, "modality": side,
                    "plugin": provider}
        stores[side] = FeatureStore(base, identity, fingerprint,
                                    lambda items, base=base: model._embed_all(base, items))
        captions = _CaptionRows() if side == "text" else None
        serve_cached(base, captions)
        if captions is not None:
            texts = (stores["text"], captions)
    if not stores:
        return dataset, dataset
    transforms = any(spec.stage_train(stage).transforms for stage in spec.stage_list())
    evaluation = CachedDataset(dataset, stores.get("image"), texts)
    training = evaluation if not transforms else CachedDataset(dataset, None, texts)
    return training, evaluation
