"""The scenario's ``[executor]`` and ``[ray]`` sections (no Ray import here)."""

from __future__ import annotations

import dataclasses

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


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
    host: str = option("", doc="\"\" (default): a local Ray listens on 127.0.0.1 only; an address: Ray advertises "
                                "it and listens beyond loopback (Ray has no authentication)")
    start_timeout_s: float = option(120.0, gt=0.0, le=86_400.0, doc="wall seconds to wait for the actors to start")
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
