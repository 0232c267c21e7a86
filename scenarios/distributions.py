"""Per-client quantities drawn once per run: speeds, bandwidths, latencies.

A scenario writes a distribution as a table, e.g. ``speed = { name = "lognormal",
mu = 0.0, sigma = 0.5 }``. Each registered distribution has a parameter dataclass and
``sample(params, rng, n) -> array``. The resolvers below also check the quantity's
domain (``positive`` for speeds and bandwidths, ``nonnegative`` for latencies), so a
negative bandwidth is a one-line error naming the field.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.errors import ConfigError
from fedsim.core.plugins import call_with, is_path
from fedsim.core.registry import PathContract, PluginRegistry
from fedsim.core.schema import Named, option


def _adapt(obj: Any, target: str, field: str) -> Callable[..., np.ndarray]:
    if not callable(obj):
        raise ConfigError(field, target, "must be a function sample(rng, n, **params) -> n values")

    def sample_user(params: Any, rng: np.random.Generator, n: int) -> np.ndarray:
        values = np.asarray(call_with(obj, params, field, target, rng=rng, n=n), dtype=np.float64).reshape(-1)
        if values.shape != (n,) or np.isnan(values).any():
            raise ConfigError(field, target, f"must return {n} numbers, got shape {values.shape}")
        return values

    return sample_user


#: A user's distribution by path: ``fn(rng, n, **params)`` returning ``n`` values.
DISTRIBUTIONS = PluginRegistry("distribution", PathContract(adapt=_adapt, field="distribution", provided=("rng", "n")))


def register_distribution(name: str, params: type | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a distribution under ``name``, as by path: ``fn(rng, n, **args) -> n values``.
    fedsim's built-ins pass a ``params`` dataclass and take ``sample(params, rng, n)``."""
    return DISTRIBUTIONS.register_fn(name, params)


@dataclasses.dataclass(frozen=True)
class ConstantParams:
    value: float = option(1.0, doc="every client gets this value (inf allowed for bandwidths)")


@register_distribution("constant", ConstantParams)
def constant(p: ConstantParams, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.full(n, p.value, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class LogNormalParams:
    mu: float = option(0.0, ge=-50.0, le=50.0, doc="mean of the log")
    sigma: float = option(0.5, ge=0.0, le=20.0, doc="standard deviation of the log")
    scale: float = option(1.0, gt=0.0, doc="multiplies every draw")


@register_distribution("lognormal", LogNormalParams)
def lognormal(p: LogNormalParams, rng: np.random.Generator, n: int) -> np.ndarray:
    return p.scale * rng.lognormal(p.mu, p.sigma, n)


@dataclasses.dataclass(frozen=True)
class ParetoParams:
    shape: float = option(2.0, gt=0.0, le=1000.0, doc="tail index a; smaller = heavier tail")
    scale: float = option(1.0, gt=0.0, doc="the minimum value x_m")


@register_distribution("pareto", ParetoParams)
def pareto(p: ParetoParams, rng: np.random.Generator, n: int) -> np.ndarray:
    """Classical Pareto(x_m, a): values >= scale, P(X > x) = (scale / x)^shape."""
    return p.scale * (1.0 + rng.pareto(p.shape, n))


@dataclasses.dataclass(frozen=True)
class UniformParams:
    low: float = option(0.5)
    high: float = option(1.5)

    def check(self, path: str) -> None:
        if not self.high >= self.low:
            raise ConfigError(f"{path}.high", self.high, f"must be >= low ({self.low:g})")


@register_distribution("uniform", UniformParams)
def uniform(p: UniformParams, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(p.low, p.high, n)


@dataclasses.dataclass(frozen=True)
class TiersParams:
    values: tuple[float, ...] = option((1.0,), doc="the tiers' values")
    probs: tuple[float, ...] = option((1.0,), ge=0.0, le=1.0, doc="probability of each tier (sums to 1)")

    def check(self, path: str) -> None:
        if len(self.values) == 0:
            raise ConfigError(f"{path}.values", list(self.values), "must list at least one tier")
        if len(self.probs) != len(self.values):
            raise ConfigError(f"{path}.probs", list(self.probs), f"must have one probability per value ({len(self.values)})")
        if not math.isclose(sum(self.probs), 1.0, abs_tol=1e-6):
            raise ConfigError(f"{path}.probs", list(self.probs), f"must sum to 1 (they sum to {sum(self.probs):g})")


@register_distribution("tiers", TiersParams)
def tiers(p: TiersParams, rng: np.random.Generator, n: int) -> np.ndarray:
    probs = np.asarray(p.probs, dtype=np.float64)
    return np.asarray(p.values, dtype=np.float64)[rng.choice(len(p.values), size=n, p=probs / probs.sum())]


@dataclasses.dataclass(frozen=True)
class TraceParams:
    path: str = option("", doc="CSV file with a header row")
    column: str = option("value", doc="the column holding the values")
    order: str = option("cycle", choices=("cycle", "random"),
                        doc="client i takes row i mod rows (cycle) or a random row (random)")
    values: tuple[float, ...] = dataclasses.field(default=(), metadata={"doc": "filled from the file"})

    def check(self, path: str) -> None:
        if not self.values:
            object.__setattr__(self, "values", read_column(self.path, self.column, f"{path}.path"))


@register_distribution("trace", TraceParams)
def trace(p: TraceParams, rng: np.random.Generator, n: int) -> np.ndarray:
    values = np.asarray(p.values, dtype=np.float64)
    if p.order == "random":
        return values[rng.integers(0, len(values), n)]
    return values[np.arange(n) % len(values)]


def read_column(path: str, column: str, field: str) -> tuple[float, ...]:
    """The numbers in one column of a CSV file; every problem is a one-line ConfigError."""
    rows = read_csv(path, field, required=(column,))
    out = []
    for i, row in enumerate(rows, start=2):
        out.append(parse_float(row[column], field, path, i, column))
    return tuple(out)


def read_csv(path: str, field: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    p = Path(path)
    if not path:
        raise ConfigError(field, path, "required: a CSV trace file")
    if not p.is_file():
        raise ConfigError(field, path, "trace file not found")
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            if not header:
                raise ConfigError(field, path, "trace file is empty")
            missing = [c for c in required if c not in header]
            if missing:
                raise ConfigError(field, path, f"malformed trace: no column {missing[0]!r} (header: {', '.join(header) or 'empty'})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(field, path, f"malformed trace: {exc}") from None
    if not rows:
        raise ConfigError(field, path, "trace file is empty (no data rows)")
    return rows


def parse_client(text: str | None, field: str, path: str, line: int) -> int:
    """A trace row's client id; anything but an integer is a one-line error."""
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(field, path, f"malformed trace: line {line}, client {text!r} is not an integer") from None


def parse_float(text: str | None, field: str, path: str, line: int, column: str) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(field, path, f"malformed trace: line {line}, column {column!r} is {text!r}, not a number")
    return value


def sample(named: Named, rng: np.random.Generator, n: int, field: str = "distribution",
           domain: str = "") -> np.ndarray:
    """``n`` draws; ``domain`` ("positive", "nonnegative") is checked for a user's distribution
    (the registered ones are checked when the scenario is read)."""
    values = DISTRIBUTIONS.get(named.name, f"{field}.name").fn(named.params, rng, n)
    if domain and is_path(named.name):
        ok = values > 0 if domain == "positive" else values >= 0
        if not np.all(ok):
            bad = float(values[~ok][0])
            raise ConfigError(f"{field}.name", named.name, f"drew {bad:g}; this quantity must be "
                                                           f"{'> 0' if domain == 'positive' else '>= 0'}")
    return values


def _support(params: Any) -> list[float]:
    """Values a distribution can produce at its edges, to check against a domain."""
    if isinstance(params, ConstantParams):
        return [params.value]
    if isinstance(params, (TiersParams, TraceParams)):
        return list(params.values)
    if isinstance(params, UniformParams):
        return [params.low, params.high]
    return []  # lognormal, pareto: always > 0


def _resolver(kind: str, ok: Callable[[float], bool], rule: str) -> Callable[[str, Mapping[str, Any], str], Any]:
    def resolve(name: str, raw: Mapping[str, Any], path: str) -> Any:
        params = DISTRIBUTIONS.resolve_params(name, raw, path)
        for value in _support(params):
            if math.isnan(value) or not ok(value):
                if isinstance(params, TraceParams):
                    raise ConfigError(f"{path}.path", params.path, f"the trace holds {value:g}; {kind} must be {rule}")
                where = {ConstantParams: "value", UniformParams: "low", TiersParams: "values"}[type(params)]
                raise ConfigError(f"{path}.{where}", value, f"{kind} must be {rule}")
        return params

    resolve.registry = DISTRIBUTIONS  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)
    return resolve


positive = _resolver("this quantity", lambda v: v > 0, "> 0")
nonnegative = _resolver("this quantity", lambda v: v >= 0, ">= 0")
