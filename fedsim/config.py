"""Scenario configuration, the composition root: TOML -> validated, frozen dataclasses.

A scenario file has the sections below; every key has a default except the names of
the dataset, the model and the strategy. Each section is defined by the package that
owns it (``[data]`` in `fedsim.scenarios.federation`, ``[client]`` in
`fedsim.clients.settings`, ``[round]`` in `fedsim.engine.policies`, ...); this module
only puts them together. ``load_config`` reads a file (or a shipped preset by name),
``apply_overrides`` applies ``--set a.b=c`` edits to the raw data, and ``from_dict``
validates everything once, raising a one-line `ConfigError`. ``[plugins]`` is read
first, so names its modules register resolve in the rest of the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from fedsim.clients.settings import ClientSection
from fedsim.clients.spec import ClientSpec
from fedsim.core.errors import ConfigError, one_line
from fedsim.core.overrides import apply_overrides, loads_toml
from fedsim.core.plugins import PluginsSection, is_user_module, load_plugins_first
from fedsim.core.schema import (
    Named,
    iter_named,
    named,
    named_list,
    option,
    parse,
    to_plain,
)
from fedsim.engine.executors.sections import ExecutorSection, RaySection
from fedsim.engine.policies import POLICIES, RoundPolicy, RoundSection
from fedsim.engine.selection import SelectionSection
from fedsim.privacy import PrivacySection
from fedsim.privacy import check_wrapper as check_privacy
from fedsim.report import ReportSection
from fedsim.scenarios.attacks.probe import ProbeSection
from fedsim.scenarios.byzantine import ByzantineSection, check_app
from fedsim.scenarios.devices import DevicesSection
from fedsim.scenarios.energy import EnergySection
from fedsim.scenarios.faults import FaultsSection
from fedsim.scenarios.federation import DataSection
from fedsim.scenarios.network import NetworkSection

__all__ = ["Config", "Named", "apply_overrides", "from_dict", "load_config", "resolve_scenario"]


@dataclasses.dataclass(frozen=True)
class RunSection:
    name: str = option("fedsim", doc="the run's name: one folder name (letters, digits, space, . _ - + = , @ "
                                     "( ) [ ]; at most 100 characters), used in the results folder's name")
    seed: int = option(0, ge=0, lt=2**32)
    rounds: int = option(10, ge=1, le=1_000_000)
    checkpoint_every: int | None = option(None, ge=0, le=1_000_000,
                                          doc="save <run>/checkpoint.safetensors every N rounds; unset = automatically "
                                              "(costing at most 2 % of the run's time); 0 = never; resume with --resume")

    def check(self, path: str) -> None:
        check_name(self.name, f"{path}.name")


#: Characters a run name may use besides letters and digits (it names a folder).
NAME_PUNCTUATION = " ._-+=,@()[]"


def check_name(name: str, field: str) -> None:
    """A run name is one folder name: no path separators, no control or invisible characters."""
    import unicodedata

    if not name or len(name) > 100:
        raise ConfigError(field, name, "must be 1 to 100 characters")
    if name in (".", "..") or name.strip() != name or name.startswith("."):
        raise ConfigError(field, name, "must not be '.' or '..', start with '.', or start or end with a space")
    for ch in name:
        if not (ch.isalnum() or ch in NAME_PUNCTUATION) or unicodedata.category(ch)[0] in "CZ" and ch != " ":
            raise ConfigError(field, name, f"has {ch!r}; a run name is one folder name: letters, digits, space "
                                           f"and {NAME_PUNCTUATION.strip()}")


@dataclasses.dataclass(frozen=True)
class ServerSection:
    centralized_eval: bool = option(True, doc="evaluate the global model on the server's held-out test set")
    eval_every: int = option(1, ge=1, doc="centralized evaluation every k rounds (and always the last)")
    timeout: float = option(3600.0, gt=0.0, doc="the timeout Flower's Strategy.start passes to the grid")
    reduce_replies: bool = option(True, doc="FedAvg-family strategies receive one pre-averaged training reply "
                                            "(bit-identical result, faster); false = every reply")
    max_update_norm: float = option(0.0, ge=0.0, doc="exclude training updates whose L2 norm (reply minus the model "
                                                     "sent) exceeds this, with the reason recorded; 0 = off")
    max_empty_rounds: int = option(5, ge=0, le=1_000_000,
                                   doc="stop the run after this many rounds in a row aggregate no training reply "
                                       "(0 = never stop)")


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
    energy: EnergySection = EnergySection()
    round: RoundSection = RoundSection()
    selection: SelectionSection = SelectionSection()
    codec: tuple[Named, ...] = named_list("codec", "fedsim.clients.codecs:resolve_codec", "fedsim.clients.codecs:check_chain")
    probe: ProbeSection = ProbeSection()
    faults: FaultsSection = FaultsSection()
    byzantine: ByzantineSection = ByzantineSection()
    executor: ExecutorSection = ExecutorSection()
    ray: RaySection = RaySection()
    report: ReportSection = ReportSection()
    privacy: PrivacySection = PrivacySection()
    plugins: PluginsSection = PluginsSection()

    def check(self, path: str) -> None:
        if self.data is None:
            raise ConfigError("data.dataset.name", None, "required: the dataset to use")
        from fedsim.strategies.registry import check_against_federation

        check_against_federation(self.strategy.name, self.strategy.params, self.data.num_clients,
                                 self.data.client_test_fraction)
        from fedsim.scenarios.attacks.probe import check_probe_config

        check_probe_config(self)
        check_app(self.byzantine, self.client.app)
        check_privacy(self)
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

    def warnings(self) -> list[str]:
        """Settings that have no effect because of another one (a deadline no policy waits
        for, stragglers that cannot do less work, ...), one line each in `ConfigError`'s
        form. Not errors: a sweep or ``--set`` may switch the other setting per run."""
        out: list[str] = []

        def note(field: str, value: Any, why: str) -> None:
            out.append(str(ConfigError(field, value, why)))

        policy = POLICIES.get(self.round.policy, "round.policy")
        name = f"round.policy {self.round.policy!r}"
        if self.round.deadline is not None and not policy.uses_deadline and self.selection.policy == "uniform":
            note("round.deadline", self.round.deadline,
                 f"has no effect: {name} waits for every reply (round.policy = \"deadline\" drops late "
                 f"replies, \"partial_work\" also gives clients a time budget)")
        if policy.extra_clients is RoundPolicy.extra_clients and self.round.over_select != RoundSection().over_select:
            note("round.over_select", self.round.over_select,
                 f"has no effect: {name} samples no extra clients (round.policy = \"over_select\" does)")
        d = self.devices
        if d.straggler_fraction > 0 and not policy.drops_protocol_stragglers:
            why = ("client.local_steps is set (epochs do not limit the work)" if self.client.local_steps > 0
                   else "client.local_epochs is 1" if self.client.local_epochs <= 1 else "")
            if why:
                note("devices.straggler_fraction", d.straggler_fraction,
                     f"has no effect: under {name} a straggler is kept and runs fewer local epochs, but {why} "
                     f"(round.policy = \"deadline\" drops stragglers)")
        if d.straggler_epochs and d.straggler_fraction == 0:
            note("devices.straggler_epochs", d.straggler_epochs,
                 "has no effect: devices.straggler_fraction is 0 (no client straggles)")
        elif d.straggler_epochs and policy.drops_protocol_stragglers:
            note("devices.straggler_epochs", d.straggler_epochs,
                 f"has no effect: {name} drops stragglers rather than running their fewer epochs")
        if self.executor.name != "ray":
            changed = _changed(self.ray, RaySection())
            if changed:
                note(f"ray.{changed[0]}", getattr(self.ray, changed[0]),
                     f"has no effect: executor.name is {self.executor.name!r} ([ray] configures executor.name = "
                     f"\"ray\")")
        if not self.energy.enabled:
            changed = _changed(self.energy, EnergySection())
            if changed:
                note(f"energy.{changed[0]}", to_plain(getattr(self.energy, changed[0])),
                     "has no effect: energy.enabled is false")
        return out

    @property
    def data_seed(self) -> int:
        """The seed of the dataset and the partition (``data.seed``, else ``run.seed``)."""
        return self.data.data_seed(self.run.seed)

    def plugin_modules(self, sections: Iterable[Any] | None = None) -> tuple[str, ...]:
        """``[plugins] imports`` plus every user module that registered a name used in
        ``sections`` (default: the whole scenario), for other processes to import."""
        found = list(self.plugins.imports)
        for section in (self,) if sections is None else sections:
            for registry, item in iter_named(section):
                origin = registry.origin(item.name) if registry is not None else None
                if origin and is_user_module(origin) and origin not in found:
                    found.append(origin)
        return tuple(found)

    def main_registrations(self, sections: Iterable[Any] | None = None) -> tuple[tuple[Any, str, Any], ...]:
        """``(registry, name, entry)`` for names a script's or notebook's ``__main__`` registered
        (another process cannot import them; a Ray actor receives them by value)."""
        out = []
        for section in (self,) if sections is None else sections:
            for registry, item in iter_named(section):
                entry = registry.main_entry(item.name) if registry is not None else None
                if entry is not None:
                    out.append((registry, item.name, entry))
        return tuple(out)

    def client_spec(self) -> ClientSpec:
        """The client contract: what a ClientApp needs of this scenario, and nothing else."""
        bare = ClientSpec(data=self.data, model=self.model, seed=self.run.seed, client=self.client, codec=self.codec)
        plugins = PluginsSection(imports=self.plugin_modules([bare]), paths=self.plugins.paths)
        return dataclasses.replace(bare, plugins=plugins)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML/JSON) that `from_dict` turns back into an equal Config; ``plugins.imports``
        also names the user modules that registered names the scenario uses, so the file
        is complete on its own (another process, a later ``fedsim run`` of it)."""
        plain = to_plain(self)
        plain["plugins"]["imports"] = list(self.plugin_modules())
        return plain

    def replace(self, overrides: Iterable[str]) -> Config:
        """A new Config with ``section.key=value`` edits applied (and validated)."""
        return from_dict(apply_overrides(self.to_dict(), overrides))


def _changed(section: Any, default: Any) -> list[str]:
    """The fields of ``section`` that differ from ``default``'s."""
    return [f.name for f in dataclasses.fields(section) if getattr(section, f.name) != getattr(default, f.name)]


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate raw scenario data (as read from TOML) into a `Config`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("scenario", raw, "must be a TOML table")
    raw = dict(raw)
    if "data" not in raw:
        raise ConfigError("data.dataset.name", None, "required: the dataset to use")
    if "plugins" in raw:
        load_plugins_first(raw)  # names its modules register must resolve in the other sections
    return parse(Config, raw, "")


def preset_path(name: str) -> Path | None:
    """A shipped preset by name; ``benchmarks/<study>`` names the benchmark suite's sweeps."""
    if not name or name.startswith(("/", ".")) or ".." in name.split("/") or name.endswith(".toml"):
        return None
    path = resources.files("fedsim.scenarios").joinpath("presets", *f"{name}.toml".split("/"))
    return Path(str(path)) if path.is_file() else None


def list_presets() -> list[str]:
    """The shipped presets' names, subfolders included (``benchmarks/codecs``)."""
    def walk(folder: Any, prefix: str) -> list[str]:
        names = []
        for p in folder.iterdir():
            if p.is_dir() and not p.name.startswith((".", "_")):
                names += walk(p, f"{prefix}{p.name}/")
            elif p.name.endswith(".toml"):
                names.append(prefix + p.name[:-5])
        return names

    return sorted(walk(resources.files("fedsim.scenarios").joinpath("presets"), ""))


def preset_description(name: str) -> str:
    """A preset's one-line description: the first line of the comment that opens its file
    (``# Quickstart: ...``); ``""`` when the file does not open with a comment."""
    path = preset_path(name)
    if path is None:
        return ""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            described = line.lstrip("#").strip()
            if described:
                return one_line(described, 200)
        elif line:
            break  # the first setting: the opening comment (if any) has no text
    return ""


def resolve_scenario(arg: str | Path) -> Path:
    """A scenario file, or a shipped preset by name (``quickstart``, ``benchmarks/codecs``)."""
    path = Path(arg)
    if path.is_file():
        return path
    preset = preset_path(str(arg))
    if preset is not None:
        return preset
    if str(arg).endswith(".toml"):
        raise ConfigError("scenario", str(arg), "file not found")
    presets = list_presets()
    raise ConfigError("SCENARIO", str(arg), f"no such file, and not a preset ({', '.join(presets)})", choices=presets)


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("scenario", str(path), "file not found")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is fine
    except UnicodeDecodeError:
        raise ConfigError("scenario", str(path), "invalid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError("scenario", str(path), f"cannot be read ({exc.strerror})") from None
    return loads_toml(text, "scenario", str(path))


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate a scenario file or a preset by name. A ``[sweep]``
    table is left to ``fedsim sweep``: here the file is its base scenario."""
    path = resolve_scenario(path)
    raw = apply_overrides(load_toml(path), overrides)
    if "sweep" in raw:
        import logging

        logging.getLogger("fedsim").info("%s has a [sweep] table: running its base scenario "
                                         "(`fedsim sweep` runs the grid)", path)
        raw.pop("sweep")
    cfg = from_dict(raw)
    import logging

    for line in cfg.warnings():
        logging.getLogger("fedsim").warning("%s", line)
    return cfg
