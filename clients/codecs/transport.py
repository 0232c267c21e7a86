"""Putting an encoded update into a reply, and taking it out again on the server side.

The client sends ``encode(w_local - w_global)`` in its reply's ArrayRecord and marks the
reply with a ``fedsim-codec`` ConfigRecord; the grid's `decode_reply` rebuilds
``w_global + decode(payload)`` under the same record name and drops the marker, so the
strategy sees an ordinary reply with weights.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from clients.codecs.base import MARKER, CodecContext, Pipeline

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
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in payload.items()})
    return record, ConfigRecord({"chain": ",".join(pipeline.names)}), time.perf_counter() - start


def is_encoded(reply: Message) -> bool:
    return reply.has_content() and MARKER in reply.content.config_records


def decode_reply(pipeline: Pipeline, reply: Message, sent: Message, ctx: CodecContext) -> Message:
    """The reply with its payload decoded into weights (``ctx.reference`` = the global model sent)."""
    content = reply.content
    ref = {k: a.numpy() for rec in sent.content.array_records.values() for k, a in rec.items()}
    ctx.reference = ref
    out = RecordDict()
    for key, rec in content.items():
        if key == MARKER:
            continue
        if isinstance(rec, ArrayRecord):
            delta = pipeline.decode({k: a.numpy() for k, a in rec.items()}, ctx)
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
