"""Errors the CLI turns into a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """Base for user-facing errors (bad config, unknown component, bad CLI use)."""


class ConfigError(HarnessError):
    """A benchmark file or parameter is invalid, at ``file`` and ``field`` (a path such as
    ``methods[infonce].train.lr``). ``line`` is the line of the file where the field was written and
    ``override`` the ``--set KEY.PATH=VALUE`` that wrote it, when known; the message shows them as
    ``FILE: FIELD (line 7): …`` or ``FILE: FIELD (from --set KEY.PATH=VALUE): …``."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 line: int | None = None, override: str | None = None):
        self.file, self.field, self.message = file, field, message
        self.line, self.override = line, override
        location = ": ".join(part for part in (file, describe_field(field, line, override)) if part)
        super().__init__(f"{location}: {message}" if location else message)


def describe_field(field: str | None, line: int | None = None, override: str | None = None) -> str | None:
    """``defaults.train.epochs (line 7)``, ``… (from --set defaults.train.epochs=0)`` or the field."""
    note = f"from --set {override}" if override else f"line {line}" if line else None
    return (f"{field} ({note})" if note else field) if field else note


class MissingDataError(ConfigError):
    """A dataset's local file or folder is not on this machine: the data is missing, which says nothing
    against the rest of the configuration (``harness validate`` checks that much without it)."""


class EmptySplitError(ConfigError):
    """A dataset's split holds nothing (no image of the files is assigned to it)."""


class UnknownComponentError(ConfigError):
    """A kind, name or parameter that no plugin provides."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
