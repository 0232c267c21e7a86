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
        super().__init__(f"{field} = {_show(value)}: {allowed}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _show(value: Any) -> str:
    if value is MISSING:
        return "<missing>"
    text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."
