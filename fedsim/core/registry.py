"""Named registries: the extension points of fedsim (datasets, partitioners, models...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from fedsim.core.errors import ConfigError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps a name to an entry; an unknown name is a `ConfigError` listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        key = name.lower()
        old = self._entries.get(key)
        if old is not None and getattr(old, "__qualname__", None) != getattr(entry, "__qualname__", object()):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = entry  # the same class again (a script also imported as a module): replace

    def get(self, name: str, field: str) -> T:
        key = name.lower() if isinstance(name, str) else name
        if not isinstance(key, str) or key not in self._entries:
            raise ConfigError(field, name, f"unknown {self.kind}; known: {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a plugin that takes none."""


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A registered function and the dataclass of its scenario parameters."""

    fn: Callable[..., Any]
    params: type


class PluginRegistry(Registry[Plugin]):
    """A registry whose entries take validated parameters from the scenario file."""

    def register_fn(self, name: str, params: type = NoParams) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            self.add(name, Plugin(fn=fn, params=params))
            return fn

        return decorator

    def resolve_params(self, name: str, raw: Mapping[str, Any], path: str) -> Any:
        """Validate ``raw`` against the parameters of plugin ``name`` (``path`` names the table)."""
        from fedsim.core.schema import parse

        return parse(self.get(name, f"{path}.name").params, raw, path)
