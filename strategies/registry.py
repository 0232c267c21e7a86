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
from fedsim.core.plugins import is_path, user_failure
from fedsim.core.registry import Registry
from fedsim.core.schema import coerce

StrategyFactory = Callable[..., Strategy]


def _load_class(obj: Any, target: str, field: str) -> StrategyFactory:
    if not (inspect.isclass(obj) and issubclass(obj, Strategy)):
        raise ConfigError(field, target, "is not a flwr.serverapp.strategy.Strategy subclass")
    return obj


STRATEGIES: Registry[StrategyFactory] = Registry("strategy", load=_load_class)

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
    for module in OURS:
        importlib.import_module(module)


OURS = ("fedsim.strategies.fednova", "fedsim.strategies.fedbuff", "fedsim.strategies.scaffold",
        "fedsim.strategies.personalized")

Rule = tuple[Callable[[Any], bool], str]


def _rules(**rules: Rule) -> dict[str, Rule]:
    return rules


_FRACTION: Rule = (lambda v: 0 < v <= 1, "must be in (0, 1]")
_COUNT: Rule = (lambda v: v >= 0, "must be >= 0")
_POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
_UNIT: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")

#: Argument ranges of Flower's strategies, owned by the class that declares the argument
#: (and inherited by Flower's own subclasses). A user's strategy is checked against its own
#: signature only: an argument it declares itself never meets these rules; one it passes
#: on to a Flower base class through ``**kwargs`` does. Our strategies and a user's may
#: declare ``fedsim_arg_rules = {"name": (predicate, "must be ...")}`` on the class.
FLOWER_RULES: dict[type, dict[str, Rule]] = {
    flwr_strategy.FedAvg: _rules(
        fraction_train=_FRACTION,
        fraction_evaluate=(lambda v: 0 <= v <= 1, "must be in (0, 1], or 0 to skip federated evaluation"),
        min_train_nodes=_COUNT, min_evaluate_nodes=_COUNT, min_available_nodes=_COUNT),
    flwr_strategy.FedProx: _rules(proximal_mu=_COUNT),
    flwr_strategy.FedAdam: _rules(eta=_POSITIVE, eta_l=_POSITIVE, beta_1=_UNIT, beta_2=_UNIT, tau=_POSITIVE),
    flwr_strategy.FedYogi: _rules(eta=_POSITIVE, eta_l=_POSITIVE, beta_1=_UNIT, beta_2=_UNIT, tau=_POSITIVE),
    flwr_strategy.FedAdagrad: _rules(eta=_POSITIVE, eta_l=_POSITIVE, tau=_POSITIVE),
    flwr_strategy.FedAvgM: _rules(server_learning_rate=_POSITIVE, server_momentum=_UNIT),
    flwr_strategy.FedTrimmedAvg: _rules(beta=(lambda v: 0 <= v < 0.5, "must be in [0, 0.5)")),
    flwr_strategy.MultiKrum: _rules(num_malicious_nodes=_COUNT, num_nodes_to_select=_COUNT),
    flwr_strategy.Bulyan: _rules(num_malicious_nodes=_COUNT),
    flwr_strategy.QFedAvg: _rules(client_learning_rate=_POSITIVE, q=_COUNT),
    flwr_strategy.DifferentialPrivacyServerSideFixedClipping: _rules(
        noise_multiplier=_COUNT, clipping_norm=_POSITIVE, num_sampled_clients=(lambda v: v >= 1, "must be >= 1")),
    flwr_strategy.DifferentialPrivacyClientSideFixedClipping: _rules(
        noise_multiplier=_COUNT, clipping_norm=_POSITIVE, num_sampled_clients=(lambda v: v >= 1, "must be >= 1")),
    flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping: _rules(
        noise_multiplier=_COUNT, num_sampled_clients=(lambda v: v >= 1, "must be >= 1"),
        initial_clipping_norm=_POSITIVE, target_clipped_quantile=(lambda v: 0 <= v <= 1, "must be in [0, 1]")),
    flwr_strategy.DifferentialPrivacyClientSideAdaptiveClipping: _rules(
        noise_multiplier=_COUNT, num_sampled_clients=(lambda v: v >= 1, "must be >= 1"),
        initial_clipping_norm=_POSITIVE, target_clipped_quantile=(lambda v: 0 <= v <= 1, "must be in [0, 1]")),
}


def rule_for(owner: type | None, arg: str) -> Rule | None:
    """The range rule of argument ``arg`` as declared by ``owner`` (the class whose
    signature declares it): Flower's table along Flower's own class tree, else the
    owner's ``fedsim_arg_rules`` (not inherited)."""
    if owner is None:
        return None
    if owner.__module__.startswith("flwr."):
        for cls in owner.__mro__:
            rule = FLOWER_RULES.get(cls, {}).get(arg)
            if rule is not None:
                return rule
        return None
    own = vars(owner).get("fedsim_arg_rules")
    return own.get(arg) if isinstance(own, Mapping) else None


_SCALARS = (bool, int, float, str)


def resolve_class(name: str, field: str) -> StrategyFactory:
    """A registered name, or ``package.module:Class`` for a user's own Strategy."""
    if not is_path(name):
        _load_ours()
    return STRATEGIES.get(name, field)


def _hints(factory: Any) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks
        return {}


def _configurable(tp: Any) -> bool:
    """Whether an annotation is TOML-expressible: a scalar (possibly Optional), or a tuple of them."""
    if tp in _SCALARS:
        return True
    if typing.get_origin(tp) is tuple:  # e.g. tuple[str, ...]: a TOML array of scalars
        return all(a in _SCALARS or a is Ellipsis for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(a in _SCALARS or a is type(None) for a in typing.get_args(tp))
    return False


def _parameters(factory: StrategyFactory
                ) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool, dict[str, type | None]]:
    """Keyword parameters, their type hints and the class declaring each; a class whose
    ``__init__`` takes ``**kwargs`` also accepts (and is checked against) its base classes'
    parameters."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    owners: dict[str, type | None] = {}
    classes = [c for c in factory.__mro__ if "__init__" in vars(c)] if inspect.isclass(factory) else [factory]
    open_ended = False
    for cls in classes:
        sig = inspect.signature(cls.__init__ if inspect.isclass(factory) else cls)
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in params:
                params[p.name] = p
                owners[p.name] = cls if inspect.isclass(cls) else None
        for k, v in _hints(cls).items():
            hints.setdefault(k, v)
        open_ended = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        if not open_ended or cls in (Strategy, object):
            break
    return params, hints, open_ended and not inspect.isclass(factory), owners


def resolve_strategy_args(name: str, raw: Mapping[str, Any], path: str) -> StrategyArgs:
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


resolve_strategy_args.registry = STRATEGIES  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)


def _check_args(factory: StrategyFactory, name: str, raw: Mapping[str, Any], path: str,
                skip: tuple[str, ...] = ()) -> dict[str, Any]:
    params, hints, has_var_kw, owners = _parameters(factory)
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
            raise ConfigError(field, value, f"unknown argument of {name}; allowed: {', '.join(allowed)}",
                              choices=allowed, typo=key)
        if key not in allowed:
            raise ConfigError(field, value, "takes a Python object and cannot be set from a scenario file")
        if key in hints:
            value = coerce(field, value, hints[key])
        rule = rule_for(owners.get(key), key)
        if rule is not None and not isinstance(value, bool) and isinstance(value, (int, float, str)):
            ok, text = rule
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


def build_strategy(name: str, args: StrategyArgs | Mapping[str, Any]) -> Strategy:
    factory = resolve_class(name, "strategy.name")
    kwargs = dict(args.args if isinstance(args, StrategyArgs) else args)
    try:
        strategy = factory(**kwargs)
    except (ValueError, TypeError) as exc:  # the strategy's own argument checks
        raise ConfigError("strategy", kwargs, f"{name} refused its arguments: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a user's strategy raised while being built
        raise user_failure("strategy.name", name, "raised while being built:", exc) from None
    if not isinstance(strategy, Strategy):
        raise ConfigError("strategy.name", name, "did not build a flwr.serverapp.strategy.Strategy")
    if isinstance(args, StrategyArgs) and args.wrapper:
        from fedsim.strategies.wrappers import WRAPPERS

        try:
            strategy = WRAPPERS.get(args.wrapper, "strategy.wrapper.name")(strategy, **dict(args.wrapper_args))
        except (ValueError, TypeError) as exc:
            raise ConfigError("strategy.wrapper", dict(args.wrapper_args), f"{args.wrapper}: {exc}") from None
    return strategy


def effective_args(name: str, args: StrategyArgs) -> dict[str, Any]:
    """The constructor's defaults overlaid with the scenario's arguments."""
    params, _, _, _ = _parameters(resolve_class(name, "strategy.name"))
    out = {p.name: p.default for p in params.values() if p.default is not inspect.Parameter.empty}
    out.update(args.args)
    return out


def check_against_federation(name: str, args: StrategyArgs, num_clients: int, client_test_fraction: float) -> None:
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
