"""Putting an encoded update into a reply, and taking it out again on the server side.

The client sends ``encode(w_local - w_global)`` in its reply's ArrayRecord and marks the
reply with a ``fedsim-codec`` ConfigRecord; the grid's `decode_reply` rebuilds
``w_global + decode(payload)`` under the same record name and drops the marker, so the
strategy sees an ordinary reply with weights.

The payload's parts travel framed in one uint8 array (``payload``): a 4-byte length, a
JSON index of (name, dtype, shape, bytes) and the parts' raw bytes. One array means one
``.npy`` header and one serialization, so what is charged is the packed sizes plus a
small, counted index.
"""

from __future__ import annotations

import json
import struct
import time

import numpy as np
from fedsim.clients.codecs.base import MARKER, CodecContext, Pipeline
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedsim.core.records import arrays_of, configs_of

STATE = "fedsim-codec-state"


def load_state(state: RecordDict) -> dict[str, np.ndarray]:
    rec = state.array_records.get(STATE)
    return {} if rec is None else {k: a.numpy() for k, a in rec.items()}


def save_state(state: RecordDict, arrays: dict[str, np.ndarray]) -> None:
    if arrays:
        state[STATE] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def encode_update(pipeline: Pipeline, new: dict[str, np.ndarray], received: dict[str, np.ndarray],
                  ctx: CodecContext) -> tuple[ArrayRecord, ConfigRecord, float]:
    """(payload record, marker, seconds): the delta of float arrays is encoded, others sent as they are."""
    start = time.perf_counter()
    delta = {}
    for k, v in new.items():
        ref = received.get(k)
        if v.dtype.kind == "f" and ref is not None and ref.shape == v.shape:
            d = (v.astype(np.float32) - ref.astype(np.float32))
            if not np.isfinite(d).all():
                raise ValueError(f"non-finite update in {k}; refusing to encode it")
            delta[k] = d
        else:
            delta[k] = v
    payload = pipeline.encode(delta, ctx)
    record = ArrayRecord({PAYLOAD: Array(frame(payload))})
    return record, ConfigRecord({"chain": ",".join(pipeline.names)}), time.perf_counter() - start


PAYLOAD = "payload"


def frame(parts: dict[str, np.ndarray]) -> np.ndarray:
    """One uint8 array: index length (uint32, little endian), JSON index, then the raw parts."""
    arrays = [np.ascontiguousarray(v) for v in parts.values()]
    index = json.dumps([[k, v.dtype.str, list(v.shape), v.nbytes] for k, v in zip(parts, arrays)],
                       separators=(",", ":")).encode()
    blob = b"".join([struct.pack("<I", len(index)), index, *(v.tobytes() for v in arrays)])
    return np.frombuffer(blob, dtype=np.uint8)


def unframe(blob: np.ndarray) -> dict[str, np.ndarray]:
    raw = np.ascontiguousarray(blob, dtype=np.uint8).tobytes()
    (n,) = struct.unpack("<I", raw[:4])
    index = json.loads(raw[4 : 4 + n].decode())
    out, pos = {}, 4 + n
    for key, dtype, shape, nbytes in index:
        out[key] = np.frombuffer(raw, dtype=np.dtype(dtype), count=int(np.prod(shape)) if shape else 1,
                                 offset=pos).reshape(shape)
        pos += nbytes
    if pos != len(raw):
        raise ValueError(f"payload holds {len(raw)} bytes, its index describes {pos}")
    return out


def is_encoded(reply: Message) -> bool:
    return reply.has_content() and any(k == MARKER for k, _ in configs_of(reply.content))


def reference_arrays(sent: Message) -> dict[str, np.ndarray]:
    """The global model a message carried, as numpy arrays (decode once per exchange)."""
    return {k: a.numpy() for _, rec in arrays_of(sent.content) for k, a in rec.items()}


def decode_reply(pipeline: Pipeline, reply: Message, sent: Message, ctx: CodecContext,
                 reference: dict[str, np.ndarray] | None = None) -> Message:
    """The reply with its payload decoded into weights (``reference`` = the global model sent)."""
    content = reply.content
    ref = reference if reference is not None else reference_arrays(sent)
    ctx.reference = ref
    out = RecordDict()
    first = next((k for k, r in content.items() if isinstance(r, ArrayRecord)), None)
    for key, rec in content.items():
        if key == MARKER:
            continue
        if isinstance(rec, ArrayRecord) and key != first:
            out[key] = rec  # beside the encoded update, sent as they are (e.g. SCAFFOLD's control variates)
        elif isinstance(rec, ArrayRecord):
            if list(rec) != [PAYLOAD]:
                raise ValueError(f"expected one {PAYLOAD!r} array, got {list(rec)[:3]}")
            delta = pipeline.decode(unframe(rec[PAYLOAD].numpy()), ctx)
            missing = set(ref) - set(delta)
            if missing:
                raise ValueError(f"decoded update lacks {sorted(missing)[:3]}")
            weights = {}
            for k, v in delta.items():
                base = ref.get(k)
                if base is not None and base.dtype.kind == "f" and v.dtype.kind == "f":
                    weights[k] = Array((base.astype(np.float32) + v.reshape(base.shape)).astype(base.dtype))
                else:
                    weights[k] = Array(np.asarray(v))
            out[key] = ArrayRecord(weights)
        else:
            out[key] = rec
    return Message(content=out, metadata=reply.metadata)
