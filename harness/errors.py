"""Errors the CLI turns into a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """Base for user-facing errors (bad config, unknown component, bad CLI use)."""


class ConfigError(HarnessError):
    """A benchmark file or parameter is invalid. ``where`` is the file and field path."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file, self.field, self.message = file, field, message
        location = ": ".join(part for part in (file, field) if part)
        super().__init__(f"{location}: {message}" if location else message)


class UnknownComponentError(ConfigError):
    """A kind, name or parameter that no plugin provides."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
