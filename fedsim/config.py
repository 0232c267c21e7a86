"""Scenario configuration: TOML -> validated, frozen dataclasses.

A scenario file has the sections below; every key has a default except the names of
the dataset, the model and the strategy. ``load_config`` reads a file,
``apply_overrides`` applies ``--set a.b=c`` edits to the raw data, and
``from_dict`` validates everything once, raising a one-line `ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.scenarios.faults import FaultsSection
from fedsim.scenarios.byzantine import ByzantineSection, check_app
from fedsim.engine.policies import RoundSection
from fedsim.core.schema import Named, named, named_list, option, parse, to_plain
from fedsim.scenarios.devices import DevicesSection
from fedsim.scenarios.attacks.probe import ProbeSection
from fedsim.scenarios.network import NetworkSection

__all__ = ["Config", "Named", "load_config", "from_dict", "apply_overrides"]


@dataclasses.dataclass(frozen=True)
class RunSection:
    name: str = "fedsim"
    seed: int = option(0, ge=0, lt=2**32)
    rounds: int = option(10, ge=1, le=1_000_000)
    checkpoint_every: int = option(0, ge=0, le=1_000_000,
                                   doc="save <run>/checkpoint.safetensors every N rounds (0 = never); resume with --resume")


@dataclasses.dataclass(frozen=True)
class SharingSection:
    """Zhao et al. 2018: a globally shared, class-balanced set G held by the server."""

    beta: float | None = option(None, gt=0.0, le=1.0, doc="|G| = beta x |training data|; unset = no sharing")
    alpha: float = option(1.0, ge=0.0, le=1.0, doc="each client receives a random alpha-portion of G, once")
    warmup_epochs: int = option(0, ge=0, le=100_000, doc="train the initial global model on G first")
    warmup_lr: float | None = option(None, gt=0.0, doc="warm-up learning rate; unset = client.lr")

    @property
    def enabled(self) -> bool:
        return self.beta is not None


@dataclasses.dataclass(frozen=True)
class DataSection:
    dataset: Named = named("dataset", "fedsim.scenarios.datasets:resolve_dataset_params")
    partitioner: Named = named("partitioner", "fedsim.scenarios.partitioners:resolve_partitioner_params", "iid")
    num_clients: int = option(10, ge=1, le=10_000_000)
    server_test_fraction: float = option(0.2, gt=0.0, lt=1.0,
                                         doc="held out for the server when the dataset has no official test split")
    client_test_fraction: float = option(0.2, ge=0.0, lt=1.0, doc="each client's local test split")
    use_official_test: bool = option(True, doc="use the dataset's own test split as the server's test set")
    sharing: SharingSection = SharingSection()


@dataclasses.dataclass(frozen=True)
class LocalDpSection:
    """Flower's LocalDpMod on fedsim's ClientApp: clip the update, add Gaussian noise with
    std = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon (per release)."""

    epsilon: float = option(0.0, ge=0.0, doc="per-release epsilon; 0 = off")
    delta: float = option(1e-5, gt=0.0, lt=1.0)
    clipping_norm: float = option(1.0, gt=0.0)
    sensitivity: float = option(1.0, ge=0.0, doc="usually the clipping norm")

    @property
    def enabled(self) -> bool:
        return self.epsilon > 0

    @property
    def noise_std(self) -> float:
        import math

        return self.sensitivity * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon if self.enabled else 0.0


@dataclasses.dataclass(frozen=True)
class ClientSection:
    app: str = option("fedsim", doc='"fedsim" or a Flower ClientApp as "module:attribute"')
    local_epochs: int = option(1, ge=0, le=100_000)
    local_steps: int = option(0, ge=0, le=100_000_000, doc="if > 0, a fixed number of SGD steps instead of epochs")
    batch_size: int = option(32, ge=1, le=10_000_000)
    lr: float = option(0.05, gt=0.0, le=1e6)
    momentum: float = option(0.0, ge=0.0, lt=1.0)
    weight_decay: float = option(0.0, ge=0.0, le=1e6)
    threads: int = option(1, ge=1, le=1024, doc="torch threads per client process")
    grad_bits: int = option(0, ge=0, le=16, doc="quantized local training: k-bit stochastic gradients (0 = off)")
    autocast: str = option("none", choices=("none", "bf16"), doc="bf16 autocast for local training")
    device: str = option("auto", doc='"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"')
    local_dp: LocalDpSection = LocalDpSection()
    app_config: Mapping[str, Any] = dataclasses.field(default_factory=dict,
                                                     metadata={"doc": "run_config for a user ClientApp"})

    def check(self, path: str) -> None:
        if self.local_epochs == 0 and self.local_steps == 0:
            raise ConfigError(f"{path}.local_epochs", 0, "must be >= 1 unless local_steps > 0")
        from fedsim.clients.device import resolve

        resolve(self.device, f"{path}.device")  # "cuda" on a machine without CUDA fails here
        if self.app != "fedsim" and (":" not in self.app or self.app.startswith(":") or self.app.endswith(":")):
            raise ConfigError(f"{path}.app", self.app, 'must be "fedsim" or a ClientApp as "module:attribute"')
        for key, value in self.app_config.items():
            if not isinstance(value, (bool, int, float, str)):
                raise ConfigError(f"{path}.app_config.{key}", value, "must be a bool, number or string")


@dataclasses.dataclass(frozen=True)
class ServerSection:
    centralized_eval: bool = option(True, doc="evaluate the global model on the server's held-out test set")
    eval_every: int = option(1, ge=1, doc="centralized evaluation every k rounds (and always the last)")
    timeout: float = option(3600.0, gt=0.0, doc="the timeout Flower's Strategy.start passes to the grid")
    reduce_replies: bool = option(True, doc="FedAvg-family strategies receive one pre-averaged training reply "
                                            "(bit-identical result, faster); false = every reply")


@dataclasses.dataclass(frozen=True)
class ExecutorSection:
    name: str = option("serial", choices=("serial", "ray", "vectorized"))
    chunk: int = option(1024, ge=1, le=1_000_000, doc="vectorized: clients trained in one batched computation")


@dataclasses.dataclass(frozen=True)
class RayTierSection:
    """Actors with their own resources for a block of clients (e.g. the GPU-equipped 10%)."""

    name: str = option("tier")
    clients: tuple[int, ...] = option((), doc="[first, end): the partition ids this tier serves")
    num_actors: int = option(1, ge=1, le=100_000)
    cpus: float = option(1.0, gt=0.0, le=1024)
    gpus: float = option(0.0, ge=0.0, le=64)
    memory_mb: int = option(0, ge=0, le=10_000_000, doc="Ray logical memory reserved per actor")

    def check(self, path: str) -> None:
        if len(self.clients) != 2 or not (0 <= self.clients[0] < self.clients[1]):
            raise ConfigError(f"{path}.clients", list(self.clients), "must be [first, end) with 0 <= first < end")


@dataclasses.dataclass(frozen=True)
class RaySection:
    address: str = option("", doc='"" starts a local Ray; "auto" or "ray://host:port" attaches to a cluster')
    num_actors: int = option(0, ge=0, le=100_000, doc="0 = number of CPU cores")
    cpus_per_actor: float = option(1.0, gt=0.0, le=1024)
    client_timeout: float = option(0.0, ge=0.0, doc="wall seconds before a client task is abandoned; 0 = never")
    max_retries: int = option(1, ge=0, le=10, doc="retries of a client whose actor died")
    gpus_per_actor: float = option(0.0, ge=0.0, le=64, doc="GPUs each actor requests (fractions share one)")
    memory_mb_per_actor: int = option(0, ge=0, le=10_000_000, doc="Ray logical memory reserved per actor")
    tiers: tuple[RayTierSection, ...] = option((), doc="per-tier actor pools; they must cover every client once")
    client_memory_mb: int = option(0, ge=0, le=10_000_000,
                                   doc="address-space allowance per actor beyond its start (0 = no limit); "
                                       "a client allocating more fails with MemoryError and is excluded")


@dataclasses.dataclass(frozen=True)
class ReportSection:
    out_dir: str = option("results", doc="parent folder of run folders (the CLI's --out names the run folder)")
    plots: bool = True
    progress: bool = True
    flower_logs: bool = option(False, doc="show Flower's own INFO logs")
    tensorboard: bool = option(False, doc="also log rounds to <run>/tensorboard")
    mlflow: bool = option(False, doc="also log config and rounds to a local MLflow store, <run>/mlflow.db")
    mlflow_uri: str = option("", doc='tracking URI instead of <run>/mlflow.db, e.g. "sqlite:///results/mlflow.db"')


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated scenario. Build it with `load_config` or `from_dict`."""

    model: Named = named("model", "fedsim.clients.models:resolve_model_params")
    strategy: Named = named("strategy", "fedsim.strategies.registry:resolve_strategy_args")
    run: RunSection = RunSection()
    data: DataSection = dataclasses.field(default=None)  # type: ignore[assignment]
    client: ClientSection = ClientSection()
    server: ServerSection = ServerSection()
    devices: DevicesSection = DevicesSection()
    network: NetworkSection = NetworkSection()
    round: RoundSection = RoundSection()
    codec: tuple[Named, ...] = named_list("codec", "fedsim.clients.codecs:resolve_codec", "fedsim.clients.codecs:check_chain")
    probe: ProbeSection = ProbeSection()
    faults: FaultsSection = FaultsSection()
    byzantine: ByzantineSection = ByzantineSection()
    executor: ExecutorSection = ExecutorSection()
    ray: RaySection = RaySection()
    report: ReportSection = ReportSection()

    def check(self, path: str) -> None:
        if self.data is None:
            raise ConfigError("data.dataset.name", None, "required: the dataset to use")
        from fedsim.strategies.registry import check_against_federation

        check_against_federation(self.strategy.name, self.strategy.params, self.data.num_clients,
                                 self.data.client_test_fraction)
        from fedsim.scenarios.attacks.probe import check_probe_config

        check_probe_config(self)
        check_app(self.byzantine, self.client.app)
        if self.ray.tiers:
            covered = sorted((t.clients[0], t.clients[1], i) for i, t in enumerate(self.ray.tiers))
            edge = 0
            for first, end, i in covered:
                if first != edge:
                    raise ConfigError(f"ray.tiers[{i}].clients", [first, end],
                                      f"tiers must cover clients 0..{self.data.num_clients - 1} once, in blocks; "
                                      f"expected a tier starting at {edge}")
                edge = end
            if edge != self.data.num_clients:
                raise ConfigError("ray.tiers", f"clients 0..{edge - 1}",
                                  f"must cover every client: data.num_clients is {self.data.num_clients}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML/JSON) that `from_dict` turns back into an equal Config."""
        return to_plain(self)

    def replace(self, overrides: Iterable[str]) -> "Config":
        """A new Config with ``section.key=value`` edits applied (and validated)."""
        return from_dict(apply_overrides(self.to_dict(), overrides))


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate raw scenario data (as read from TOML) into a `Config`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("scenario", raw, "must be a TOML table")
    raw = dict(raw)
    if "data" not in raw:
        raise ConfigError("data.dataset.name", None, "required: the dataset to use")
    return parse(Config, raw, "")


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("scenario", str(path), "file not found")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("scenario", str(path), f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("scenario", str(path), "invalid TOML: not UTF-8 text") from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate a scenario file. A ``[sweep]`` table is left to
    ``fedsim sweep``: here the file is its base scenario."""
    raw = apply_overrides(load_toml(path), overrides)
    if "sweep" in raw:
        import logging

        logging.getLogger("fedsim").info("%s has a [sweep] table: running its base scenario "
                                         "(`fedsim sweep` runs the grid)", path)
        raw.pop("sweep")
    return from_dict(raw)


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
            if isinstance(nxt, str) and i >= 0 and part in _NAMED_KEYS:  # `model = "mlp"` -> table
                nxt = {"name": nxt}
            elif nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), nxt, f"is not a table; cannot set {key.strip()}")
            node[part] = nxt
            node = nxt
        node[parts[-1]] = parse_override_value(text.strip())
    return out


_NAMED_KEYS = {"model", "strategy", "dataset", "partitioner"}
