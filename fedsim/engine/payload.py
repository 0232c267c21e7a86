"""What a damaged payload looks like on arrival: lost packets and flipped bits.

A message's payload is the concatenation of its arrays' serialized bytes (each Flower
``Array`` holds a ``.npy`` buffer: header, then values), in record order. A packet lost
for good removes a byte span: values overlapping it are *missing* (a lost header makes
the whole array missing). Bit errors flip bits in the values of float arrays. These
functions only read or rebuild Flower records; the link model decides what is lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedsim.core.arrays import array_view
from fedsim.core.records import arrays_of


@dataclasses.dataclass(frozen=True)
class Segment:
    """One array's place in the payload."""

    record: str
    key: str
    offset: int  # first byte of the .npy buffer in the payload
    header: int  # .npy header length
    itemsize: int
    count: int  # number of values


def layout(content: RecordDict) -> list[Segment]:
    out = []
    offset = 0
    for rkey, rec in arrays_of(content):
        for akey, arr in rec.items():
            data = arr.data
            values = np.prod(arr.shape, dtype=np.int64) if arr.shape else 1
            itemsize = np.dtype(arr.dtype).itemsize if arr.dtype and arr.dtype != "object" else 0  # legacy: ""
            header = len(data) - int(values) * itemsize if itemsize else len(data)
            out.append(Segment(rkey, akey, offset, header, itemsize, int(values)))
            offset += len(data)
    return out


def missing_values(content: RecordDict, lost_packets: np.ndarray, packet_bytes: int) -> dict[tuple[str, str], np.ndarray]:
    """Per (record, key), a boolean mask of the values lost with ``lost_packets``."""
    out: dict[tuple[str, str], np.ndarray] = {}
    spans = [(int(k) * packet_bytes, (int(k) + 1) * packet_bytes) for k in np.sort(lost_packets)]
    for seg in layout(content):
        end = seg.offset + seg.header + seg.count * seg.itemsize
        hit = [(a, b) for a, b in spans if a < end and b > seg.offset]
        if not hit:
            continue
        mask = np.zeros(seg.count, dtype=bool)
        for a, b in hit:
            if a < seg.offset + seg.header or seg.itemsize == 0:
                mask[:] = True  # header gone: the array cannot be decoded
                break
            lo = (a - seg.offset - seg.header) // seg.itemsize
            hi = -(-(b - seg.offset - seg.header) // seg.itemsize)
            mask[max(lo, 0) : min(hi, seg.count)] = True
        out[(seg.record, seg.key)] = mask
    return out


def _map_arrays(content: RecordDict, edit: Callable[[str, str, Array], Array | None]) -> RecordDict | None:
    """A copy of ``content`` with each array replaced by ``edit(record, key, array)``;
    None as soon as ``edit`` gives None."""
    out = RecordDict()
    for rkey, rec in content.items():
        if not isinstance(rec, ArrayRecord):
            out[rkey] = rec
            continue
        arrays = {}
        for akey, arr in rec.items():
            new = edit(rkey, akey, arr)
            if new is None:
                return None
            arrays[akey] = new
        out[rkey] = ArrayRecord(arrays)
    return out


def fill_missing(content: RecordDict, missing: dict[tuple[str, str], np.ndarray],
                 reference: RecordDict) -> RecordDict | None:
    """``content`` with missing values taken from ``reference`` (the global model sent);
    None when the reference lacks a matching array."""
    ref_arrays = {k: a for _, rec in arrays_of(reference) for k, a in rec.items()}

    def fill(rkey: str, akey: str, arr: Array) -> Array | None:
        mask = missing.get((rkey, akey))
        if mask is None or not mask.any():
            return arr
        ref = ref_arrays.get(akey)
        if ref is None or tuple(ref.shape) != tuple(arr.shape) or ref.dtype != arr.dtype:
            return None
        if mask.all():
            return Array(ref.numpy().copy())
        values = arr.numpy().copy()
        values.reshape(-1)[mask] = ref.numpy().reshape(-1)[mask]
        return Array(values)

    return _map_arrays(content, fill)


def flip_bits(content: RecordDict, ber: float, rng: np.random.Generator) -> tuple[RecordDict, int]:
    """Flip each value bit of the float arrays (and of raw byte payloads, e.g. encoded
    updates) with probability ``ber``; returns (content, flips)."""
    segs = [s for s in layout(content) if s.itemsize and _flippable(content, s)]
    bits = np.array([s.count * s.itemsize * 8 for s in segs], dtype=np.int64)
    total = int(bits.sum())
    flips = int(rng.binomial(total, ber)) if total else 0
    if flips == 0:
        return content, 0
    positions = np.sort(rng.choice(total, size=min(flips, total), replace=False))
    bounds = np.cumsum(bits)
    touched: dict[tuple[str, str], np.ndarray] = {}
    for seg_i, seg in enumerate(segs):
        lo = bounds[seg_i] - bits[seg_i]
        mine = positions[(positions >= lo) & (positions < bounds[seg_i])] - lo
        if len(mine):
            touched[(seg.record, seg.key)] = mine

    def flip(rkey: str, akey: str, arr: Array) -> Array:
        pos = touched.get((rkey, akey))
        if pos is None:
            return arr
        values = arr.numpy().copy()
        raw = values.reshape(-1).view(np.uint8)
        np.bitwise_xor.at(raw, pos // 8, (1 << (pos % 8)).astype(np.uint8))
        return Array(values)

    out = _map_arrays(content, flip)
    assert out is not None
    return out, flips


def _flippable(content: RecordDict, seg: Segment) -> bool:
    dtype = content.array_records[seg.record][seg.key].dtype
    if not dtype:  # a legacy Parameters tensor: its dtype is in its .npy header only
        return False
    dt = np.dtype(dtype)
    return dt.kind == "f" or dt == np.uint8


def implausible(content: RecordDict, reference: RecordDict, threshold: float) -> str | None:
    """The first array with a value beyond ``threshold x max(1, max|reference|)``, or None."""
    ref = {k: a for _, rec in arrays_of(reference) for k, a in rec.items()}
    for rkey, rec in arrays_of(content):
        for akey, arr in rec.items():
            values = array_view(arr)
            if values.dtype.kind != "f" or values.size == 0:
                continue
            scale = 1.0
            if akey in ref and ref[akey].numpy().size:
                scale = max(1.0, float(np.abs(ref[akey].numpy()).max()))
            if float(np.abs(values).max()) > threshold * scale:
                return f"array {rkey}/{akey}"
    return None
