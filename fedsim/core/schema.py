"""Typed parsing of plain TOML data into frozen dataclasses, with one-line errors.

Each dataclass field may carry constraints in its metadata (see `option`); parsing
checks types, ranges, choices and unknown keys, and names the dotted field path in
every error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, get_args, get_origin

from fedsim.core.errors import MISSING, ConfigError

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with validation constraints."""
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples / mappings proxies for defaults")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Named:
    """A registry choice: its name and its validated parameters (a dataclass)."""

    name: str
    params: Any


def named(kind: str, resolver: str, default: Any = dataclasses.MISSING) -> Any:
    """A field holding a registry choice, written as ``"name"`` or ``{name = ..., param = ...}``.

    ``resolver`` is ``"module:attr"``: a callable taking ``(name, params, path)`` and
    returning the validated parameters (imported lazily, when parsing), usually a
    `fedsim.core.registry.PluginRegistry`; its ``registry`` attribute (if any) is the
    registry the name is looked up in (see `iter_named`). ``default`` is a name or an
    already resolved `Named`.
    """
    return dataclasses.field(default=default, metadata={"named": kind, "resolver": resolver})


def named_list(kind: str, resolver: str, check: str | None = None) -> Any:
    """A field holding a list of registry choices (TOML ``[[section]]`` tables), default empty.

    ``check`` (``"module:function"``) validates the whole list, e.g. its order."""
    return dataclasses.field(default=(), metadata={"named": kind, "resolver": resolver, "list": True,
                                                   "check": check})


def _parse_named_list(path: str, value: Any, meta: Mapping[str, Any]) -> tuple[Named, ...]:
    import importlib

    if isinstance(value, (Mapping, str)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(path, value, f"must be a list of {meta['named']} tables")
    out = tuple(_parse_named(f"{path}[{i}]", item, meta) for i, item in enumerate(value))
    if meta.get("check"):
        module, func = meta["check"].split(":")
        getattr(importlib.import_module(module), func)(out, path)
    return out


def _parse_named(path: str, value: Any, meta: Mapping[str, Any], default: Any = dataclasses.MISSING) -> Named:

    kind = meta["named"]
    if isinstance(value, Named):
        value = {"name": value.name, **to_plain(value.params)}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, f'must be a {kind} name or a table with "name"')
    raw = dict(value)
    name = raw.pop("name", MISSING)
    if name is MISSING and isinstance(default, (Named, str)):
        name = default.name if isinstance(default, Named) else default  # `x.value = 3` keeps the default's kind
    if name is MISSING:
        raise ConfigError(f"{path}.name", MISSING, f"required: the {kind} to use")
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name", name, f"must be a {kind} name (a string)")
    resolve = resolver_of(meta)
    key = name if ":" in name else name.lower()
    return Named(name=key, params=resolve(name, raw, path))


def resolver_of(meta: Mapping[str, Any]) -> Any:
    import importlib

    module, func = meta["resolver"].split(":")
    return getattr(importlib.import_module(module), func)


def iter_named(obj: Any) -> Iterator[tuple[Any, Named]]:
    """Every registry choice in a parsed dataclass tree: ``(registry, Named)`` pairs, where
    ``registry`` is the resolver's ``registry`` attribute (None if it has none)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("named"):
            registry = getattr(resolver_of(f.metadata), "registry", None)
            for item in (value if isinstance(value, tuple) else (value,)):
                if isinstance(item, Named):
                    yield registry, item
        elif isinstance(value, tuple):
            for item in value:
                yield from iter_named(item)
        else:
            yield from iter_named(value)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def describe_range(meta: Mapping[str, Any]) -> str | None:
    parts = []
    for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{op} {_num(meta[key])}")
    if not parts:
        return None
    lo = {"gt", "ge"} & {k for k in meta if meta.get(k) is not None}
    hi = {"lt", "le"} & {k for k in meta if meta.get(k) is not None}
    low = next((meta[k] for k in lo), None)
    high = next((meta[k] for k in hi), None)
    if lo and hi and high == 1 and low == 0:
        left = "(" if "gt" in lo else "["
        right = ")" if "lt" in hi else "]"
        return f"must be in {left}0, 1{right}"
    return "must be " + " and ".join(parts)


def check_range(path: str, value: float, meta: Mapping[str, Any]) -> None:
    bad = (
        (meta.get("gt") is not None and not value > meta["gt"])
        or (meta.get("ge") is not None and not value >= meta["ge"])
        or (meta.get("lt") is not None and not value < meta["lt"])
        or (meta.get("le") is not None and not value <= meta["le"])
    )
    if bad:
        raise ConfigError(path, value, describe_range(meta) or "out of range")


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    origin = get_origin(tp)
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return getattr(tp, "__name__", str(tp))


def coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and type(None) in get_args(tp):
            return None
        return coerce(path, value, args[0])
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)
            raise ConfigError(path, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "must be a number")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(path, value, "is too large for a number (at most about 1.8e308)") from None
        if math.isnan(value):
            raise ConfigError(path, value, "must be a number, not NaN")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "must be a string")
        return value
    if origin is tuple:
        (inner, *_rest) = get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, f"must be {_type_name(tp)}")
        return tuple(coerce(f"{path}[{i}]", v, inner) for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(path, value, "must be a table")
        return types.MappingProxyType(dict(value))
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def parse(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass ``cls`` from a mapping, validating every field."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, data, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields) or "no keys"
            raise ConfigError(f"{path}.{key}" if path else str(key), data[key], f"unknown key; allowed: {allowed}",
                              choices=fields, typo=key)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        fpath = f"{path}.{name}" if path else name
        if f.metadata.get("list"):
            values[name] = _parse_named_list(fpath, data[name], f.metadata) if name in data else ()
            continue
        if f.metadata.get("named"):
            if name in data and data[name] is None and f.default is None:
                values[name] = None  # an optional registry choice, written out as unset
            elif name in data:
                values[name] = _parse_named(fpath, data[name], f.metadata, f.default)
            elif f.default is None:
                values[name] = None  # an optional registry choice, unset
            elif f.default is not dataclasses.MISSING:
                values[name] = _parse_named(fpath, f.default, f.metadata)
            else:
                raise ConfigError(f"{fpath}.name", MISSING, f"required: the {f.metadata['named']} to use")
            continue
        if name in data:
            value = coerce(fpath, data[name], hints[name])
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise ConfigError(fpath, MISSING, f"required ({_type_name(hints[name])})")
        meta = f.metadata
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(fpath, value, f"must be one of {', '.join(map(str, meta['choices']))}",
                              choices=meta["choices"])
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_range(fpath, value, meta)
        elif isinstance(value, tuple):
            for i, v in enumerate(value):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    check_range(f"{fpath}[{i}]", v, meta)
        values[name] = value
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        check(path)
    return obj


def to_plain(obj: Any) -> Any:
    """Dataclasses/mappings/tuples -> plain dicts/lists (TOML/JSON friendly)."""
    if isinstance(obj, Named):
        return {"name": obj.name, **to_plain(obj.params)}
    if hasattr(obj, "__plain__"):
        return to_plain(obj.__plain__())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
