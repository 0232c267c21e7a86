"""Named registries: the extension points of fedsim (datasets, partitioners, models...).

Every registry answers a registered name, and also ``"package.module:attr"`` (see
`fedsim.core.plugins`): the object at that path is imported in whichever process needs it.
An unknown name is a one-line `ConfigError` listing the known names and the path form.

Registration by name reaches other processes too: `origin` says which user module
defined an entry (the scenario then lists it in ``[plugins] imports`` for every process
to import), and `main_entries` hands over entries defined in a script's or notebook's
``__main__``, which a Ray actor receives by value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from fedsim.core.errors import ConfigError
from fedsim.core.plugins import (
    MAIN_MODULES,
    PATH_FORM,
    KwArgs,
    is_path,
    is_user_module,
    load_attr,
    signature_args,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps a name to an entry. ``load`` turns the object at a ``module:attr`` path into an
    entry (checking its kind); without it, paths are refused."""

    def __init__(self, kind: str, load: Callable[[Any, str, str], T] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # the module that registered each name
        self._load = load
        self._by_path: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        key = name.lower()
        if ":" in key:
            raise ValueError(f"{self.kind} names cannot contain ':' (that form is an import path)")
        old = self._entries.get(key)
        if old is entry:
            return  # already known (e.g. a Ray actor's registrations replayed in the driver): keep its origin
        if old is not None and _qualname(old) != _qualname(entry):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = entry  # the same class again (a script also imported as a module): replace
        self._origins[key] = _caller_module()

    def get(self, name: str, field: str) -> T:
        if is_path(name):
            return self._from_path(name, field)
        key = name.lower() if isinstance(name, str) else name
        if not isinstance(key, str) or key not in self._entries:
            form = (f"; your own: {PATH_FORM}, or a name registered by a module in [plugins] imports"
                    if self._load is not None else "")
            raise ConfigError(field, name, f"unknown {self.kind}; known: {', '.join(self.names())}{form}",
                              choices=self.names())
        return self._entries[key]

    def _from_path(self, target: str, field: str) -> T:
        if self._load is None:
            raise ConfigError(field, target, f"must be a registered {self.kind}: {', '.join(self.names())}")
        found = self._by_path.get(target)
        if found is None:
            found = self._by_path[target] = self._load(load_attr(target, field), target, field)
        return found

    def origin(self, name: str) -> str | None:
        """The user module that registered ``name`` (for other processes to import), if any."""
        if is_path(name) or not isinstance(name, str) or name.lower() not in self._entries:
            return None
        module = self._origins.get(name.lower(), "")
        return module if is_user_module(module) else None

    def main_entry(self, name: str) -> T | None:
        """The entry for ``name`` when a script's or notebook's ``__main__`` registered it."""
        if is_path(name) or not isinstance(name, str):
            return None
        entry = self._entries.get(name.lower())
        return entry if entry is not None and self._origins.get(name.lower()) in MAIN_MODULES else None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __reduce__(self) -> tuple[Any, ...]:
        """A registry is a process-wide singleton: it pickles as a reference to its module
        attribute, so another process (a Ray actor) adds to its own copy."""
        import sys

        for mod_name, module in list(sys.modules.items()):
            if mod_name.startswith("fedsim.") and module is not None:
                for attr, value in list(vars(module).items()):
                    if value is self:
                        return (_registry_at, (mod_name, attr))
        raise TypeError(f"the {self.kind} registry is not a module attribute of fedsim and cannot be pickled")

    @property
    def registry(self) -> Registry[T]:
        """Itself (a scenario field's resolver names the registry it looks names up in)."""
        return self

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _caller_module() -> str:
    """The module whose code registered an entry (the first frame outside this module)."""
    import sys

    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def _registry_at(module: str, attr: str) -> Registry[Any]:
    import importlib

    return getattr(importlib.import_module(module), attr)


def _qualname(entry: Any) -> Any:
    fn = getattr(entry, "fn", entry)
    return getattr(fn, "__qualname__", None) or object()


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a plugin that takes none."""


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A registered function and the dataclass of its scenario parameters.

    For a plug-in given by path, ``fn`` adapts the user's object to the registry's calling
    convention, ``params`` is None and ``source`` is the user's object (its signature
    checks the scenario's keys)."""

    fn: Callable[..., Any]
    params: type | None
    source: Any = None


@dataclasses.dataclass(frozen=True)
class PathContract:
    """How a registry takes a user's object by path.

    ``adapt(obj, target, field)`` checks the object and returns a function with the
    registry's calling convention; ``provided`` are the arguments fedsim passes itself
    (not settable from the scenario); ``params = "signature"`` checks the scenario's keys
    against the object's signature, ``"class"`` against a class's ``Params`` dataclass
    (free keywords when it has none)."""

    adapt: Callable[[Any, str, str], Callable[..., Any]]
    provided: tuple[str, ...] = ()
    params: str = "signature"
    field: str = ""  # the scenario field a registered name of this kind is given in (for errors)


class PluginRegistry(Registry[Plugin]):
    """A registry whose entries take validated parameters from the scenario file."""

    def __init__(self, kind: str, contract: PathContract | None = None) -> None:
        self.contract = contract
        super().__init__(kind, self._adapt if contract is not None else None)

    def _adapt(self, obj: Any, target: str, field: str) -> Plugin:
        assert self.contract is not None
        return Plugin(fn=self.contract.adapt(obj, target, field), params=None, source=obj)

    def register_fn(self, name: str, params: type | None = None) -> Callable[[F], F]:
        """Register ``fn`` under ``name``. Without ``params`` it takes the same contract as a
        plug-in given by path (its keyword arguments checked against its signature, fedsim's
        own arguments passed by name); with a ``params`` dataclass, the registry's internal
        calling convention (fedsim's built-ins)."""
        def decorator(fn: F) -> F:
            if params is None and self.contract is not None:
                self.add(name, self._adapt(fn, name, self.contract.field or self.kind))
            else:
                self.add(name, Plugin(fn=fn, params=params or NoParams))
            return fn

        return decorator

    def resolve_params(self, name: str, raw: Mapping[str, Any], path: str) -> Any:
        """Validate ``raw`` against the parameters of plugin ``name`` (``path`` names the table)."""
        from fedsim.core.schema import parse

        plugin = self.get(name, f"{path}.name")
        if plugin.params is not None:
            return parse(plugin.params, raw, path)
        assert self.contract is not None
        if self.contract.params == "class":
            declared = getattr(plugin.source, "Params", None)
            if isinstance(declared, type) and dataclasses.is_dataclass(declared):
                return parse(declared, raw, path)
            return KwArgs(dict(raw))
        return signature_args(plugin.source, raw, path, self.contract.provided, owner=name)

    def __call__(self, name: str, raw: Mapping[str, Any], path: str) -> Any:
        """The resolver of a scenario field (`fedsim.core.schema.named`): validated parameters."""
        return self.resolve_params(name, raw, path)


def subclass_of(base: type, what: str) -> Callable[[Any, str, str], Any]:
    """A `PathContract.adapt` that accepts a subclass of ``base`` (built as ``cls(params)``)."""
    import inspect

    def adapt(obj: Any, target: str, field: str) -> Any:
        if not (inspect.isclass(obj) and issubclass(obj, base)):
            raise ConfigError(field, target, f"is not a subclass of {base.__module__}.{base.__qualname__} ({what})")
        return obj

    return adapt
