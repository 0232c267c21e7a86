"""Per-client persistent state: named groups of arrays kept in Flower's ``Context.state``.

Flower gives every node a ``Context`` whose ``state`` (a ``RecordDict``) lives as long as the
node; fedsim's grid keeps it per virtual client across rounds and executors, and writes it
into checkpoints (as Flower's protobuf bytes), so a resumed run continues bit-identically.
Algorithms that keep something on the client (SCAFFOLD's control variate, FedPer's personal
layers, Ditto's personal model, a codec's error-feedback residual) use this helper::

    from fedsim.clients.state import load_arrays, save_arrays

    ci = load_arrays(context.state, "scaffold-ci")      # None the first time
    save_arrays(context.state, "scaffold-ci", new_ci)   # numpy arrays or torch tensors

Keys are prefixed with ``fedsim.`` so they never meet a user ClientApp's own records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

PREFIX = "fedsim."


def load_arrays(state: RecordDict, name: str) -> dict[str, np.ndarray] | None:
    """The arrays saved under ``name`` (copies), or None when nothing was saved yet."""
    rec = state.array_records.get(PREFIX + name)
    return None if rec is None else {k: np.array(a.numpy(), copy=True) for k, a in rec.items()}


def save_arrays(state: RecordDict, name: str, arrays: Mapping[str, Any]) -> None:
    """Keep ``arrays`` (numpy arrays or torch tensors) under ``name`` for this client's next call."""
    out = {}
    for key, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[key] = Array(np.ascontiguousarray(value))
    state[PREFIX + name] = ArrayRecord(out)
