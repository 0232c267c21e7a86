"""Checkpoints: everything a run needs to continue bit-identically, in one safetensors file.

``[run] checkpoint_every = N`` saves, after every N-th round, ``<run>/checkpoint.safetensors``
(unset, the default: automatically, as often as keeps saving under 2 % of the run's time,
see `Schedule`; 0: never):

- the global arrays (``global/<name>``);
- the strategy's state: every attribute of the Strategy object holding arrays or plain
  values (FedOpt's moments ``m_t``/``v_t``, FedAvgM's momentum, a user strategy's own
  arrays) — or what its ``fedsim_state()`` returns, restored by ``fedsim_load_state()``;
- each node's persistent Flower state (a RecordDict, e.g. error-feedback residuals), as
  Flower's protobuf bytes;
- the grid's counters (exchanges, which seed Flower's sampling; the virtual clock).

- the resolved scenario it belongs to, with its digest, and a digest of its own tensor bytes.

Per-client randomness needs no saved position: every stream is derived from
``(seed, round, client, purpose)``. The file is written to a temporary name, fsynced and
renamed, so a crash leaves the previous checkpoint intact. Loading parses tensors and
JSON only (safetensors; protobuf for node state): no pickle, no code runs.

Loading verifies before anything is used: the metadata against its schema (types, the
round within ``0..run.rounds``, every named tensor present), the tensor bytes against the
digest (a flipped byte is refused), and, on restore, that the strategy state names only
attributes the freshly built strategy declares (no attribute can be injected). The digests
detect damage, not a forger who recomputes them; a crafted file still cannot run code or
set undeclared state.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedsim.core.errors import ConfigError, one_line

FILE = "checkpoint.safetensors"
FORMAT = 2
KINDS = ("ndarray", "ArrayRecord", "dict", "list", "plain", "json")
_PLAIN = (bool, int, float, str, type(None))


class Schedule:
    """When a run saves: after every ``every``-th round, or (``every`` None) automatically:
    after round 1 (which measures a save's cost), then whenever the time since the last
    save is at least ``(1 - SHARE) / SHARE`` times that cost, so saving takes at most
    ``SHARE`` of the run's time. Which rounds are saved then depends on the machine's
    speed, never the numbers: a resume from any round continues bit-identically."""

    SHARE = 0.02

    def __init__(self, every: int | None) -> None:
        self.every = every
        self.cost: float | None = None
        self.since = time.perf_counter()
        self.last_round: int | None = None

    def due(self, rnd: int) -> bool:
        if rnd <= 0 or self.every == 0:
            return False
        if self.every is not None:
            return rnd % self.every == 0
        if self.cost is None:
            return True
        return time.perf_counter() - self.since >= self.cost * (1 - self.SHARE) / self.SHARE

    def saved(self, rnd: int, seconds: float) -> None:
        self.cost = seconds if self.cost is None else max(seconds, 0.5 * self.cost + 0.5 * seconds)
        self.since = time.perf_counter()
        self.last_round = rnd


@dataclass
class Checkpoint:
    round: int
    arrays: ArrayRecord
    strategy: dict[str, Any]
    nodes: dict[int, RecordDict]
    codec_state: dict[int, dict[str, np.ndarray]]
    grid: dict[str, Any]
    extra: dict[str, Any]
    messages: dict[str, bytes]  # replies in flight (asynchronous strategies), Flower protobuf bytes
    scenario: dict[str, Any]  # the resolved scenario (Config.to_dict) the checkpoint was written by


def digest_scenario(scenario: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(scenario, sort_keys=True, allow_nan=True).encode()).hexdigest()


def digest_tensors(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{t.dtype.str}\0{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _strategy_state(strategy: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (flat keys) and JSON-able values of a strategy's state."""
    own = getattr(strategy, "fedsim_state", None)
    own = own if callable(own) else None
    items = own() if own is not None else vars(strategy)
    tensors: dict[str, np.ndarray] = {}
    plain: dict[str, Any] = {}
    for name, value in items.items():
        if isinstance(value, np.ndarray):
            tensors[f"strategy/{name}"] = value
            plain[name] = {"kind": "ndarray"}
        elif isinstance(value, ArrayRecord):
            keys = list(value.keys())
            for k in keys:
                tensors[f"strategy/{name}/{k}"] = value[k].numpy()
            plain[name] = {"kind": "ArrayRecord", "keys": keys}
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            keys = [str(k) for k in value]
            for k, v in value.items():
                tensors[f"strategy/{name}/{k}"] = v
            plain[name] = {"kind": "dict", "keys": keys}
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            for i, v in enumerate(value):
                tensors[f"strategy/{name}/{i}"] = v
            plain[name] = {"kind": "list", "n": len(value)}
        elif isinstance(value, _PLAIN) and not name.startswith("__"):
            plain[name] = {"kind": "plain", "value": value}
        elif own is not None and isinstance(value, (dict, list)) and _jsonable(value):
            plain[name] = {"kind": "json", "value": value}
    return tensors, plain


def _check_declared(strategy: Any, plain: dict[str, Any]) -> None:
    """Only attributes a freshly built strategy has, holding values of their kind, are set."""
    declared = vars(strategy)
    for name, spec in plain.items():
        if name not in declared or name.startswith("__"):
            raise ConfigError("--resume", "checkpoint", f"strategy state names {name!r}, which "
                              f"{type(strategy).__name__} does not declare; refused")
        now = declared[name]
        if spec["kind"] == "plain" and now is not None and isinstance(now, _PLAIN):
            value = spec["value"]
            same = value is None or isinstance(value, type(now)) or (isinstance(now, float) and isinstance(value, int))
            if not same or (isinstance(value, bool) and not isinstance(now, bool)):
                raise ConfigError("--resume", "checkpoint", f"strategy state {name!r} holds a "
                                  f"{type(value).__name__} where {type(strategy).__name__} has a {type(now).__name__}")


def _restore_strategy(strategy: Any, plain: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    own = getattr(strategy, "fedsim_load_state", None)
    if not callable(own):
        _check_declared(strategy, plain)
    values: dict[str, Any] = {}
    for name, spec in plain.items():
        kind = spec["kind"]
        if kind == "ndarray":
            values[name] = tensors[f"strategy/{name}"]
        elif kind == "ArrayRecord":
            values[name] = _record({k: tensors[f"strategy/{name}/{k}"] for k in spec["keys"]})
        elif kind == "dict":
            values[name] = {k: tensors[f"strategy/{name}/{k}"] for k in spec["keys"]}
        elif kind == "list":
            values[name] = [tensors[f"strategy/{name}/{i}"] for i in range(spec["n"])]
        else:  # plain, json
            values[name] = spec["value"]
    if callable(own):
        try:  # the strategy's own loader decides what its state may hold
            own(values)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ConfigError("--resume", "checkpoint", f"{type(strategy).__name__}.fedsim_load_state refused the "
                              f"saved state ({type(exc).__name__}: {one_line(str(exc), 200)})") from None
    else:
        for name, value in values.items():
            setattr(strategy, name, value)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def save(out: Path, rnd: int, arrays: ArrayRecord, strategy: Any, nodes: dict[int, RecordDict],
         grid: dict[str, Any], codec_state: dict[int, dict[str, np.ndarray]] | None = None,
         extra: dict[str, Any] | None = None, messages: dict[str, bytes] | None = None,
         scenario: dict[str, Any] | None = None) -> Path:
    from flwr.common.serde import recorddict_to_proto
    from safetensors.numpy import save as st_save

    tensors: dict[str, np.ndarray] = {f"global/{k}": np.ascontiguousarray(v.numpy()) for k, v in arrays.items()}
    s_tensors, s_plain = _strategy_state(strategy)
    tensors.update({k: np.ascontiguousarray(v) for k, v in s_tensors.items()})
    for node, state in nodes.items():
        raw = recorddict_to_proto(state).SerializeToString()
        tensors[f"node/{node}"] = np.frombuffer(raw, dtype=np.uint8).copy()
    for mid, raw in (messages or {}).items():
        tensors[f"msg/{mid}"] = np.frombuffer(raw, dtype=np.uint8).copy()
    codec_keys = {}
    for cid, arrs in (codec_state or {}).items():
        codec_keys[str(cid)] = list(arrs)
        for k, v in arrs.items():
            tensors[f"codec/{cid}/{k}"] = np.ascontiguousarray(v)
    meta = {"format": FORMAT, "round": rnd, "global": list(arrays.keys()), "strategy": s_plain,
            "nodes": sorted(nodes), "codec": codec_keys, "grid": grid, "extra": extra or {},
            "messages": sorted(messages or {}), "scenario": scenario or {},
            "scenario_digest": digest_scenario(scenario or {}), "tensors_digest": digest_tensors(tensors)}
    blob = st_save(tensors, metadata={"fedsim": json.dumps(meta)})
    path = out / FILE
    tmp = out / (FILE + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError("--resume", str(path), f"damaged or crafted checkpoint: {why}; refused")


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def validate_meta(path: Path, meta: Any, tensors: dict[str, np.ndarray], max_round: int | None) -> None:
    """The metadata's schema: types, bounds, and every tensor it names present."""
    if not isinstance(meta, dict):
        raise _bad(path, "metadata is not a table")
    expect = {"round": int, "global": list, "strategy": dict, "nodes": list, "codec": dict, "grid": dict,
              "extra": dict, "messages": list, "scenario": dict, "scenario_digest": str, "tensors_digest": str}
    for key, kind in expect.items():
        if not _is(meta.get(key), kind):
            raise _bad(path, f"metadata field {key!r} is missing or not a {kind.__name__}")
    rnd = meta["round"]
    if rnd < 0 or (max_round is not None and rnd > max_round):
        raise _bad(path, f"round {rnd} is outside 0..{max_round}")
    names = ([f"global/{k}" for k in meta["global"]] + [f"node/{n}" for n in meta["nodes"]]
             + [f"msg/{m}" for m in meta["messages"]])
    if not all(_is(k, str) for k in meta["global"] + meta["messages"]) or not all(_is(n, int) for n in meta["nodes"]):
        raise _bad(path, "global, nodes or messages hold values of the wrong type")
    for cid, keys in meta["codec"].items():
        if not cid.isdigit():
            raise _bad(path, f"codec state names client {cid!r}")
        if not _is(keys, list) or not all(_is(k, str) for k in keys):
            raise _bad(path, f"codec state of client {cid!r} is not a list of names")
        names += [f"codec/{cid}/{k}" for k in keys]
    for name, spec in meta["strategy"].items():
        if not _is(spec, dict) or spec.get("kind") not in KINDS:
            raise _bad(path, f"strategy state {name!r} has no known kind")
        kind = spec["kind"]
        if kind == "ndarray":
            names.append(f"strategy/{name}")
        elif kind in ("ArrayRecord", "dict"):
            if not _is(spec.get("keys"), list):
                raise _bad(path, f"strategy state {name!r} has no key list")
            names += [f"strategy/{name}/{k}" for k in spec["keys"]]
        elif kind == "list":
            n = spec.get("n")
            if not _is(n, int) or not 0 <= n <= len(tensors):
                raise _bad(path, f"strategy state {name!r} has a bad length")
            names += [f"strategy/{name}/{i}" for i in range(n)]
        elif "value" not in spec:
            raise _bad(path, f"strategy state {name!r} has no value")
    missing = [n for n in names if n not in tensors]
    if missing:
        raise _bad(path, f"tensor {missing[0]!r} is named but absent")
    if digest_scenario(meta["scenario"]) != meta["scenario_digest"]:
        raise _bad(path, "its scenario does not match the digest it was written with")
    if digest_tensors(tensors) != meta["tensors_digest"]:
        raise _bad(path, "its tensor bytes do not match the digest they were written with")


def load(out: Path, max_round: int | None = None) -> Checkpoint:
    """A verified checkpoint (see the module docstring); ``max_round`` bounds its round."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # type: ignore[attr-defined]
    from safetensors import safe_open

    path = out / FILE
    if not path.is_file():
        raise ConfigError("--resume", str(out), f"has no {FILE} (was run.checkpoint_every set?)")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {})["fedsim"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - a damaged file is the user's input
        raise ConfigError("--resume", str(path), f"is not a readable fedsim checkpoint ({one_line(str(exc))})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError("--resume", str(path), f"has checkpoint format {found}; this fedsim reads {FORMAT}")
    validate_meta(path, meta, tensors, max_round)
    arrays = _record({k: tensors[f"global/{k}"] for k in meta["global"]})
    nodes = {}
    try:
        for node in meta["nodes"]:
            proto = ProtoRecordDict()
            proto.ParseFromString(tensors[f"node/{node}"].tobytes())
            nodes[int(node)] = recorddict_from_proto(proto)
    except Exception as exc:  # noqa: BLE001 - damaged node state is the user's input
        raise _bad(path, f"node state unreadable ({one_line(str(exc))})") from None
    strategy = {"plain": meta["strategy"], "tensors": {k: v for k, v in tensors.items() if k.startswith("strategy/")}}
    codec_state = {int(cid): {k: tensors[f"codec/{cid}/{k}"] for k in ks} for cid, ks in meta["codec"].items()}
    messages = {mid: tensors[f"msg/{mid}"].tobytes() for mid in meta["messages"]}
    return Checkpoint(round=meta["round"], arrays=arrays, strategy=strategy, nodes=nodes,
                      codec_state=codec_state, grid=meta["grid"], extra=meta["extra"], messages=messages,
                      scenario=meta["scenario"])


def restore_strategy(strategy: Any, ck: Checkpoint) -> None:
    _restore_strategy(strategy, ck.strategy["plain"], ck.strategy["tensors"])
