"""Plug-ins by import path: ``"package.module:attr"`` wherever a scenario names a registered thing.

The module is imported the way ``python -c "import package.module"`` would import it from
the folder fedsim runs in: the working directory is on the import path, and so is every
folder of ``[plugins] paths`` (relative to the working directory). Each process that needs
the plug-in (the driver, a Ray actor, a sweep cell's process, a SuperNode) imports it
itself; Ray actors and sweep processes inherit the same import path.

A plug-in's own keyword arguments come from the scenario and are checked against its
signature (`signature_args`); the arguments fedsim supplies itself (a dataset's ``seed``,
a model's ``input_shape``, ...) are passed only if the plug-in accepts them (`call_with`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option

#: Modules that define fedsim's own registry entries (never listed as plug-ins to import).
OWN_PREFIX = "fedsim."
#: Modules whose entries cannot be imported by name in another process (a script, a notebook).
MAIN_MODULES = ("__main__", "__mp_main__")

PATH_FORM = '"package.module:attr" (importable from the working directory or [plugins] paths)'


def is_path(name: object) -> bool:
    """Whether a scenario name is an import path (``module:attr``) rather than a registered name."""
    return isinstance(name, str) and ":" in name


def add_import_paths(paths: Iterable[str] = ()) -> None:
    """Put the working directory and ``paths`` (relative to it) on ``sys.path``, once each."""
    cwd = os.getcwd()
    for p in [cwd, *(os.path.join(cwd, q) for q in paths)]:
        if p not in sys.path:
            sys.path.append(p)


def _library_dirs() -> tuple[str, ...]:
    """Folders of the standard library, installed packages and fedsim itself."""
    import sysconfig

    dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    for name in ("fedsim", "fedsim.clients", "fedsim.scenarios", "fedsim.strategies"):
        module = sys.modules.get(name)
        for folder in getattr(module, "__path__", []) or []:
            dirs.add(folder)
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def _own_frames(exc: BaseException) -> list[Any]:
    """The traceback frames in the user's own code (not the standard library's, an installed
    package's or fedsim's)."""
    import traceback

    libraries = _library_dirs()
    return [f for f in traceback.extract_tb(exc.__traceback__)
            if not os.path.realpath(f.filename).startswith(libraries) and not f.filename.startswith("<frozen")]


def _user_error(exc: BaseException) -> str:
    """``Type: message at file.py:line``, for the innermost frame of the user's own code."""
    import traceback

    frames = _own_frames(exc) or traceback.extract_tb(exc.__traceback__)
    at = frames[-1] if frames else None
    where = f" at {Path(at.filename).name}:{at.lineno}" if at is not None else ""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}{where}"


def user_failure(field: str, value: Any, doing: str, exc: BaseException) -> ConfigError:
    """A one-line `ConfigError` for the user's code raising, carrying the user's own frames
    (``user_frames``: what the CLI prints below the line; never fedsim's or a library's)."""
    import traceback

    err = ConfigError(field, value, f"{doing} {_user_error(exc)}")
    own = _own_frames(exc)
    err.user_frames = "".join(traceback.format_list(own)) if own else ""  # type: ignore[attr-defined]
    return err


def import_module(name: str, field: str, value: Any = None) -> types.ModuleType:
    """Import a module by dotted name, or a ``.py`` file by path; one-line `ConfigError` otherwise."""
    add_import_paths()
    shown = name if value is None else value
    try:
        if name.endswith(".py"):
            path = Path(name)
            if not path.is_file():
                raise ConfigError(field, shown, "no such Python file")
            mod_name = "fedsim_plugin_" + "".join(ch if ch.isalnum() else "_" for ch in str(path.resolve()))
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
            return module
        return importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        hint = "" if missing != name.split(".")[0] else f"; is it importable from {os.getcwd()}?"
        raise ConfigError(field, shown, f"cannot import module {name!r}: no module named {missing!r}{hint}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise user_failure(field, shown, f"importing {name!r} raised", exc) from None


def load_attr(target: str, field: str) -> Any:
    """The object at ``"package.module:attr"`` (``attr`` may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr or any(not p.isidentifier() for p in attr.split(".")):
        raise ConfigError(field, target, f"must be a registered name or {PATH_FORM}")
    module = import_module(module_name, field, target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, target, f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_plugins(imports: Iterable[str], paths: Iterable[str] = (), field: str = "plugins.imports") -> None:
    """Import each plug-in module (dotted name or ``.py`` path) so its registrations run."""
    add_import_paths(paths)
    for i, name in enumerate(imports):
        import_module(name, f"{field}[{i}]")


def defining_module(entry: Any) -> str:
    """The module that defined a registry entry (a function or class)."""
    fn = getattr(entry, "fn", entry)
    return getattr(fn, "__module__", "") or ""


def is_user_module(module: str) -> bool:
    """An importable module of the user's (not fedsim's, not a script's ``__main__``)."""
    return bool(module) and not module.startswith(OWN_PREFIX) and module not in MAIN_MODULES


# --------------------------------------------------------------- keyword arguments
class KwArgs(Mapping[str, Any]):
    """A plug-in's validated keyword arguments: frozen, hashable, readable as attributes."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_items", {k: _frozen(v) for k, v in (items or {}).items()})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KwArgs is frozen")

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items(), key=lambda kv: kv[0])))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KwArgs) and self._items == other._items

    def __repr__(self) -> str:
        return f"KwArgs({self._items!r})"

    def __plain__(self) -> dict[str, Any]:
        return dict(self._items)

    def __reduce__(self) -> tuple[Any, ...]:
        return (KwArgs, (dict(self._items),))


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping) and not isinstance(value, KwArgs):
        return KwArgs(value)
    return value


_SCALARS = (bool, int, float, str)


def _scalar_hint(tp: Any) -> Any:
    """The scalar type an annotation asks for (``float | None`` -> float), else None."""
    if tp in _SCALARS:
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in _SCALARS:
            return args[0]
    return None


def signature_args(obj: Any, raw: Mapping[str, Any], path: str, provided: Iterable[str] = (),
                   owner: str = "") -> KwArgs:
    """Check a scenario table against ``obj``'s signature (a function or a class's ``__init__``).

    Unknown keys (unless it takes ``**kwargs``), missing required arguments and scalar
    types are one-line errors naming ``path.key``. ``provided`` names the arguments
    fedsim passes itself; the scenario may not set them.
    """
    from fedsim.core.schema import coerce

    owner = owner or getattr(obj, "__qualname__", str(obj))
    provided = set(provided)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return KwArgs(dict(raw))
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks
        hints = {}
    params = {n: p for n, p in sig.parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    allowed = [n for n in params if n not in provided]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field = f"{path}.{key}"
        if key in provided:
            raise ConfigError(field, value, f"is supplied by fedsim to {owner}; remove it from the scenario")
        if key not in params and not open_ended:
            raise ConfigError(field, value, f"unknown argument of {owner}; allowed: {', '.join(allowed) or 'none'}",
                              choices=allowed, typo=key)
        hint = _scalar_hint(hints.get(key))
        out[key] = coerce(field, value, hint) if hint is not None else value
    for name, p in params.items():
        if name not in provided and p.default is inspect.Parameter.empty and name not in out:
            passes = f" (fedsim passes {', '.join(sorted(provided))} by name)" if provided else ""
            raise ConfigError(f"{path}.{name}", None, f"required argument of {owner}: set it in the scenario{passes}")
    return KwArgs(out)


def accepts(obj: Any, name: str) -> bool:
    """Whether calling ``obj`` may pass keyword ``name``: a parameter of that name, or
    ``**kwargs`` of the user's own (a class that inherits ``torch.nn.Module.__init__(*args,
    **kwargs)`` takes none)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    p = sig.parameters.get(name)
    if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return True
    init = getattr(obj, "__init__", None) if inspect.isclass(obj) else obj
    if getattr(init, "__module__", "") in ("builtins",) or str(getattr(init, "__module__", "")).startswith("torch"):
        return False
    return any(q.kind == q.VAR_KEYWORD for q in sig.parameters.values())


def call_with(obj: Any, kwargs: Mapping[str, Any], field: str = "", target: str = "", **provided: Any) -> Any:
    """``obj(**kwargs, **provided)``, passing only the ``provided`` arguments it accepts.

    With ``field``, an exception raised by the user's code becomes a one-line `ConfigError`
    naming the field, the plug-in and where in the user's code it was raised."""
    extra = {k: v for k, v in provided.items() if accepts(obj, k)}
    if not field:
        return obj(**{**_thawed(kwargs), **extra})
    try:
        return obj(**{**_thawed(kwargs), **extra})
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's plug-in raised: report it in one line
        raise user_failure(field, target or getattr(obj, "__qualname__", str(obj)), "raised", exc) from None


def _thawed(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    def thaw(v: Any) -> Any:
        if isinstance(v, KwArgs):
            return {k: thaw(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [thaw(x) for x in v]
        return v

    return {k: thaw(v) for k, v in kwargs.items()}


# ------------------------------------------------------------------- [plugins]
@dataclasses.dataclass(frozen=True)
class PluginsSection:
    """``[plugins]``: modules every process imports before reading the scenario (so names
    they register resolve in Ray actors, sweep processes and SuperNodes too), and extra
    folders for the import path (relative to the working directory)."""

    imports: tuple[str, ...] = option((), doc='modules ("my_pkg.plugins") or files ("plugins.py") to import '
                                              "in every process")
    paths: tuple[str, ...] = option((), doc="folders put on the import path in every process")

    def load(self, field: str = "plugins") -> None:
        """Import every listed module (one-line `ConfigError` if one fails)."""
        import_plugins(self.imports, self.paths, f"{field}.imports")


def load_plugins_first(raw: Mapping[str, Any], field: str = "plugins") -> Any:
    """Parse and import a raw ``[plugins]`` table before the rest of a scenario is read."""
    from fedsim.core.schema import parse

    section = parse(PluginsSection, raw.get("plugins"), field)
    section.load(field)
    return section
