"""Shared plumbing of the file-based dataset loaders: typed parameters, reading annotation files with
errors that name the parameter and the file, image splits whose images are decoded on demand, the
caption vocabulary, and gaze maps matched to images by file stem."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from pydantic import ConfigDict, ValidationError, validate_call

from harness.data import Dataset, DatasetInfo, Split
from harness.errors import ConfigError, EmptySplitError, MissingDataError
from harness.sources import GazeMaps, ImageFiles

SPLITS = ("train", "val", "test")
#: words as the ``gru`` encoder's tokenizer reads them (lower-cased runs of letters and digits)
WORD = re.compile(r"[a-z0-9]+")


# --- parameters ------------------------------------------------------------------------------------------

def typed_params(init: Callable[..., None]) -> Callable[..., None]:
    """Check a loader's parameters against the annotations of its ``__init__`` (pydantic); a wrong type
    is a :class:`ConfigError` naming the parameter, as every other parameter error is."""
    checked = validate_call(init, config=ConfigDict(arbitrary_types_allowed=True, strict=False))

    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        try:
            checked(self, *args, **kwargs)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = next((str(part) for part in err["loc"] if isinstance(part, str)), None)
            raise ConfigError(f"{err['msg']} (got {err.get('input')!r})", field=where) from None

    return wrapper


def existing_file(path: str, field: str) -> Path:
    """``path`` as a Path, or a :class:`ConfigError` at ``field`` when there is no such file."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"file not found: {p} (it is a folder)", field=field)
    if not p.is_file():
        raise MissingDataError(f"file not found: {p}", field=field)
    return p


def existing_dir(path: str, field: str) -> Path:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"folder not found: {p} (it is a file)", field=field)
    if not p.is_dir():
        raise MissingDataError(f"folder not found: {p}", field=field)
    return p


def read_json(path: str, field: str) -> Any:
    """The JSON document at ``path``; a missing, unreadable or malformed file is a :class:`ConfigError`
    naming ``field`` and the file."""
    p = existing_file(path, field)
    try:
        with open(p, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                          field=field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc}", field=field) from None


#: characters read at a time by :func:`iter_json_list`
JSON_CHUNK = 1 << 22


def iter_json_list(path: str, field: str, chunk: int = JSON_CHUNK) -> Iterator[Any]:
    """The items of the JSON list that is the document at ``path``, parsed one at a time from reads of
    ``chunk`` characters: memory holds one item and one chunk, not the whole document (Visual Genome's
    ``relationships.json`` is ~700 MB of text, several GB once parsed whole). A missing or unreadable
    file, a document that is not a list, or malformed JSON is a :class:`ConfigError` naming ``field``
    and the file."""
    p = existing_file(path, field)
    decoder = json.JSONDecoder()

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{p} is not valid JSON: {problem}", field=field)

    try:
        with open(p, encoding="utf-8-sig") as fh:
            buf, pos, done, consumed = "", 0, False, 0

            def more() -> bool:  # append the next chunk; False at the end of the file
                nonlocal buf, pos, done, consumed
                if done:
                    return False
                text = fh.read(chunk)
                if not text:
                    done = True
                    return False
                consumed += pos  # what is dropped from the front is behind us
                buf, pos = buf[pos:] + text, 0
                return True

            def next_char() -> str:  # the next non-whitespace character ('' at the end), not consumed
                nonlocal pos
                while True:
                    while pos < len(buf) and buf[pos] in " \t\r\n":
                        pos += 1
                    if pos < len(buf) or not more():
                        return buf[pos] if pos < len(buf) else ""

            if next_char() != "[":
                raise ConfigError(f"{p}: top level: expected a list", field=field)
            pos += 1
            first = True
            while True:
                c = next_char()
                if c == "]":
                    pos += 1
                    if next_char():
                        raise bad(f"extra data after the list at character {consumed + pos}")
                    return
                if not first:
                    if c != ",":
                        raise bad(f"expected ',' or ']' at character {consumed + pos}")
                    pos += 1
                    next_char()
                while True:
                    try:
                        item, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        # cut by the end of the chunk: read on; an error inside the text read is the
                        # file's, reported at once (the rest of a large file is not read for it)
                        if _cut_short(exc, buf) and more():
                            continue
                        raise bad(f"{exc.msg} at character {consumed + exc.pos}") from None
                    after = end
                    while after < len(buf) and buf[after] in " \t\r\n":
                        after += 1
                    # the item ends where ',' or ']' follows; a number may go on in the next chunk
                    # ("150" of "1500.0")
                    cut = after == len(buf) or (isinstance(item, (int, float)) and len(buf) - end < 32
                                                and buf[after] not in ",]")
                    if cut and more():
                        continue
                    break
                pos, first = end, False
                yield item
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc}", field=field) from None


_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")


def _cut_short(exc: json.JSONDecodeError, buf: str) -> bool:
    """Whether a decode error may only mean that ``buf`` ends in the middle of the item: an unfinished
    string, an error at the very end, a literal, a number or a unicode escape cut before its end."""
    rest = buf[exc.pos:]
    if exc.pos >= len(buf) or exc.msg.startswith("Unterminated string"):
        return True
    if exc.msg.startswith("Expecting value"):
        return any(word.startswith(rest) for word in _LITERALS)
    if exc.msg.startswith("Expecting ',' delimiter"):  # a number inside the item cut ("-12" of "-12.5")
        return _NUMBER_TAIL.fullmatch(rest) is not None
    return exc.msg.startswith("Invalid \\uXXXX escape") and len(rest) < 6


def malformed(field: str, file: Any, where: str, problem: str) -> ConfigError:
    """A :class:`ConfigError` for one bad entry of an annotation file: ``FILE: WHERE: PROBLEM``."""
    return ConfigError(f"{file}: {where}: {problem}", field=field)


def expect(value: Any, kind: type | tuple[type, ...], field: str, file: Any, where: str) -> Any:
    """``value`` when it is of ``kind``, else a :func:`malformed` error describing what was expected."""
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        kind = ()  # JSON true/false are not numbers here
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,))) or "a number"
        shown = "list" if isinstance(value, list) else "object" if isinstance(value, dict) else repr(value)
        raise malformed(field, file, where, f"expected {_article(names)}, got {shown}")
    return value


def _article(names: str) -> str:
    plain = {"str": "a string", "list": "a list", "dict": "an object", "int": "an integer",
             "float": "a number"}
    return " or ".join(plain.get(n, n) for n in names.split(" or "))


# --- image splits ----------------------------------------------------------------------------------------

@dataclass
class ImageRecords:
    """One split's images before they become a :class:`Split`: file paths, each image's captions, and
    per-image extras (lists or arrays in image order)."""

    paths: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    extras: dict[str, list] = field(default_factory=dict)

    def add(self, path: str, captions: Sequence[str], **extras: Any) -> None:
        self.paths.append(path)
        self.captions.append(list(captions))
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value)

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> "ImageRecords":
        """The first ``n`` images (all when ``n`` is None)."""
        if n is None:
            return self
        return ImageRecords(self.paths[:n], self.captions[:n], {k: v[:n] for k, v in self.extras.items()})


def check_images_exist(paths: Sequence[str], field: str, named_in: Any) -> None:
    """A :class:`ConfigError` at ``field`` when files named by ``named_in`` are absent."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        examples = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        raise ConfigError(f"{len(missing)} of {len(paths)} images named in {named_in} are missing: "
                          f"{examples}", field=field)


def image_split(name: str, records: ImageRecords, image_size: int, root: str | os.PathLike | None,
                extras: dict[str, Any] | None = None) -> Split:
    """A split whose images are the files of ``records``, decoded on demand to ``image_size`` px, with
    one text per caption (``text_to_image`` pointing at its image)."""
    texts = [caption for captions in records.captions for caption in captions]
    owner = np.repeat(np.arange(len(records)), [len(c) for c in records.captions])
    return Split(name, ImageFiles(records.paths, image_size, root=root), texts, owner,
                 extras=dict(extras or {}))


def caption_vocab(texts: Iterable[str]) -> list[str]:
    """The distinct words of ``texts`` as the ``gru`` tokenizer splits them, most frequent first (ties
    alphabetical)."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in WORD.findall(text.lower()):
            counts[word] = counts.get(word, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))


# --- gaze maps -------------------------------------------------------------------------------------------

class GazeIndex:
    """SALICON-style saliency maps under a folder (searched recursively): ``<stem>.png`` is the map of
    every image whose file stem is ``<stem>`` (``COCO_train2014_000000000009.jpg``)."""

    def __init__(self, folder: str, field: str = "gaze_maps"):
        self.folder = existing_dir(folder, field)
        self.maps = {p.stem: str(p) for p in sorted(self.folder.rglob("*.png"))}
        if not self.maps:
            raise ConfigError(f"no .png gaze maps under {self.folder}", field=field)

    def for_images(self, paths: Sequence[str], size: int, split: str) -> GazeMaps:
        """The maps of ``paths`` in order (``None`` where an image has none: a uniform map), with a
        warning that says how many are missing."""
        maps = GazeMaps([self.maps.get(Path(p).stem) for p in paths], size)
        if maps.missing:
            warnings.warn(f"gaze_maps: {maps.missing} of {len(maps)} {split} images have no map in "
                          f"{self.folder}; they get a uniform map", stacklevel=2)
        return maps


# --- the dataset base ------------------------------------------------------------------------------------

class FileDataset(Dataset):
    """A dataset whose splits were built from local files. Subclasses fill ``self._splits`` (a split
    without images is left out) and ``self.empty_reason`` (why a split is empty, for the error)."""

    info: DatasetInfo
    source_field = "annotations"  # the parameter an empty split is blamed on

    def __init__(self) -> None:
        self._splits: dict[str, Split] = {}
        self.empty_reason: dict[str, str] = {}
        self.gaze_missing: dict[str, int] = {}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise ValueError(f"dataset {self.info.name!r} has splits {', '.join(self.splits)}; not {name!r}")
        if name not in self._splits:
            reason = self.empty_reason.get(name, "it has no images")
            raise EmptySplitError(f"split {name!r} is empty: {reason}", field=self.source_field)
        return self._splits[name]

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for name in self.splits:
            h.update(f"{name}:{self._splits[name].fingerprint() if name in self._splits else 'empty'}"
                     .encode())
        return h.hexdigest()

    def set_splits(self, splits: dict[str, Split], gaze: GazeIndex | None = None,
                   gaze_size: int | None = None) -> None:
        """Keep the non-empty ``splits``; with ``gaze``, attach each image's map as extra ``gaze``."""
        for name, split in splits.items():
            if len(split) == 0:
                self.empty_reason.setdefault(name, "no images are assigned to it")
                continue
            if gaze is not None:
                paths = split.images.paths if isinstance(split.images, ImageFiles) else []
                maps = gaze.for_images(paths, gaze_size or 64, name)
                split.extras["gaze"] = maps
                self.gaze_missing[name] = maps.missing
            self._splits[name] = split


def positive(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ConfigError(f"must be a positive integer or null, got {value!r}", field=name)
    return value
