"""Checkpoints: everything a run needs to continue bit-identically, in one safetensors file.

``[run] checkpoint_every = N`` saves, after every N-th round, ``<run>/checkpoint.safetensors``:

- the global arrays (``global/<name>``);
- the strategy's state: every attribute of the Strategy object holding arrays or plain
  values (FedOpt's moments ``m_t``/``v_t``, FedAvgM's momentum, a user strategy's own
  arrays) — or what its ``fedsim_state()`` returns, restored by ``fedsim_load_state()``;
- each node's persistent Flower state (a RecordDict, e.g. error-feedback residuals), as
  Flower's protobuf bytes;
- the grid's counters (exchanges, which seed Flower's sampling; the virtual clock).

Per-client randomness needs no saved position: every stream is derived from
``(seed, round, client, purpose)``. The file is written to a temporary name, fsynced and
renamed, so a crash leaves the previous checkpoint intact. Loading parses tensors and
JSON only (safetensors; protobuf for node state): no pickle, no code runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedsim.core.errors import ConfigError

FILE = "checkpoint.safetensors"
FORMAT = 1
_PLAIN = (bool, int, float, str, type(None))


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


def _restore_strategy(strategy: Any, plain: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
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
    own = getattr(strategy, "fedsim_load_state", None)
    if callable(own):
        own(values)
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
         extra: dict[str, Any] | None = None, messages: dict[str, bytes] | None = None) -> Path:
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
            "messages": sorted(messages or {})}
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


def load(out: Path) -> Checkpoint:
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
        raise ConfigError("--resume", str(path), f"is not a readable fedsim checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError("--resume", str(path), f"has checkpoint format {meta.get('format')}; this fedsim reads {FORMAT}")
    arrays = _record({k: tensors[f"global/{k}"] for k in meta["global"]})
    nodes = {}
    for node in meta["nodes"]:
        proto = ProtoRecordDict()
        proto.ParseFromString(tensors[f"node/{node}"].tobytes())
        nodes[int(node)] = recorddict_from_proto(proto)
    strategy = {"plain": meta["strategy"], "tensors": {k: v for k, v in tensors.items() if k.startswith("strategy/")}}
    codec_state = {int(cid): {k: tensors[f"codec/{cid}/{k}"] for k in ks} for cid, ks in meta["codec"].items()}
    messages = {mid: tensors[f"msg/{mid}"].tobytes() for mid in meta.get("messages", [])}
    return Checkpoint(round=int(meta["round"]), arrays=arrays, strategy=strategy, nodes=nodes,
                      codec_state=codec_state, grid=meta["grid"], extra=meta["extra"], messages=messages)


def restore_strategy(strategy: Any, ck: Checkpoint) -> None:
    _restore_strategy(strategy, ck.strategy["plain"], ck.strategy["tensors"])
