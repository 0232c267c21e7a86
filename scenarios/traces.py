"""FedScale's device traces, converted to fedsim's CSV formats (``fedsim traces import``).

FedScale ships two pickles (its ``client_device_capacity`` and ``client_behave_trace``):

- capacity: ``{client_id: {"computation": ms, "communication": kbit/s}}``. FedScale
  charges ``3 x computation / 1000`` seconds per training sample (the forward pass's
  latency, x 3 for the backward pass) and ``kbits / communication`` seconds per transfer,
  with kbits = bytes / 1024 x 8, so the bandwidth is ``communication x 1024`` bit/s.
- availability: ``{client_id: {"active": [t, ...], "inactive": [t, ...], "finish_time": T,
  ...}}``: the client is online from ``active[i]`` to ``inactive[i]`` (seconds), and its
  trace repeats every ``finish_time`` seconds.

They are read with an unpickler that builds plain containers and numbers only and refuses
anything else (a pickle naming any class or function), so a crafted file cannot run code.

Written files: ``devices.csv`` (``client, seconds_per_sample, speed, mbps``: speed = the
median device's seconds per sample / the client's, so 1 = the median device),
``availability.csv`` (``client,start,end``: each client's intervals repeated to the longest
trace's period, so one period serves every client), and ``system.toml`` (the ``[devices]``
and ``[network]`` sections that use them; fedsim's client ``i`` takes trace row
``i mod rows``). FedScale gives one bandwidth per client: it is used for both directions.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.errors import ConfigError

#: The largest pickle read (FedScale's capacity file is ~20 MB, its behaviour trace ~150 MB).
MAX_BYTES = 1 << 30


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, tuples, strings and numbers only: every class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain containers and numbers are read")


def load_plain(path: str | Path, field: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(field, str(path), "no such file")
    if p.stat().st_size > MAX_BYTES:
        raise ConfigError(field, str(path), f"larger than {MAX_BYTES >> 20} MiB; refused")
    try:
        return _PlainUnpickler(io.BytesIO(p.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refusing"):
            raise ConfigError(field, str(path), f"not a plain pickle: {exc}") from None
        raise ConfigError(field, str(path), f"not a readable pickle ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any malformed byte stream is the file's problem
        raise ConfigError(field, str(path), f"not a readable pickle ({type(exc).__name__}: {exc})") from None


def _number(value: Any, field: str, path: str, where: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (value <= 0 if positive else value < 0):
        rule = "a finite number > 0" if positive else "a finite number >= 0"
        raise ConfigError(field, path, f"malformed FedScale trace: {where} is {value!r}, must be {rule}")
    return float(value)


def _clients(obj: Any, field: str, path: str) -> list[tuple[Any, dict[str, Any]]]:
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(field, path, f"malformed FedScale trace: expected a non-empty dict of clients, "
                                       f"got {type(obj).__name__}")
    try:
        ids = sorted(obj)
    except TypeError:
        raise ConfigError(field, path, "malformed FedScale trace: client ids of mixed types") from None
    for cid in ids:
        if not isinstance(obj[cid], dict):
            raise ConfigError(field, path, f"malformed FedScale trace: client {cid!r} is "
                                           f"{type(obj[cid]).__name__}, not a dict")
    return [(cid, obj[cid]) for cid in ids]


def read_capacity(path: str | Path, field: str = "--capacity") -> tuple[np.ndarray, np.ndarray]:
    """(seconds per training sample, bandwidth in Mbit/s) per client, in client-id order."""
    spp, mbps = [], []
    for cid, rec in _clients(load_plain(path, field), field, str(path)):
        for key in ("computation", "communication"):
            if key not in rec:
                raise ConfigError(field, str(path), f"malformed FedScale trace: client {cid!r} has no {key!r}")
        spp.append(3.0 * _number(rec["computation"], field, str(path), f"client {cid!r} computation", True) / 1000.0)
        mbps.append(_number(rec["communication"], field, str(path), f"client {cid!r} communication", True)
                    * 1024 / 1e6)
    return np.asarray(spp), np.asarray(mbps)


def read_behavior(path: str | Path, field: str = "--availability") -> list[tuple[np.ndarray, float]]:
    """Per client (client-id order): its online intervals, shape (k, 2), and its period."""
    out = []
    for cid, rec in _clients(load_plain(path, field), field, str(path)):
        for key in ("active", "inactive", "finish_time"):
            if key not in rec:
                raise ConfigError(field, str(path), f"malformed FedScale trace: client {cid!r} has no {key!r}")
        active, inactive = rec["active"], rec["inactive"]
        if not isinstance(active, (list, tuple)) or not isinstance(inactive, (list, tuple)) or \
                len(active) != len(inactive):
            raise ConfigError(field, str(path), f"malformed FedScale trace: client {cid!r} needs lists 'active' and "
                                                f"'inactive' of equal length")
        period = _number(rec["finish_time"], field, str(path), f"client {cid!r} finish_time", True)
        spans = np.asarray([(_number(a, field, str(path), f"client {cid!r} active", False),
                             _number(b, field, str(path), f"client {cid!r} inactive", False))
                            for a, b in zip(active, inactive)], dtype=np.float64).reshape(-1, 2)
        if len(spans) and ((spans[:, 1] <= spans[:, 0]).any() or (spans[1:, 0] < spans[:-1, 1]).any()
                           or spans[-1, 1] > period):
            raise ConfigError(field, str(path), f"malformed FedScale trace: client {cid!r} intervals must be sorted, "
                                                f"non-overlapping, each active < inactive <= finish_time")
        out.append((spans, period))
    return out


def unroll(spans: np.ndarray, period: float, horizon: float) -> np.ndarray:
    """A client's intervals repeated every ``period`` up to ``horizon`` (the last clipped)."""
    reps = int(math.ceil(horizon / period))
    tiled = np.concatenate([spans + k * period for k in range(reps)]) if len(spans) else spans
    tiled = tiled[tiled[:, 0] < horizon]
    tiled[:, 1] = np.minimum(tiled[:, 1], horizon)
    return tiled


def convert(capacity: str | Path | None, behavior: str | Path | None, out: str | Path) -> dict[str, Any]:
    """Write fedsim's trace files from FedScale's pickles; a summary of what was written."""
    if capacity is None and behavior is None:
        raise ConfigError("traces import", None, "give --capacity and/or --availability (FedScale's pickles)")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("--out", str(out), "exists and is not a folder")
    devices = read_capacity(capacity) if capacity is not None else None
    clients = read_behavior(behavior) if behavior is not None else None
    horizon = max((period for _, period in clients), default=0.0) if clients is not None else 0.0
    tiles = [unroll(spans, period, horizon) for spans, period in clients] if clients is not None else []
    if clients is not None and not any(len(t) for t in tiles):
        raise ConfigError("--availability", str(behavior), "malformed FedScale trace: no client is ever online")
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out": str(folder)}
    sections = []
    if devices is not None:
        spp, mbps = devices
        median = float(np.median(spp))
        with (folder / "devices.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["client", "seconds_per_sample", "speed", "mbps"])
            for i, (s, b) in enumerate(zip(spp, mbps)):
                w.writerow([i, repr(float(s)), repr(median / float(s)), repr(float(b))])
        devices_csv = (folder / "devices.csv").resolve()
        where = json.dumps(str(devices_csv))  # a TOML basic string
        sections.append(f'[devices]\nspeed = {{ name = "trace", path = {where}, column = "speed" }}\n'
                        f"seconds_per_sample = {median!r}   # the median device's (FedScale: 3 x computation ms / 1000)\n")
        sections.append(f'[network]\nup_mbps = {{ name = "trace", path = {where}, column = "mbps" }}\n'
                        f'down_mbps = {{ name = "trace", path = {where}, column = "mbps" }}\n')
        summary.update(clients_capacity=len(spp), seconds_per_sample_median=median,
                       mbps_median=float(np.median(mbps)))
    if clients is not None:
        rows, written = 0, 0
        with (folder / "availability.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["client", "start", "end"])
            for tiled in tiles:  # a client never online has no row, and no number
                for a, b in tiled:
                    w.writerow([written, repr(float(a)), repr(float(b))])
                    rows += 1
                written += int(len(tiled) > 0)
        avail_csv = (folder / "availability.csv").resolve()
        text = f"availability_trace = {json.dumps(str(avail_csv))}\navailability_period = {horizon!r}\n"
        if sections and sections[0].startswith("[devices]"):
            sections[0] += text
        else:
            sections.insert(0, "[devices]\n" + text)
        summary.update(clients_availability=written, never_online=len(clients) - written, intervals=rows,
                       period_s=horizon)
    (folder / "system.toml").write_text("# fedsim system sections from FedScale traces (fedsim traces import)\n"
                                        + "\n".join(sections))
    return summary
