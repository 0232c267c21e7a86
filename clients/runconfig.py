"""fedsim's config carried in a Flower ``run_config`` (flat ``"section.key"`` -> scalar).

Values are TOML literals as text (``"0.05"``, ``"[200]"``, ``'"digits"'``), the same
syntax as ``fedsim run --set``, so the ClientApp can be deployed with Flower's
``[tool.flwr.app.config]`` too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from fedsim.config import Config, apply_overrides, from_dict


def _literal(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_literal(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot encode {value!r}")


def _flatten(prefix: str, node: Any, out: dict[str, str]) -> None:
    if isinstance(node, Mapping):
        if not node and prefix:
            return
        for key, value in node.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    elif node is not None:  # None = an unset optional key
        out[prefix] = _literal(node)


def to_run_config(cfg: Config) -> dict[str, str]:
    out: dict[str, str] = {}
    plain = cfg.to_dict()
    for section in ("run", "data", "model", "client", "strategy"):
        _flatten(section, plain[section], out)
    if plain.get("codec"):
        out["codec"] = _literal(plain["codec"])
    return out


def from_run_config(run_config: Mapping[str, Any]) -> Config:
    return _cached(tuple(sorted((k, str(v)) for k, v in run_config.items())))


@functools.lru_cache(maxsize=8)
def _cached(items: tuple[tuple[str, str], ...]) -> Config:
    return from_dict(apply_overrides({}, [f"{k}={v}" for k, v in items]))
