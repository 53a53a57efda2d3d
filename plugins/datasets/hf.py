"""``hf-dataset``: an image–caption dataset saved with Hugging Face ``datasets``' ``save_to_disk`` (a
``DatasetDict``), read with ``load_from_disk`` — memory-mapped Arrow, so only the batches being read
are decoded."""

from __future__ import annotations

import os
from pathlib import Path

from harness import hookimpl
from harness.data import DatasetInfo, Split
from harness.errors import ConfigError, MissingDataError
from harness.sources import HFImages
from harness_plugins.datasets.common import (SPLITS, FileDataset, caption_vocab, check_images_exist, positive,
                                             typed_params)

DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class HFDataset(FileDataset):
    """Image–caption pairs from a ``datasets.DatasetDict`` saved on disk.

    ``path``: the folder ``save_to_disk`` wrote. ``splits`` maps the harness's splits to the saved ones
    (default ``{train: train, val: validation, test: test}``; a harness split left out, or missing from
    the file when the default is used, is empty). ``image_column``: an ``Image`` feature, or image paths
    (relative ones under ``images``); ``caption_column``: a string, or a list of strings (several
    captions per image). ``image_size`` as in ``karpathy``; ``train_size``/``val_size``/``test_size``
    keep the first N rows."""

    source_field = "path"

    @typed_params
    def __init__(self, path: str, image_column: str = "image", caption_column: str = "caption",
                 splits: dict[str, str] | None = None, images: str | None = None, image_size: int = 224,
                 train_size: int | None = None, val_size: int | None = None, test_size: int | None = None):
        super().__init__()
        positive("image_size", image_size)
        caps = {"train": positive("train_size", train_size), "val": positive("val_size", val_size),
                "test": positive("test_size", test_size)}
        saved = load_saved(path)
        mapping = self._mapping(splits, saved, path)
        built = {}
        for name, saved_name in mapping.items():
            table = saved[saved_name]
            if caps[name] is not None:
                table = table.select(range(min(caps[name], len(table))))
            built[name] = self._split(name, table, saved_name, image_column, caption_column, images,
                                      image_size, path)
        for name in SPLITS:
            if name not in mapping:
                self.empty_reason[name] = f"{path} has no split for it (splits: {', '.join(saved)})"
        texts = built["train"].texts if "train" in built else []
        self.info = DatasetInfo(name="hf-dataset", image_shape=(3, image_size, image_size), text_kind="caption",
                                vocab=caption_vocab(texts))
        self.set_splits(built)

    @staticmethod
    def _mapping(splits: dict[str, str] | None, saved, path: str) -> dict[str, str]:
        if splits is None:
            return {ours: theirs for ours, theirs in DEFAULT_SPLITS.items() if theirs in saved}
        for ours, theirs in splits.items():
            if ours not in SPLITS:
                raise ConfigError(f"keys are the harness's splits ({', '.join(SPLITS)}), got {ours!r}",
                                  field="splits")
            if theirs not in saved:
                raise ConfigError(f"{path} has splits {', '.join(saved)}; not {theirs!r}", field="splits")
        return dict(splits)

    @staticmethod
    def _split(name: str, table, saved_name: str, image_column: str, caption_column: str,
               images: str | None, image_size: int, path: str) -> Split:
        for column, param in ((image_column, "image_column"), (caption_column, "caption_column")):
            if column not in table.column_names:
                raise ConfigError(f"{path} split {saved_name!r} has no column {column!r}; columns: "
                                  f"{', '.join(table.column_names)}", field=param)
        texts, owner = [], []
        for i, value in enumerate(table[caption_column]):
            captions = [value] if isinstance(value, str) else value
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise ConfigError(f"{path} split {saved_name!r} row {i}: {caption_column!r} must be a string "
                                  f"or a list of strings, got {value!r}", field="caption_column")
            texts += [c.strip() for c in captions]
            owner += [i] * len(captions)
        if getattr(table.features[image_column], "dtype", None) == "string":  # file paths: all present?
            paths = [p if images is None or os.path.isabs(p) else os.path.join(images, p)
                     for p in table[image_column]]
            check_images_exist(paths, "images" if images is not None else "image_column",
                               f"{path} split {saved_name!r} column {image_column!r}")
        source = HFImages(table.select_columns([image_column]), image_column, image_size, images)
        return Split(name, source, texts, owner)


def load_saved(path: str):
    """``datasets.load_from_disk(path)`` as a ``DatasetDict``; anything else is a :class:`ConfigError`
    naming ``path``."""
    import datasets

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingDataError(f"folder not found: {folder}", field="path")
    try:
        saved = datasets.load_from_disk(str(folder))
    except Exception as exc:  # not a saved dataset, or a damaged one
        raise ConfigError(f"cannot load a saved Hugging Face dataset from {folder}: {exc}", field="path") from None
    if not isinstance(saved, datasets.DatasetDict):
        raise ConfigError(f"{folder} holds a single Dataset; save a DatasetDict ({{'train': …, 'test': …}}) "
                          "so that its splits are known", field="path")
    return saved


@hookimpl
def register_datasets(register):
    register("hf-dataset", HFDataset)
