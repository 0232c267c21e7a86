"""The client contract: everything fedsim's ClientApp needs, and nothing of the server's.

A `ClientSpec` holds the seeds, the data section (dataset, partitioner, splits, shared
data), the model, the client's training settings, the codec chain and the plug-ins to
import. It travels in Flower's ``run_config`` as flat ``section.key`` TOML literals
(`to_run_config`), the same keys as the scenario file's, so the ClientApp runs unchanged
in fedsim's executors, in a sweep process, or on a real SuperNode. The strategy, round
policy, report and sweep sections never reach a client: a server-side plug-in (a custom
strategy) never has to exist where clients run.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from fedsim.clients.settings import ClientSection
from fedsim.scenarios.federation import DataSection

from fedsim.core.overrides import flatten, literal, unflatten
from fedsim.core.plugins import PluginsSection, load_plugins_first
from fedsim.core.schema import Named, named, named_list, option, parse, to_plain

#: Scenario sections (dotted prefixes) a client reads from a run config; everything else is ignored.
CLIENT_KEYS = ("run.seed", "data.", "model.", "client.", "codec", "plugins.")


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """What a ClientApp knows about the run (frozen, hashable, comparable)."""

    data: DataSection
    model: Named = named("model", "fedsim.clients.models:resolve_model_params")
    seed: int = option(0, ge=0, lt=2**32, doc="the run seed: batch order, dropout, codec randomness")
    client: ClientSection = ClientSection()
    codec: tuple[Named, ...] = named_list("codec", "fedsim.clients.codecs:resolve_codec",
                                          "fedsim.clients.codecs:check_chain")
    plugins: PluginsSection = PluginsSection()

    @property
    def data_seed(self) -> int:
        """The seed of the dataset and the partition (``data.seed``, else the run seed)."""
        return self.data.data_seed(self.seed)


def to_run_config(spec: ClientSpec) -> dict[str, str]:
    """The spec as Flower run-config entries (flat keys, TOML-literal values)."""
    plain = to_plain(spec)
    out: dict[str, str] = {"run.seed": literal(plain["seed"])}
    for section in ("data", "model", "client", "plugins"):
        flatten(section, plain[section], out)
    if plain.get("codec"):
        out["codec"] = literal(plain["codec"])
    return out


def from_run_config(run_config: Mapping[str, Any]) -> ClientSpec:
    """Read the spec from a run config (other keys, e.g. a deployment's server sections, are ignored)."""
    return _cached(tuple(sorted((k, str(v)) for k, v in run_config.items() if k.startswith(CLIENT_KEYS))))


@functools.lru_cache(maxsize=8)
def _cached(items: tuple[tuple[str, str], ...]) -> ClientSpec:
    raw = unflatten(dict(items))
    raw["seed"] = raw.pop("run", {}).get("seed", 0)
    load_plugins_first(raw)  # names they register must resolve below
    return parse(ClientSpec, raw, "")
