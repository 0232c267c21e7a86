"""Errors that fedsim reports to users as one line (CLI exit code 2)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A scenario value is missing, malformed or out of range.

    The message is a single line naming the field, the value and what is allowed.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
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


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` for a terminal: control characters escaped, at most ``limit`` characters."""
    return _one_line(text, limit)
