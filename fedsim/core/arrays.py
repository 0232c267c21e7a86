"""Fast views of Flower ``Array`` values (.npy bytes) without ``np.load`` / ``np.save``."""

from __future__ import annotations

from typing import Any

import numpy as np


def array_view(arr: Any) -> np.ndarray:
    """A read-only view of a Flower ``Array``'s values without ``np.load`` (which parses the
    .npy header with ``ast.literal_eval``, slow at thousands of replies per round)."""
    data = arr.data
    if arr.dtype and getattr(arr, "stype", "") == "numpy.ndarray" and data[:6] == b"\x93NUMPY":
        major = data[6]
        if major == 1:
            offset = 10 + int.from_bytes(data[8:10], "little")
        else:
            offset = 12 + int.from_bytes(data[8:12], "little")
        if b"'fortran_order': False" in data[10:offset]:
            count = int(np.prod(arr.shape)) if arr.shape else 1
            return np.frombuffer(data, dtype=np.dtype(arr.dtype), count=count, offset=offset).reshape(arr.shape)
    return arr.numpy()


_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def fast_array(values: np.ndarray) -> Any:
    """A Flower ``Array`` holding ``values`` as .npy bytes (what ``Array(ndarray)`` stores,
    byte for byte), with the header built once per dtype and shape instead of by ``np.save``."""
    import io

    from flwr.app import Array

    values = np.asarray(values, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
    key = (values.dtype.str, tuple(values.shape))
    header = _HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(values))
        header = _HEADERS[key] = buf.getvalue()
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype="numpy.ndarray",
                 data=header + values.tobytes())
