"""Character-level next-token tasks: LEAF Shakespeare (read from files) and generated dialects.

Both give LEAF's formulation: an input is a window of ``seq_len`` character ids (stored as
float32 like every fedsim input; exact for ids below 2**24), its label the id of the
character that follows. Models embed the ids (``char_lstm``, ``char_transformer``); the
loss is next-token cross-entropy and the accuracy next-token accuracy. Tokenization is by
character, so no tokenizer is downloaded.

- ``shakespeare``: LEAF's preprocessed JSON, one natural client per speaking role. Put
  LEAF's output in ``ROOT/train/*.json`` and ``ROOT/test/*.json``; each file holds
  ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": ["80 chars", ...],
  "y": ["c", ...]}}}``. Characters map to their index in LEAF's 80-letter alphabet
  (`LEAF_ALPHABET`); any other character is refused, naming it.
- ``dialects`` (synthetic, generated, nothing downloaded): ``num_dialects`` seeded
  first-order Markov chains over one shared 29-character alphabet. Every dialect's
  next-character distribution is ``softmax(sharpness * (base + spread * own))`` with
  ``base`` shared by all dialects and ``own`` drawn per dialect (both standard normal, per
  preceding character), so ``spread`` sets how non-IID the clients are. Client ``k`` speaks dialect
  ``k mod num_dialects`` and writes one text of ``seq_len + n_k`` characters; its ``n_k``
  windows are its samples (one natural group per client). The official test split is a
  fresh text of ``test_per_dialect`` windows per dialect.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, register_dataset
from fedsim.scenarios.datasets.mnist import ImageRootParams

from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.core.schema import option

# LEAF's Shakespeare vocabulary (leaf/models/utils/language_utils.py): 80 characters.
LEAF_ALPHABET = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
DIALECT_ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """All (``seq_len`` ids, next id) pairs of a text, as (float32 inputs, int64 labels)."""
    n = len(ids) - seq_len
    if n <= 0:
        return np.zeros((0, seq_len), np.float32), np.zeros(0, np.int64)
    idx = np.arange(seq_len)[None, :] + np.arange(n)[:, None]
    return ids[idx].astype(np.float32), ids[seq_len:].astype(np.int64)


# ------------------------------------------------------------------ LEAF Shakespeare
@dataclasses.dataclass(frozen=True)
class ShakespeareParams(ImageRootParams):
    seq_len: int = option(80, ge=1, le=100_000, doc="characters per input (LEAF: 80)")


_INDEX = {c: i for i, c in enumerate(LEAF_ALPHABET)}


def _encode(text: object, want: int, where: str) -> list[int]:
    if not isinstance(text, str) or len(text) != want:
        raise ValueError(f"{where}: expected a string of {want} characters, got {str(text)[:40]!r}")
    try:
        return [_INDEX[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"{where}: character {exc.args[0]!r} is not in LEAF's alphabet") from None


def _read_split(folder: Path, seq_len: int, roles: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs: list[list[int]] = []
    ys: list[int] = []
    gs: list[int] = []
    for path in sorted(folder.glob("*.json")):
        try:
            blob = json.loads(path.read_text(encoding="utf-8"))
            for user in blob["users"]:
                record = blob["user_data"][user]
                if len(record["x"]) != len(record["y"]):
                    raise ValueError(f"user {user}: {len(record['x'])} inputs but {len(record['y'])} labels")
                gid = roles.setdefault(str(user), len(roles))
                for i, (x, y) in enumerate(zip(record["x"], record["y"])):
                    xs.append(_encode(x, seq_len, f"user {user} sample {i} x"))
                    ys.append(_encode(y, 1, f"user {user} sample {i} y")[0])
                    gs.append(gid)
        except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError("data.dataset.root", str(folder), f"malformed LEAF file {path.name}: {exc}") from None
    if not xs:
        raise ConfigError("data.dataset.root", str(folder.parent),
                          "no Shakespeare LEAF files; put LEAF's train/*.json and test/*.json under it")
    return np.asarray(xs, np.float32), np.asarray(ys, np.int64), np.asarray(gs, np.int64)


@register_dataset("shakespeare", params=ShakespeareParams)
def load_shakespeare(params: ShakespeareParams, seed: int, num_clients: int) -> Dataset:
    root = Path(params.root)
    roles: dict[str, int] = {}
    x, y, groups = _read_split(root / "train", params.seq_len, roles)
    test_x, test_y, _ = _read_split(root / "test", params.seq_len, roles)
    return Dataset(name="shakespeare", x=x, y=y, num_classes=len(LEAF_ALPHABET), groups=groups,
                   test_x=test_x, test_y=test_y)


# ------------------------------------------------------------------ generated dialects
@dataclasses.dataclass(frozen=True)
class DialectParams:
    num_dialects: int = option(4, ge=1, le=10_000)
    spread: float = option(1.0, ge=0.0, le=100.0, doc="how far dialects depart from the shared base (0 = IID)")
    sharpness: float = option(2.0, gt=0.0, le=100.0, doc="higher = more predictable text")
    seq_len: int = option(16, ge=2, le=4096, doc="characters per input")
    samples_per_client: int = option(0, ge=0, le=10_000_000, doc="0 = int(lognormal(5, 0.7)) + 40 per client")
    test_per_dialect: int = option(200, ge=1, le=10_000_000)


def _chains(params: DialectParams, seed: int) -> np.ndarray:
    """(num_dialects, V, V) next-character probabilities given the preceding one."""
    rng = seeding.rng(seed, 0, seeding.SERVER, "dialects")
    v = len(DIALECT_ALPHABET)
    base = rng.standard_normal((v, v))
    own = rng.standard_normal((params.num_dialects, v, v))
    logits = params.sharpness * (base[None] + params.spread * own)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def _speak(chain: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    v = chain.shape[-1]
    cdf = np.cumsum(chain, axis=-1)
    out = np.empty(length, np.int64)
    a = int(rng.integers(v))
    draws = rng.random(length)
    for t in range(length):
        a = min(int(np.searchsorted(cdf[a], draws[t], side="right")), v - 1)
        out[t] = a
    return out


@register_dataset("dialects", params=DialectParams)
def load_dialects(params: DialectParams, seed: int, num_clients: int) -> Dataset:
    chains = _chains(params, seed)
    rng = seeding.rng(seed, 0, seeding.SERVER, "dialect-texts")
    if params.samples_per_client:
        sizes = np.full(num_clients, params.samples_per_client, np.int64)
    else:
        sizes = rng.lognormal(5.0, 0.7, num_clients).astype(np.int64) + 40
    xs, ys, gs = [], [], []
    for k in range(num_clients):
        text = _speak(chains[k % params.num_dialects], params.seq_len + int(sizes[k]), rng)
        x, y = windows(text, params.seq_len)
        xs.append(x)
        ys.append(y)
        gs.append(np.full(len(y), k, np.int64))
    tx, ty = [], []
    for d in range(params.num_dialects):
        x, y = windows(_speak(chains[d], params.seq_len + params.test_per_dialect, rng), params.seq_len)
        tx.append(x)
        ty.append(y)
    return Dataset(name="dialects", x=np.concatenate(xs), y=np.concatenate(ys), num_classes=len(DIALECT_ALPHABET),
                   groups=np.concatenate(gs), test_x=np.concatenate(tx), test_y=np.concatenate(ty))
