"""Quantizers: fp16, bf16, deterministic int8/int4 (per tensor or per channel), QSGD.

Only float arrays are quantized; anything else passes through. Sub-byte codes are
packed (two int4 or four 2-bit codes per byte), so the payload really shrinks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from fedsim.clients.codecs.base import (
    Arrays,
    Codec,
    CodecContext,
    is_float,
    pack,
    register_codec,
    unpack,
)

from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class NoParams:
    pass


@register_codec("fp16", NoParams)
class Fp16(Codec):
    """IEEE half precision (round to nearest)."""

    name = "fp16"

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        return {(self.part(k, "h") if is_float(v) else k): (v.astype(np.float16) if is_float(v) else v)
                for k, v in arrays.items()}

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        out = {k: v for k, v in payload.items() if "#fp16." not in k}
        for key, parts in self.parts(payload).items():
            out[key] = parts["h"].astype(np.float32)
        return out


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


@register_codec("bf16", NoParams)
class Bf16(Codec):
    """bfloat16: float32's exponent, 7 mantissa bits."""

    name = "bf16"

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        return {(self.part(k, "b") if is_float(v) else k): (to_bf16(v) if is_float(v) else v)
                for k, v in arrays.items()}

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        out = {k: v for k, v in payload.items() if "#bf16." not in k}
        for key, parts in self.parts(payload).items():
            out[key] = from_bf16(parts["b"])
        return out


@dataclasses.dataclass(frozen=True)
class IntParams:
    bits: int = option(8, choices=(8, 4), doc="8 or 4 bits per value")
    per_channel: bool = option(False, doc="one scale per output channel (axis 0) instead of per tensor")


def _scales(x: np.ndarray, levels: int, per_channel: bool) -> np.ndarray:
    if per_channel and x.ndim >= 2:
        m = np.abs(x.reshape(x.shape[0], -1)).max(axis=1)
    else:
        m = np.array([np.abs(x).max() if x.size else 0.0])
    return np.where(m > 0, m / levels, 1.0).astype(np.float32)


@register_codec("int", IntParams)
class UniformInt(Codec):
    """Deterministic symmetric uniform quantization: q = round(x / scale), |q| <= 2^(b-1) - 1."""

    name = "int"

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        b = self.params.bits
        levels = 2 ** (b - 1) - 1
        out: Arrays = {}
        for k, v in arrays.items():
            if not is_float(v):
                out[k] = v
                continue
            scale = _scales(v, levels, self.params.per_channel)
            rows = scale.reshape(-1, *([1] * (v.ndim - 1))) if len(scale) > 1 else scale[0]
            q = np.clip(np.rint(v / rows), -levels, levels).astype(np.int8)
            out[self.part(k, "q")] = q if b == 8 else pack((q + levels).astype(np.uint8), 4)
            out[self.part(k, "scale")] = scale
            out[self.part(k, "shape")] = np.asarray(v.shape, dtype=np.int32)
        return out

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        b = self.params.bits
        levels = 2 ** (b - 1) - 1
        out = {k: v for k, v in payload.items() if "#int." not in k}
        for key, p in self.parts(payload).items():
            shape = tuple(int(s) for s in p["shape"])
            n = int(np.prod(shape)) if shape else 1
            q = p["q"].astype(np.float32) if b == 8 else unpack(p["q"], 4, n).astype(np.float32) - levels
            q = q.reshape(shape)
            scale = p["scale"]
            rows = scale.reshape(-1, *([1] * (len(shape) - 1))) if len(scale) > 1 else scale[0]
            out[key] = (q * rows).astype(np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class QsgdParams:
    bits: int = option(4, choices=(8, 4, 2), doc="bits per value: sign and level, s = 2^(bits-1) - 1 levels")
    bucket: int = option(512, ge=1, le=1 << 30, doc="values normalized together (one norm per bucket)")


@register_codec("qsgd", QsgdParams)
class Qsgd(Codec):
    """QSGD (Alistarh et al. 2017): stochastic rounding to s levels of |v_i| / ||v||; unbiased."""

    name = "qsgd"

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        s = 2 ** (self.params.bits - 1) - 1
        out: Arrays = {}
        for k, v in arrays.items():
            if not is_float(v):
                out[k] = v
                continue
            flat = v.astype(np.float64).reshape(-1)
            n = len(flat)
            nb = -(-n // self.params.bucket) if n else 0
            padded = np.zeros(nb * self.params.bucket)
            padded[:n] = flat
            buckets = padded.reshape(nb, self.params.bucket)
            norms = np.linalg.norm(buckets, axis=1)
            ratio = np.divide(np.abs(buckets), norms[:, None], out=np.zeros_like(buckets), where=norms[:, None] > 0)
            scaled = ratio * s
            low = np.floor(scaled)
            level = low + (ctx.rng(f"qsgd-{self.index}-{k}").random(scaled.shape) < (scaled - low))
            code = (np.sign(buckets) * level).reshape(-1)[:n] + s  # in [0, 2s]
            out[self.part(k, "q")] = pack(code.astype(np.uint8), self.params.bits)
            out[self.part(k, "norm")] = norms.astype(np.float32)
            out[self.part(k, "shape")] = np.asarray(v.shape, dtype=np.int32)
        return out

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        s = 2 ** (self.params.bits - 1) - 1
        out = {k: v for k, v in payload.items() if "#qsgd." not in k}
        for key, p in self.parts(payload).items():
            shape = tuple(int(x) for x in p["shape"])
            n = int(np.prod(shape)) if shape else 1
            code = unpack(p["q"], self.params.bits, n).astype(np.float64) - s
            norms = np.repeat(p["norm"].astype(np.float64), self.params.bucket)[:n]
            out[key] = (norms * code / s).astype(np.float32).reshape(shape)
        return out


@dataclasses.dataclass(frozen=True)
class Int8Params:
    bits: int = option(8, choices=(8,))
    per_channel: bool = option(False, doc="one scale per output channel (axis 0) instead of per tensor")


@dataclasses.dataclass(frozen=True)
class Int4Params:
    bits: int = option(4, choices=(4,))
    per_channel: bool = option(False, doc="one scale per output channel (axis 0) instead of per tensor")


register_codec("int8", Int8Params)(UniformInt)
register_codec("int4", Int4Params)(UniformInt)
