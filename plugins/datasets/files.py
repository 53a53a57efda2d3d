"""``image-text-files``: bring your own data — one JSONL or CSV file of (image, caption, split) rows.

JSONL: one object per line, ``{"image": "dogs/1.jpg", "caption": "A dog on a sofa.", "split": "train"}``;
CSV: a header row naming the same columns (other columns are ignored). ``image`` is a path relative to
the ``images`` folder; rows naming the same image give it several captions; ``split`` is ``train``,
``val`` or ``test``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterator, Literal

from harness import hookimpl
from harness.data import DatasetInfo
from harness.errors import ConfigError
from harness_plugins.datasets.common import (SPLITS, FileDataset, GazeIndex, ImageRecords, caption_vocab,
                                             check_images_exist, existing_dir, existing_file, image_split,
                                             malformed, positive, typed_params)


class ImageTextFiles(FileDataset):
    """Image–caption pairs listed in a JSONL or CSV file, images decoded on demand from ``images``.

    ``path``: the file; ``format``: ``auto`` (by suffix: ``.jsonl``/``.json`` or ``.csv``), ``jsonl`` or
    ``csv``; ``image_column``/``caption_column``/``split_column`` name its columns (default ``image``,
    ``caption``, ``split``). Images keep the order of their first row. ``train_size``/``val_size``/
    ``test_size`` keep the first N images of a split; ``image_size``, ``gaze_maps`` and ``gaze_size``
    as in ``karpathy``."""

    source_field = "path"

    @typed_params
    def __init__(self, path: str, images: str, format: Literal["auto", "jsonl", "csv"] = "auto",
                 image_column: str = "image", caption_column: str = "caption", split_column: str = "split",
                 image_size: int = 224, train_size: int | None = None, val_size: int | None = None,
                 test_size: int | None = None, gaze_maps: str | None = None, gaze_size: int = 64):
        super().__init__()
        positive("image_size", image_size)
        caps = {"train": positive("train_size", train_size), "val": positive("val_size", val_size),
                "test": positive("test_size", test_size)}
        file = existing_file(path, "path")
        kind = format if format != "auto" else _format_of(file)
        rows = _jsonl_rows(file) if kind == "jsonl" else _csv_rows(file)
        columns = (image_column, caption_column, split_column)
        root = os.path.expanduser(images)
        records = group_rows(rows, columns, root, file)
        root_dir = existing_dir(images, "images")
        splits = {}
        for name in SPLITS:
            kept = records[name].head(caps[name])
            check_images_exist(kept.paths, "images", file)
            splits[name] = image_split(name, kept, image_size, root_dir)
            if not kept:
                self.empty_reason[name] = f"no row of {file} has {split_column} {name!r}"
        self.info = DatasetInfo(name="image-text-files", image_shape=(3, image_size, image_size),
                                text_kind="caption", vocab=caption_vocab(splits["train"].texts))
        self.set_splits(splits, GazeIndex(gaze_maps) if gaze_maps is not None else None, gaze_size)


def _format_of(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise ConfigError(f"cannot tell the format of {file} from its suffix: set format to jsonl or csv",
                      field="format")


def _jsonl_rows(file: Path) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for every non-empty line."""
    with _open(file) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise malformed("path", file, f"line {number}", f"not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise malformed("path", file, f"line {number}", "expected a JSON object")
            yield f"line {number}", row


def _csv_rows(file: Path) -> Iterator[tuple[str, dict]]:
    with _open(file) as fh:
        dialect = csv.excel_tab if file.suffix.lower() == ".tsv" else csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        try:
            for row in reader:
                yield f"line {reader.line_num}", row
        except csv.Error as exc:
            raise malformed("path", file, f"line {reader.line_num}", f"not valid CSV: {exc}") from None


def _open(file: Path):
    try:
        return open(file, newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}", field="path") from None


def group_rows(rows: Iterator[tuple[str, dict]], columns: tuple[str, str, str], root: str, file: Path
               ) -> dict[str, ImageRecords]:
    """Rows grouped into images (first-row order) per split; a missing column or value, an unknown split
    or an image listed in two splits is an error naming the line."""
    image_col, caption_col, split_col = columns
    order: dict[str, tuple[str, list[str]]] = {}  # image -> (split, captions)
    try:
        for where, row in rows:
            values = []
            for column in columns:
                value = row.get(column)
                if value is None:
                    raise malformed(_column_field(column, columns), file, where, f"no {column!r} column"
                                    + (f"; columns: {', '.join(map(str, row))}" if row else ""))
                if not isinstance(value, str) or not value.strip():
                    raise malformed("path", file, f"{where}, {column}", f"expected a non-empty string, "
                                    f"got {value!r}")
                values.append(value.strip())
            image, caption, split = values
            if split not in SPLITS:
                raise malformed("path", file, f"{where}, {split_col}",
                                f"expected one of {', '.join(SPLITS)}, got {split!r}")
            if image in order and order[image][0] != split:
                raise malformed("path", file, where, f"image {image!r} is in split {order[image][0]!r} "
                                f"and {split!r}")
            order.setdefault(image, (split, []))[1].append(caption)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file} is not UTF-8 text: {exc}", field="path") from None
    records = {name: ImageRecords() for name in SPLITS}
    for image, (split, captions) in order.items():
        records[split].add(os.path.join(root, image), captions)
    return records


def _column_field(column: str, columns: tuple[str, str, str]) -> str:
    """The parameter that names a column the file lacks (a renamed column is the user's setting)."""
    defaults = ("image", "caption", "split")
    names = ("image_column", "caption_column", "split_column")
    i = columns.index(column)
    return "path" if column == defaults[i] else names[i]


@hookimpl
def register_datasets(register):
    register("image-text-files", ImageTextFiles)

