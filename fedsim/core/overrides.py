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

from fedsim.core.errors import ConfigError

#: Keys whose value may be a bare name (``model = "mlp"``) or a table (``[model] name = ...``).
NAMED_KEYS = {"model", "strategy", "dataset", "partitioner"}


def parse_override_value(text: str) -> Any:
    """A TOML literal if it parses (``0.5``, ``true``, ``[1, 2]``, ``"x"``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` edits to raw scenario data (returns a deep copy)."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = [p.strip() for p in key.strip().split(".")]
        if not sep or any(not p for p in parts):
            raise ConfigError("--set", item, "must look like section.key=value")
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
        node[parts[-1]] = parse_override_value(text.strip())
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
