"""Update codecs: what a client's update looks like on the wire.

A codec turns a dict of named arrays into another (``encode`` on the client) and back
(``decode`` on the server side of the grid, before the strategy sees the reply). Codecs
chain: each encodes the previous one's payload, and the server undoes the chain in
reverse. Payload parts are named ``"<key>#<codec>.<part>"``; a codec leaves arrays it
does not handle (e.g. a quantizer, integer indices) as they are. Clients encode the
*delta* ``w_local - w_global``; the grid rebuilds ``w_global + delta`` so every Flower
strategy aggregates weights as usual. What travels (and is charged by the metrics and
the link model) is the encoded payload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.core.registry import PathContract, PluginRegistry, subclass_of
from fedsim.core.schema import Named

Arrays = dict[str, np.ndarray]

def _adapt(obj: Any, target: str, field: str) -> Any:
    return subclass_of(Codec, "a codec is built as cls(params)")(obj, target, field)


#: A user's codec by path is a `Codec` subclass; its ``Params`` dataclass (if it declares
#: one) checks the scenario's keys, else they reach it as attributes of ``self.params``.
CODECS = PluginRegistry("codec", PathContract(adapt=_adapt, params="class"))

#: Reply record marking an encoded payload (so replies of other ClientApps pass untouched).
MARKER = "fedsim-codec"


def register_codec(name: str, params: type | None = None) -> Callable[[type], type]:
    """Register a `Codec` subclass, built as ``cls(params)``: ``params`` (or, without it, the
    class's own ``Params`` dataclass, as by path) checks the scenario's keys."""
    return CODECS.register_fn(name, params)


def resolve_codec(name: str, raw: Mapping[str, Any], path: str) -> Any:
    import fedsim.clients.codecs  # noqa: F401  (registers every codec, "lora" included)

    return CODECS.resolve_params(name, raw, path)


resolve_codec.registry = CODECS  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)


@dataclasses.dataclass
class CodecContext:
    """What a codec may use: the run seed, round and client (for seeded randomness), and
    a persistent state dict of arrays (the client's on encode, the server's copy of that
    client on decode), e.g. error-feedback residuals."""

    seed: int
    round: int
    client: int
    state: dict[str, np.ndarray]
    reference: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # the global model sent

    def rng(self, purpose: str) -> np.random.Generator:
        return seeding.rng(self.seed, self.round, self.client, purpose)


class Codec:
    """Base class: ``encode``/``decode`` a dict of arrays. ``index`` namespaces state."""

    name = "codec"

    def __init__(self, params: Any) -> None:
        self.params = params
        self.index = 0

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        raise NotImplementedError

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        raise NotImplementedError

    # helpers for subclasses
    def part(self, key: str, part: str) -> str:
        return f"{key}#{self.name}.{part}"

    def parts(self, payload: Arrays) -> dict[str, dict[str, np.ndarray]]:
        """``{original key: {part: array}}`` for this codec's parts; others are left out."""
        marker = f"#{self.name}."
        out: dict[str, dict[str, np.ndarray]] = {}
        for k, v in payload.items():
            base, sep, part = k.rpartition(marker)
            if sep and "#" not in part:
                out.setdefault(base, {})[part] = v
        return out

    def state_key(self, key: str, what: str) -> str:
        return f"{self.index}:{self.name}:{what}:{key}"


def is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


class Pipeline:
    """A chain of codecs; ``encode`` in order, ``decode`` in reverse."""

    def __init__(self, codecs: Sequence[Codec]) -> None:
        self.codecs = list(codecs)
        for i, c in enumerate(self.codecs):
            c.index = i

    def __bool__(self) -> bool:
        return bool(self.codecs)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.codecs]

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        out = dict(arrays)
        for c in self.codecs:
            out = c.encode(out, ctx)
        return out

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        out = dict(payload)
        for c in reversed(self.codecs):
            out = c.decode(out, ctx)
        return out


def build_pipeline(chain: Sequence[Named]) -> Pipeline:
    codecs = []
    for i, spec in enumerate(chain):
        if spec.name == "lora":
            continue  # LoRA changes the model itself (see clients.lora), not the payload
        codecs.append(CODECS.get(spec.name, f"codec[{i}].name").fn(spec.params))
    return Pipeline(codecs)


def check_chain(chain: Sequence[Named], path: str = "codec") -> None:
    names = [c.name for c in chain]
    if "lora" in names and names.index("lora") != 0:
        raise ConfigError(f"{path}[{names.index('lora')}].name", "lora", "must come first in the chain")
    if names.count("lora") > 1:
        raise ConfigError(path, names, "lora may appear once")


# ------------------------------------------------------------------ bit packing
def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints < 2**bits (bits in 1, 2, 4, 8) into a uint8 array."""
    v = np.asarray(values, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return v.copy()
    per = 8 // bits
    pad = (-len(v)) % per
    if pad:
        v = np.concatenate([v, np.zeros(pad, dtype=np.uint8)])
    v = v.reshape(-1, per)
    out = np.zeros(len(v), dtype=np.uint8)
    for j in range(per):
        out |= (v[:, j] << (j * bits)).astype(np.uint8)
    return out


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return p[:count].copy()
    per = 8 // bits
    mask = (1 << bits) - 1
    out = np.stack([(p >> (j * bits)) & mask for j in range(per)], axis=1).reshape(-1)
    return out[:count].astype(np.uint8)
