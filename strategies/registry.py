"""Strategy registry: every Flower built-in by name, ours, and ``module:Class`` paths.

A scenario's ``[strategy]`` table is ``name`` plus the strategy's constructor
arguments. Arguments are checked against the constructor's signature (unknown names,
missing required ones, types) and common ranges, so a typo fails before the run.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import Strategy

from fedsim.core.errors import ConfigError
from fedsim.core.registry import Registry
from fedsim.core.schema import coerce

StrategyFactory = Callable[..., Strategy]

STRATEGIES: Registry[StrategyFactory] = Registry("strategy")

FLOWER_BUILTINS = (
    "FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM", "FedMedian",
    "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "QFedAvg",
)
for _name in FLOWER_BUILTINS:
    STRATEGIES.add(_name.lower(), getattr(flwr_strategy, _name))


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Register a Strategy subclass (or a factory returning one) under ``name``."""
    return STRATEGIES.register(name)


def _load_ours() -> None:
    """Import fedsim's own strategies so they register (kept out of import cycles)."""
    import importlib

    for module in OURS:
        importlib.import_module(module)


OURS = ("fedsim.strategies.fednova", "fedsim.strategies.fedbuff")


# Ranges for argument names that Flower's strategies share.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "fraction_train": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "fraction_evaluate": (lambda v: 0 <= v <= 1, "must be in (0, 1], or 0 to skip federated evaluation"),
    "min_train_nodes": (lambda v: v >= 0, "must be >= 0"),
    "min_evaluate_nodes": (lambda v: v >= 0, "must be >= 0"),
    "min_available_nodes": (lambda v: v >= 0, "must be >= 0"),
    "proximal_mu": (lambda v: v >= 0, "must be >= 0"),
    "eta": (lambda v: v > 0, "must be > 0"),
    "eta_l": (lambda v: v > 0, "must be > 0"),
    "beta_1": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta_2": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "tau": (lambda v: v > 0, "must be > 0"),
    "server_learning_rate": (lambda v: v > 0, "must be > 0"),
    "server_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "num_malicious_nodes": (lambda v: v >= 0, "must be >= 0"),
    "num_nodes_to_select": (lambda v: v >= 0, "must be >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "concurrency": (lambda v: v >= 1, "must be >= 1"),
    "buffer_size": (lambda v: v >= 1, "must be >= 1 (K)"),
    "staleness": (lambda v: v in ("constant", "polynomial", "hinge"), "must be one of constant, polynomial, hinge"),
    "staleness_a": (lambda v: v >= 0, "must be >= 0"),
    "staleness_b": (lambda v: v >= 0, "must be >= 0"),
    "noise_multiplier": (lambda v: v >= 0, "must be >= 0"),
    "clipping_norm": (lambda v: v > 0, "must be > 0"),
    "initial_clipping_norm": (lambda v: v > 0, "must be > 0"),
    "num_sampled_clients": (lambda v: v >= 1, "must be >= 1"),
    "target_clipped_quantile": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
}

_SCALARS = (bool, int, float, str)


def resolve_class(name: str, field: str) -> StrategyFactory:
    """A registered name, or ``package.module:Class`` for a user's own Strategy."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        _working_directory_on_path()
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - report any import failure as config error
            raise ConfigError(field, name, f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
        obj = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigError(field, name, f"module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not (inspect.isclass(obj) and issubclass(obj, Strategy)):
            raise ConfigError(field, name, "is not a flwr.serverapp.strategy.Strategy subclass")
        return obj
    _load_ours()
    return STRATEGIES.get(name, field)


def _working_directory_on_path() -> None:
    """``module:Class`` paths resolve from the working directory, as Flower's app paths do."""
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def _hints(factory: Any) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks
        return {}


def _configurable(tp: Any) -> bool:
    """Whether an annotation is a TOML-expressible scalar type (possibly Optional)."""
    if tp in _SCALARS:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(a in _SCALARS or a is type(None) for a in typing.get_args(tp))
    return False


def _parameters(factory: StrategyFactory) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Keyword parameters and their type hints; a class whose ``__init__`` takes
    ``**kwargs`` also accepts (and is checked against) its base classes' parameters."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    classes = [c for c in factory.__mro__ if "__init__" in vars(c)] if inspect.isclass(factory) else [factory]
    open_ended = False
    for cls in classes:
        sig = inspect.signature(cls.__init__ if inspect.isclass(factory) else cls)
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in params:
                params[p.name] = p
        for k, v in _hints(cls).items():
            hints.setdefault(k, v)
        open_ended = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        if not open_ended or cls in (Strategy, object):
            break
    return params, hints, open_ended and not inspect.isclass(factory)


def resolve_strategy_args(name: str, raw: Mapping[str, Any], path: str) -> "StrategyArgs":
    raw = dict(raw)
    wrapper = raw.pop("wrapper", None)
    args = _check_args(resolve_class(name, f"{path}.name"), name, raw, path)
    if wrapper is None:
        return StrategyArgs(types.MappingProxyType(args))
    from fedsim.strategies.wrappers import WRAPPERS

    if isinstance(wrapper, str):
        wrapper = {"name": wrapper}
    if not isinstance(wrapper, Mapping) or not isinstance(wrapper.get("name"), str):
        raise ConfigError(f"{path}.wrapper", wrapper, 'must be a table with "name" (e.g. "dp_server_fixed")')
    wraw = dict(wrapper)
    wname = wraw.pop("name").lower()
    wcls = WRAPPERS.get(wname, f"{path}.wrapper.name")
    wargs = _check_args(wcls, wname, wraw, f"{path}.wrapper", skip=("strategy",))
    return StrategyArgs(types.MappingProxyType(args), wrapper=wname,
                        wrapper_args=types.MappingProxyType(wargs))


def _check_args(factory: StrategyFactory, name: str, raw: Mapping[str, Any], path: str,
                skip: tuple[str, ...] = ()) -> dict[str, Any]:
    params, hints, has_var_kw = _parameters(factory)
    for k in skip:
        params.pop(k, None)
    allowed = [n for n, p in params.items() if n not in hints or _configurable(hints[n])]
    args: dict[str, Any] = {}
    for key, value in raw.items():
        field = f"{path}.{key}"
        if key not in params:
            if has_var_kw:
                args[key] = value
                continue
            raise ConfigError(field, value, f"unknown argument of {name}; allowed: {', '.join(allowed)}")
        if key not in allowed:
            raise ConfigError(field, value, "takes a Python object and cannot be set from a scenario file")
        if key in hints:
            value = coerce(field, value, hints[key])
        if key in _RANGES and not isinstance(value, bool):
            ok, text = _RANGES[key]
            if not ok(value):
                raise ConfigError(field, value, text)
        args[key] = value
    for pname, p in params.items():
        if p.default is inspect.Parameter.empty and pname not in args:
            raise ConfigError(f"{path}.{pname}", None, f"required argument of {name}")
    return args


@dataclasses.dataclass(frozen=True)
class StrategyArgs:
    """Validated constructor arguments (plain data, so configs stay comparable)."""

    args: Mapping[str, Any]
    wrapper: str = ""  # a registered wrapper (strategies.wrappers), or ""
    wrapper_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __plain__(self) -> dict[str, Any]:
        out = dict(self.args)
        if self.wrapper:
            out["wrapper"] = {"name": self.wrapper, **dict(self.wrapper_args)}
        return out

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.args.items())), self.wrapper, tuple(sorted(self.wrapper_args.items()))))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StrategyArgs) and dict(self.args) == dict(other.args)
                and self.wrapper == other.wrapper and dict(self.wrapper_args) == dict(other.wrapper_args))


def build_strategy(name: str, args: "StrategyArgs | Mapping[str, Any]") -> Strategy:
    factory = resolve_class(name, "strategy.name")
    kwargs = dict(args.args if isinstance(args, StrategyArgs) else args)
    try:
        strategy = factory(**kwargs)
    except (ValueError, TypeError) as exc:  # the strategy's own argument checks
        raise ConfigError("strategy", kwargs, f"{name} refused its arguments: {exc}") from None
    if not isinstance(strategy, Strategy):
        raise ConfigError("strategy.name", name, "did not build a flwr.serverapp.strategy.Strategy")
    if isinstance(args, StrategyArgs) and args.wrapper:
        from fedsim.strategies.wrappers import WRAPPERS

        try:
            strategy = WRAPPERS.get(args.wrapper, "strategy.wrapper.name")(strategy, **dict(args.wrapper_args))
        except (ValueError, TypeError) as exc:
            raise ConfigError("strategy.wrapper", dict(args.wrapper_args), f"{args.wrapper}: {exc}") from None
    return strategy


def effective_args(name: str, args: "StrategyArgs") -> dict[str, Any]:
    """The constructor's defaults overlaid with the scenario's arguments."""
    params, _, _ = _parameters(resolve_class(name, "strategy.name"))
    out = {p.name: p.default for p in params.values() if p.default is not inspect.Parameter.empty}
    out.update(args.args)
    return out


def check_against_federation(name: str, args: "StrategyArgs", num_clients: int, client_test_fraction: float) -> None:
    """Flower's samplers wait forever for more nodes than exist: refuse that up front."""
    eff = effective_args(name, args)
    for key in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes"):
        value = eff.get(key)
        if key == "min_evaluate_nodes" and eff.get("fraction_evaluate") == 0:
            continue
        if isinstance(value, int) and value > num_clients:
            raise ConfigError(f"strategy.{key}", value, f"must be <= data.num_clients ({num_clients})")
    fe = eff.get("fraction_evaluate")
    if isinstance(fe, (int, float)) and fe > 0 and client_test_fraction == 0:
        raise ConfigError("strategy.fraction_evaluate", fe,
                          "must be 0 when data.client_test_fraction is 0 (clients have no local test data)")
