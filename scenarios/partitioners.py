"""Partitioners: split a dataset's sample indices among clients.

Each is registered with ``@register_partitioner(name, params=...)`` and called as
``fn(y, groups, num_clients, params, rng) -> list[index array]``. Every partitioner
returns disjoint index arrays (sorted) whose sizes sum to the dataset, and raises a
`ConfigError` when its parameters cannot be met.

A user's partitioner by path (``data.partitioner = { name = "my_pkg.split:by_site", ... }``)
is called with keywords: ``labels`` (int64 array), ``num_clients``, ``rng`` (a seeded
``numpy.random.Generator``), ``groups`` (each sample's natural owner, or None) — each only
if it takes that parameter — plus its own arguments from the scenario. It returns one
sequence of sample indices per client; `partition` checks that they are in range and
disjoint (a sample may be left unused).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedsim.core.errors import ConfigError
from fedsim.core.plugins import call_with
from fedsim.core.registry import PathContract, PluginRegistry
from fedsim.core.schema import option

Partition = list[np.ndarray]
PartitionFn = Callable[[np.ndarray, "np.ndarray | None", int, Any, np.random.Generator], Partition]


def _adapt(obj: Any, target: str, field: str) -> PartitionFn:
    if not callable(obj):
        raise ConfigError(field, target, "must be a function returning one index array per client")

    def split(y: np.ndarray, groups: np.ndarray | None, num_clients: int, params: Any,
              rng: np.random.Generator) -> Partition:
        return call_with(obj, params, field, target, labels=y, num_clients=num_clients, rng=rng, groups=groups)

    return split


PARTITIONERS = PluginRegistry("partitioner", PathContract(adapt=_adapt, field="data.partitioner.name",
                                                          provided=("labels", "num_clients", "rng", "groups")))


def register_partitioner(name: str, params: type | None = None) -> Callable[[Any], Any]:
    """Register a partitioner under ``name``, as by path: ``fn(labels, num_clients, rng, groups,
    **args)`` (each passed by name if it takes it). fedsim's built-ins pass a ``params``
    dataclass and take ``fn(y, groups, num_clients, params, rng)``."""
    return PARTITIONERS.register_fn(name, params)


def resolve_partitioner_params(name: str, raw: Mapping[str, Any], path: str) -> Any:
    return PARTITIONERS.resolve_params(name, raw, path)


resolve_partitioner_params.registry = PARTITIONERS  # type: ignore[attr-defined]


def partition(name: str, params: Any, y: np.ndarray, groups: np.ndarray | None, num_clients: int,
              rng: np.random.Generator) -> Partition:
    """Split indices ``0..len(y)-1`` among ``num_clients`` clients."""
    if num_clients > len(y):
        raise ConfigError("data.num_clients", num_clients,
                          f"must be <= the {len(y)} training samples available")
    parts = PARTITIONERS.get(name, "data.partitioner.name").fn(y, groups, num_clients, params, rng)
    return checked(parts, name, len(y), num_clients)


def checked(parts: Any, name: str, n: int, num_clients: int) -> Partition:
    """Sorted int64 index arrays, one per client, in range and disjoint; else a one-line error."""
    field = "data.partitioner.name"
    if isinstance(parts, np.ndarray) or not hasattr(parts, "__len__") or isinstance(parts, (str, bytes)):
        raise ConfigError(field, name, f"returned a {type(parts).__name__}; expected one index array per client")
    if len(parts) != num_clients:
        raise ConfigError(field, name, f"returned {len(parts)} index arrays for {num_clients} clients")
    out = []
    for cid, p in enumerate(parts):
        raw = np.asarray(p.detach().cpu().numpy() if hasattr(p, "detach") else p)
        if raw.size and (raw.ndim != 1 or raw.dtype.kind not in "iu"):
            raise ConfigError(field, name, f"client {cid}'s indices are not a 1-d integer array "
                                           f"(dtype {raw.dtype}, shape {raw.shape})")
        idx = np.sort(raw.astype(np.int64).reshape(-1))
        if idx.size and (idx[0] < 0 or idx[-1] >= n):
            raise ConfigError(field, name, f"client {cid} has index {int(idx[0] if idx[0] < 0 else idx[-1])} "
                                           f"outside 0..{n - 1}")
        out.append(idx)
    empty = [cid for cid, idx in enumerate(out) if len(idx) == 0]
    if empty:
        raise ConfigError(field, name, f"gives client {empty[0]} no samples ({len(empty)} empty client(s)); every "
                                       "client needs at least one: lower data.num_clients or change the partitioner")
    every = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    if len(np.unique(every)) != len(every):
        raise ConfigError(field, name, "gives some samples to more than one client (index arrays must be disjoint)")
    return out


def _split_by_counts(indices: np.ndarray, counts: np.ndarray) -> Partition:
    return list(np.split(indices, np.cumsum(counts)[:-1]))


# --------------------------------------------------------------------------- iid
@dataclasses.dataclass(frozen=True)
class IidParams:
    pass


@register_partitioner("iid", params=IidParams)
def iid(y: np.ndarray, groups: Any, num_clients: int, params: IidParams, rng: np.random.Generator) -> Partition:
    """A random permutation cut into near-equal parts."""
    return list(np.array_split(rng.permutation(len(y)), num_clients))


# ---------------------------------------------------------------------- dirichlet
@dataclasses.dataclass(frozen=True)
class DirichletParams:
    alpha: float = option(0.5, gt=0.0, le=1e6, doc="concentration; smaller = more label skew")
    min_size: int = option(1, ge=0, doc="resample until every client holds at least this many samples")
    max_tries: int = option(100, ge=1, le=100_000)


@register_partitioner("dirichlet", params=DirichletParams)
def dirichlet(y: np.ndarray, groups: Any, num_clients: int, params: DirichletParams,
              rng: np.random.Generator) -> Partition:
    """Label skew (Hsu et al. 2019): for each class, shares over clients ~ Dir(alpha)."""
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    if params.min_size * num_clients > len(y):
        raise ConfigError("data.partitioner.min_size", params.min_size,
                          f"{num_clients} clients x {params.min_size} exceeds {len(y)} samples")
    for _ in range(params.max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(num_clients, params.alpha))
            counts = np.floor(shares * len(idx)).astype(np.int64)
            # Hand out the remainder to the largest fractional parts (sizes sum exactly).
            rest = len(idx) - counts.sum()
            if rest:
                order = np.argsort(-(shares * len(idx) - counts), kind="stable")
                counts[order[:rest]] += 1
            for k, chunk in enumerate(_split_by_counts(idx, counts)):
                parts[k].append(chunk)
        out = [np.concatenate(p) for p in parts]
        if min(len(p) for p in out) >= params.min_size:
            return out
    raise ConfigError("data.partitioner.min_size", params.min_size,
                      f"could not give every client this many samples in {params.max_tries} draws "
                      f"(alpha {params.alpha:g}, {num_clients} clients); lower it or raise alpha")


# ------------------------------------------------------------------------- shards
@dataclasses.dataclass(frozen=True)
class ShardsParams:
    shards_per_client: int = option(2, ge=1, le=100_000, doc="k: each client holds exactly k labels")


@register_partitioner("shards", params=ShardsParams)
def shards(y: np.ndarray, groups: Any, num_clients: int, params: ShardsParams,
           rng: np.random.Generator) -> Partition:
    """McMahan et al. 2017: sort by label, cut into shards, give each client k shards.

    Shards are cut inside each class and dealt so that a client's k shards have k
    different labels; every sample is used.
    """
    k = params.shards_per_client
    classes, class_sizes = np.unique(y, return_counts=True)
    n_classes = len(classes)
    total = num_clients * k
    if k > n_classes:
        raise ConfigError("data.partitioner.shards_per_client", k,
                          f"must be <= the number of labels ({n_classes})")
    if total < n_classes:
        raise ConfigError("data.partitioner.shards_per_client", k,
                          f"{num_clients} clients x {k} shards < {n_classes} labels: some labels would be unused")
    # Shards per class: proportional to class size, at least 1, at most num_clients
    # (so two shards of one class never land on the same client), summing to total.
    cap = np.minimum(class_sizes, num_clients)
    if cap.sum() < total:
        raise ConfigError("data.partitioner.shards_per_client", k,
                          f"{num_clients} clients x {k} shards need more samples per label than the data has")
    ideal = class_sizes / class_sizes.sum() * total
    count = np.clip(np.floor(ideal).astype(np.int64), 1, cap)
    while count.sum() != total:
        if count.sum() < total:
            room = np.flatnonzero(count < cap)
            j = room[np.argmax((ideal - count)[room])]
            count[j] += 1
        else:
            room = np.flatnonzero(count > 1)
            j = room[np.argmin((ideal - count)[room])]
            count[j] -= 1
    shard_list: list[np.ndarray] = []
    for c, n_shards in zip(classes, count):
        idx = rng.permutation(np.flatnonzero(y == c))
        shard_list.extend(np.array_split(idx, n_shards))
    # Shards are grouped by class in a run of <= num_clients; dealing shard i to client
    # i mod num_clients gives each client shards from k different classes.
    owner = rng.permutation(num_clients)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for i, shard in enumerate(shard_list):
        parts[owner[i % num_clients]].append(shard)
    return [np.concatenate(p) for p in parts]


# ----------------------------------------------------------------------- quantity
@dataclasses.dataclass(frozen=True)
class QuantityParams:
    exponent: float = option(1.5, gt=0.0, le=100.0, doc="power-law (Pareto) shape; smaller = more unequal sizes")
    min_size: int = option(2, ge=1, doc="samples every client gets before the power-law share")


@register_partitioner("quantity", params=QuantityParams)
def quantity(y: np.ndarray, groups: Any, num_clients: int, params: QuantityParams,
             rng: np.random.Generator) -> Partition:
    """Quantity skew: IID labels, client sizes proportional to Pareto(exponent) draws."""
    n = len(y)
    if params.min_size * num_clients > n:
        raise ConfigError("data.partitioner.min_size", params.min_size,
                          f"{num_clients} clients x {params.min_size} exceeds {n} samples")
    weights = rng.pareto(params.exponent, num_clients) + 1.0
    rest = n - params.min_size * num_clients
    counts = np.full(num_clients, params.min_size, dtype=np.int64) + rng.multinomial(rest, weights / weights.sum())
    return _split_by_counts(rng.permutation(n), counts)


# ------------------------------------------------------------------------ natural
@dataclasses.dataclass(frozen=True)
class NaturalParams:
    pass


@register_partitioner("natural", params=NaturalParams)
def natural(y: np.ndarray, groups: np.ndarray | None, num_clients: int, params: NaturalParams,
            rng: np.random.Generator) -> Partition:
    """One client per natural group (Synthetic device, FEMNIST writer)."""
    if groups is None:
        raise ConfigError("data.partitioner.name", "natural", "this dataset has no natural groups; "
                          "use iid, dirichlet, shards or quantity")
    ids = np.unique(groups)
    if len(ids) != num_clients:
        raise ConfigError("data.num_clients", num_clients,
                          f"must equal the dataset's {len(ids)} natural groups for the natural partitioner")
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(np.searchsorted(ids, groups), minlength=len(ids))
    return _split_by_counts(order, counts)


# ------------------------------------------------------------------ flwr-datasets
@dataclasses.dataclass(frozen=True)
class FlwrDatasetsParams:
    partitioner: str = option("DirichletPartitioner", doc="a class of flwr_datasets.partitioner")
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict,
                                                metadata={"doc": "its arguments (num_partitions and partition_by "
                                                                 "are set by fedsim)"})
    partition_by: str = option("label", choices=("label", "client_id"),
                               doc="the column it partitions by: the labels, or the natural owners")

    def check(self, path: str) -> None:
        cls = _flwr_partitioner(self.partitioner, f"{path}.partitioner")
        import inspect

        accepted = inspect.signature(cls).parameters
        for key in self.args:
            if key in ("num_partitions", "partition_by"):
                raise ConfigError(f"{path}.args.{key}", self.args[key], "is set by fedsim (data.num_clients / "
                                                                        "partition_by)")
            if key not in accepted:
                raise ConfigError(f"{path}.args.{key}", self.args[key],
                                  f"unknown argument of {self.partitioner}; allowed: "
                                  f"{', '.join(k for k in accepted if k not in ('num_partitions', 'partition_by'))}",
                                  choices=accepted, typo=key)

    def __hash__(self) -> int:
        return hash((self.partitioner, tuple(sorted((k, repr(v)) for k, v in self.args.items())), self.partition_by))


def _flwr_partitioner(name: str, field: str) -> Any:
    try:
        from flwr_datasets import partitioner as module
    except ImportError:
        raise ConfigError(field, name, "needs flwr-datasets: pip install 'fedsim[flwr-datasets]'") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(module) if n.endswith("Partitioner") and n != "Partitioner")
        raise ConfigError(field, name, f"not a flwr_datasets partitioner; known: {', '.join(known)}", choices=known)
    return cls


@register_partitioner("flwr_datasets", params=FlwrDatasetsParams)
def flwr_datasets(y: np.ndarray, groups: np.ndarray | None, num_clients: int, params: FlwrDatasetsParams,
                  rng: np.random.Generator) -> Partition:
    """Any flwr-datasets partitioner, run on fedsim's in-memory labels (an index column
    maps its partitions back to samples). Its ``seed`` comes from the data seed."""
    import inspect

    from datasets import Dataset as HFDataset

    cls = _flwr_partitioner(params.partitioner, "data.partitioner.partitioner")
    kwargs = dict(params.args)
    accepted = inspect.signature(cls).parameters
    kwargs["num_partitions"] = num_clients
    if "partition_by" in accepted:
        kwargs["partition_by"] = params.partition_by
    if "seed" in accepted and "seed" not in kwargs:
        kwargs["seed"] = int(rng.integers(2**31 - 1))
    if params.partition_by == "client_id" and groups is None:
        raise ConfigError("data.partitioner.partition_by", "client_id", "this dataset has no natural owners")
    columns = {"label": y.tolist(), "fedsim_index": np.arange(len(y)).tolist()}
    if groups is not None:
        columns["client_id"] = groups.tolist()
    part = cls(**kwargs)
    part.dataset = HFDataset.from_dict(columns)
    try:
        return [np.asarray(part.load_partition(i)["fedsim_index"], dtype=np.int64) for i in range(num_clients)]
    except ValueError as exc:  # e.g. a minimum partition size it cannot meet
        raise ConfigError("data.partitioner.args", dict(params.args), f"{params.partitioner}: {exc}") from None
