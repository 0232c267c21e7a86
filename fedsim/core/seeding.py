"""All randomness derives from one run seed.

A stream is named by ``(seed, round, client, purpose)``; the same name gives the same
numbers in every process, so executors and worker counts cannot change results.
"""

from __future__ import annotations

import functools
import hashlib
import random

import numpy as np
import torch

#: Client id used for draws that belong to the server, not to any client.
SERVER = -1


def _purpose_code(purpose: str) -> int:
    return int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=4).digest(), "little")


def entropy(seed: int, round_: int, client: int, purpose: str) -> list[int]:
    """The integer words that seed one stream (client ids may be -1 for the server)."""
    return [int(seed) & 0xFFFFFFFF, int(round_) & 0xFFFFFFFF, (int(client) + 1) & 0xFFFFFFFF,
            _purpose_code(purpose)]


def rng(seed: int, round_: int, client: int, purpose: str) -> np.random.Generator:
    """A numpy generator for one (seed, round, client, purpose) stream."""
    return np.random.default_rng(entropy(seed, round_, client, purpose))


def int_seed(seed: int, round_: int, client: int, purpose: str) -> int:
    """A 63-bit integer seed for libraries that take one (torch, ``random``)."""
    words = np.random.SeedSequence(entropy(seed, round_, client, purpose)).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF


def torch_generator(seed: int, round_: int, client: int, purpose: str) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int_seed(seed, round_, client, purpose))
    return gen


def seed_torch(value: int) -> None:
    """What ``torch.manual_seed(value)`` does for the devices in use, without its cost on a
    CPU-only machine (~130-220 us a call, against ~1.5 us: it formats a stack trace looking
    for accelerators): the CPU generator, and CUDA's when CUDA is there."""
    torch.default_generator.manual_seed(value)
    if _has_cuda():
        torch.cuda.manual_seed_all(value)


@functools.cache
def _has_cuda() -> bool:
    return torch.cuda.is_available()


def seed_python_random(seed: int, round_: int, purpose: str) -> None:
    """Seed the global ``random`` and ``numpy.random`` state, which Flower's strategies use
    (node sampling; the DP wrappers' Gaussian noise)."""
    value = int_seed(seed, round_, SERVER, purpose)
    random.seed(value)
    np.random.seed(value % 2**32)
