"""Update codecs (quantizers, sparsifiers with error feedback), chainable. See `base`."""

from fedsim.clients.codecs import quantize, sparsify
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

from fedsim.clients import lora
