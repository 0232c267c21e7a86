"""Errors that fedsim reports to users as one line (CLI exit code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A scenario value is missing, malformed or out of range.

    The message is a single line naming the field, the value and what is allowed. With
    ``choices`` (the names that would have been accepted), a close match to ``typo``
    (default: the value) is appended as ``"; did you mean X?"``.
    """

    def __init__(self, field: str, value: Any, allowed: str, *, choices: Iterable[Any] = (),
                 typo: Any = None) -> None:
        self.field = field
        self.value = value
        allowed += did_you_mean(value if typo is None else typo, choices)
        self.allowed = allowed
        super().__init__(f"{_one_line(field, 300)} = {_show(value)}: {_one_line(allowed, 2000)}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _one_line(text: str, limit: int) -> str:
    """Characters a terminal would act on shown escaped: control characters (a key named
    "\\n", say; C1 codes such as CSI ``\\x9b``), bidi overrides (U+202E) and other
    format characters, line and paragraph separators. Never line breaks."""
    text = str(text)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    if value is MISSING:
        return "<missing>"
    text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    """``"; did you mean X?"`` when ``word`` is close to one of ``choices`` (difflib's
    ratio >= 0.6, case ignored), else ``""``."""
    if not isinstance(word, str) or not word or len(word) > 200:
        return ""
    names = {str(c).lower(): str(c) for c in choices if isinstance(c, str)}
    names.pop(word.lower(), None)  # the word itself is not a suggestion
    match = difflib.get_close_matches(word.lower(), list(names), n=1)
    return f"; did you mean {_one_line(names[match[0]], 200)}?" if match else ""


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` for a terminal: control characters escaped, at most ``limit`` characters."""
    return _one_line(text, limit)
