"""``section.key=value`` edits of raw scenario data, and the flat ``"section.key"`` form.

The same TOML-literal syntax serves ``fedsim run --set``, sweep axes and Flower's run
config (``[tool.flwr.app.config]``), where a scenario travels as flat keys.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from fedsim.core.errors import ConfigError, one_line

#: Keys whose value may be a bare name (``model = "mlp"``) or a table (``[model] name = ...``).
NAMED_KEYS = {"model", "strategy", "dataset", "partitioner"}


#: Tables and arrays nested deeper than this are refused (no scenario needs more; Python's
#: recursion would fail somewhere on the way).
MAX_DEPTH = 32


def _too_deep(data: Any) -> bool:
    stack = [(data, 0)]
    while stack:
        node, level = stack.pop()
        if level > MAX_DEPTH:
            return True
        if isinstance(node, Mapping):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return False


def loads_toml(text: str, field: str, shown: Any) -> dict[str, Any]:
    """TOML text -> data, every failure a one-line `ConfigError` on ``field`` (deep nesting,
    integers beyond Python's 4,300-digit limit, syntax)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(field, shown, f"invalid TOML: {one_line(str(exc), 300)}") from None
    except RecursionError:
        raise ConfigError(field, shown, f"invalid TOML: nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # int("9" * 5000): beyond the interpreter's digit limit
        why = "an integer of more than 4300 digits" if "digits" in str(exc) else one_line(str(exc), 200)
        raise ConfigError(field, shown, f"invalid TOML: {why}") from None
    if _too_deep(data):
        raise ConfigError(field, shown, f"invalid TOML: nested too deeply (at most {MAX_DEPTH} levels)")
    return data


def parse_override_value(text: str, field: str = "--set") -> Any:
    """A TOML literal if it parses (``0.5``, ``true``, ``[1, 2]``, ``"x"``), else the raw
    string (a bare name: ``fedavg``, ``my_pkg.mod:attr``). A value that starts like a quoted
    string, an array or a table but does not parse is an error, not a string."""
    if "\n" in text or "\r" in text:
        raise ConfigError(field, text, "must be one line (one section.key=value per --set)")
    try:
        return loads_toml(f"v = {text}", field, text)["v"]
    except ConfigError as exc:
        if "invalid TOML: " in str(exc) and "nested too deeply" not in str(exc) and "digits" not in str(exc) \
                and text.strip()[:1] not in ("\"", "'", "[", "{"):
            return text
        raise


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` edits to raw scenario data (returns a deep copy)."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = [p.strip() for p in key.strip().split(".")]
        if not sep or any(not p for p in parts):
            raise ConfigError("--set", item, "must look like section.key=value")
        if "\n" in item or "\r" in item:
            raise ConfigError("--set", item, "must be one line: one section.key=value per --set")
        node: dict[str, Any] = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if isinstance(nxt, str) and part in NAMED_KEYS:  # `model = "mlp"` -> table
                nxt = {"name": nxt}
            elif nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), nxt, f"is not a table; cannot set {key.strip()}")
            node[part] = nxt
            node = nxt
        node[parts[-1]] = parse_override_value(text.strip(), ".".join(parts))
    return out


def literal(value: Any) -> str:
    """A TOML literal for a plain value (the inverse of `parse_override_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {literal(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot encode {value!r}")


def flatten(prefix: str, node: Any, out: dict[str, str]) -> None:
    """Plain nested data -> ``out["a.b.c"] = "<TOML literal>"`` (None = an unset optional key)."""
    if isinstance(node, Mapping):
        if not node and prefix:
            return
        for key, value in node.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    elif node is not None:
        out[prefix] = literal(node)


def unflatten(items: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``"a.b" -> literal`` keys back to nested raw data."""
    return apply_overrides({}, [f"{k}={v}" for k, v in items.items()])
