"""Update codecs (quantizers, sparsifiers with error feedback), chainable. See `base`."""

from fedsim.clients.codecs import quantize, sparsify  # noqa: F401  (registration)
from fedsim.clients.codecs.base import (
    CODECS,
    MARKER,
    Codec,
    CodecContext,
    Pipeline,
    build_pipeline,
    check_chain,
    register_codec,
    resolve_codec,
)

__all__ = ["CODECS", "MARKER", "Codec", "CodecContext", "Pipeline", "build_pipeline", "check_chain",
           "register_codec", "resolve_codec"]

from fedsim.clients import lora  # noqa: E402,F401  (registers "lora"; peft is imported only when used)
