"""Update codecs: error bounds, unbiasedness, packed sizes, error feedback, chains, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from fedsim.clients.codecs import CODECS, CodecContext, build_pipeline
from fedsim.clients.codecs.base import pack, unpack
from fedsim.clients.codecs.quantize import from_bf16, to_bf16
from fedsim.clients.codecs.sparsify import density

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.core.schema import Named, parse
from tests.conftest import tiny_config


def codec(name: str, **params) -> Named:
    return Named(name, parse(CODECS.get(name, "codec").params, params, "codec"))


def roundtrip(chain: list[Named], arrays: dict, rnd: int = 1, client: int = 0, state=None, server=None):
    p = build_pipeline(chain)
    payload = p.encode(arrays, CodecContext(0, rnd, client, {} if state is None else state))
    return payload, p.decode(payload, CodecContext(0, rnd, client, {} if server is None else server))


X = {"w": np.random.default_rng(0).normal(size=(64, 100)).astype(np.float32),
     "b": np.random.default_rng(1).normal(size=100).astype(np.float32),
     "steps": np.array([7], dtype=np.int64)}


def raw_bytes(payload: dict) -> int:
    return sum(v.nbytes for v in payload.values())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_unpack(bits: int) -> None:
    v = np.random.default_rng(bits).integers(0, 2**bits, 1001).astype(np.uint8)
    packed = pack(v, bits)
    assert len(packed) == -(-1001 * bits // 8)
    assert np.array_equal(unpack(packed, bits, 1001), v)


def test_fp16_bf16_error_bounds_and_sizes() -> None:
    payload, out = roundtrip([codec("fp16")], X)
    assert np.abs(out["w"] - X["w"]).max() <= np.abs(X["w"]).max() * 2**-11
    assert raw_bytes(payload) == (64 * 100 + 100) * 2 + 8
    assert np.array_equal(out["steps"], X["steps"])  # non-float arrays pass through
    payload, out = roundtrip([codec("bf16")], X)
    rel = np.abs(out["w"] - X["w"]) / np.abs(X["w"])
    assert rel.max() <= 2**-8  # 7 mantissa bits, round to nearest
    assert raw_bytes(payload) == (64 * 100 + 100) * 2 + 8
    # Round-to-nearest-even on a tie: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
    assert from_bf16(to_bf16(np.array([1 + 2**-8], dtype=np.float32)))[0] == 1.0


@pytest.mark.parametrize(("name", "bits"), [("int8", 8), ("int4", 4)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int_quantizers_error_and_packed_size(name: str, bits: int, per_channel: bool) -> None:
    payload, out = roundtrip([codec(name, per_channel=per_channel)], X)
    levels = 2 ** (bits - 1) - 1
    if per_channel:
        bound = np.abs(X["w"]).max(axis=1, keepdims=True) / levels / 2
    else:
        bound = np.abs(X["w"]).max() / levels / 2
    assert (np.abs(out["w"] - X["w"]) <= bound + 1e-6).all()  # at most half a step
    n_w, n_b = 6400, 100
    scales = (64 if per_channel else 1) + 1
    values = (n_w + n_b) if bits == 8 else (-(-n_w // 2) + -(-n_b // 2))
    assert raw_bytes(payload) == values + 4 * scales + 4 * (2 + 1) + 8  # codes, scales, shapes, steps


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_qsgd_is_unbiased_and_packed(bits: int) -> None:
    v = {"w": np.random.default_rng(3).normal(size=300).astype(np.float32)}
    p = build_pipeline([codec("qsgd", bits=bits, bucket=100)])
    draws = np.stack([p.decode(p.encode(v, CodecContext(0, r, 0, {})), CodecContext(0, r, 0, {}))["w"]
                      for r in range(2000)])
    mean = draws.mean(axis=0)
    # E[Q(v)] = v: the mean of 2000 draws is within 4 standard errors of v, coordinate-wise.
    se = draws.std(axis=0) / np.sqrt(len(draws)) + 1e-7
    assert (np.abs(mean - v["w"]) <= 4 * se + 1e-6).mean() > 0.99
    assert np.abs(mean - v["w"]).mean() < 0.05 * np.abs(v["w"]).mean() * (4 if bits == 2 else 1)
    payload = p.encode(v, CodecContext(0, 0, 0, {}))
    assert raw_bytes(payload) == -(-300 * bits // 8) + 3 * 4 + 4  # codes, 3 bucket norms, shape


def test_topk_keeps_the_largest_and_payload_is_indices_plus_values() -> None:
    payload, out = roundtrip([codec("topk", k=0.01, error_feedback="none")], X)
    flat = X["w"].reshape(-1)
    kept = np.flatnonzero(out["w"].reshape(-1))
    assert len(kept) == 64 and set(kept) == set(np.argsort(-np.abs(flat))[:64])
    assert np.allclose(out["w"].reshape(-1)[kept], flat[kept])
    # uint16 indices + float32 values + shape, for both tensors; steps as is.
    assert raw_bytes(payload) == 64 * (2 + 4) + 8 + 1 * (2 + 4) + 4 + 8


def test_randk_regenerates_indices_from_the_seed_and_can_be_unbiased() -> None:
    payload, out = roundtrip([codec("randk", k=0.1)], X, rnd=3, client=5)
    assert raw_bytes(payload) == 640 * 4 + 8 + 10 * 4 + 4 + 8  # values only (+ shapes)
    kept = np.flatnonzero(out["w"].reshape(-1))
    assert len(kept) == 640 and np.allclose(out["w"].reshape(-1)[kept], X["w"].reshape(-1)[kept])
    v = {"w": np.arange(1, 21, dtype=np.float32)}
    mean = np.mean([roundtrip([codec("randk", k=0.25, scale=True, error_feedback="none")], v, rnd=r)[1]["w"]
                    for r in range(4000)], axis=0)
    assert np.allclose(mean, v["w"], rtol=0.1)


def test_dgc_warmup_schedule() -> None:
    assert density(0.001, 0, 1) == 0.001
    assert density(0.001, 4, 0) == 1.0
    assert density(0.001, 4, 2) == pytest.approx(0.001 ** 0.5)
    assert density(0.001, 4, 4) == 0.001


def _quadratic(ef: str, rounds: int = 600, clients: int = 5) -> float:
    """Federated gradient descent on f(x) = mean_i 0.5 ||A_i x - b_i||^2: each client sends the
    top-5% of its own step; returns the optimality gap."""
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(60, 40)) / 8 for _ in range(clients)]
    b = [rng.normal(size=60) for _ in range(clients)]
    x = np.zeros(40, dtype=np.float32)
    p = build_pipeline([codec("topk", k=0.05, error_feedback=ef)])
    client_state = [dict() for _ in range(clients)]
    server_state = [dict() for _ in range(clients)]
    lr = 0.1

    def f(z: np.ndarray) -> float:
        return float(np.mean([0.5 * np.sum((ai @ z - bi) ** 2) for ai, bi in zip(a, b)]))

    for r in range(rounds):
        steps = []
        for i in range(clients):
            grad = (a[i].T @ (a[i] @ x - b[i])).astype(np.float32)
            payload = p.encode({"x": -lr * grad}, CodecContext(0, r, i, client_state[i]))
            steps.append(p.decode(payload, CodecContext(0, r, i, server_state[i]))["x"])
        x = x + np.mean(steps, axis=0)
    opt = np.linalg.lstsq(np.vstack(a), np.concatenate(b), rcond=None)[0]
    return f(x) - f(opt)


def test_topk_with_error_feedback_converges_where_plain_topk_stalls() -> None:
    # Heterogeneous clients: plain top-k is biased and stalls at a gap; error feedback keeps
    # improving (classic) or converges (EF21).
    stall = [_quadratic("none", r) for r in (600, 1500)]
    classic = [_quadratic("classic", r) for r in (600, 1500)]
    assert abs(stall[1] - stall[0]) < 0.02 * stall[0]  # stuck
    assert classic[1] < 0.9 * classic[0] and classic[1] < 0.2 * stall[1]
    assert _quadratic("ef21", 600) < 1e-6


def test_error_feedback_residual_persists_in_client_state() -> None:
    state: dict = {}
    p = build_pipeline([codec("topk", k=0.01)])
    u = {"w": np.ones(1000, dtype=np.float32)}
    p.encode(u, CodecContext(0, 1, 0, state))
    (key,) = state
    assert state[key].sum() == pytest.approx(990.0)  # what was not sent
    p.encode({"w": np.zeros(1000, dtype=np.float32)}, CodecContext(0, 9, 0, state))  # many rounds later
    assert state[key].sum() == pytest.approx(980.0)


def test_chain_is_undone_in_reverse() -> None:
    payload, out = roundtrip([codec("topk", k=0.1, error_feedback="none"), codec("qsgd", bits=8)], X)
    assert any("#topk.val#qsgd.q" in k for k in payload) and any(k.endswith("#topk.idx") for k in payload)
    kept = np.flatnonzero(out["w"].reshape(-1))
    assert len(kept) <= 640
    flat = X["w"].reshape(-1)
    assert np.abs(out["w"].reshape(-1)[kept] - flat[kept]).max() < 0.1 * np.abs(flat).max()


def test_codecs_end_to_end_and_bytes_shrink() -> None:
    base = tiny_config(run={"rounds": 3}, model={"name": "mlp", "hidden": [128]},
                       strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    plain = fedsim.run(base, write=False)
    for chain, ratio in (([{"name": "fp16"}], 0.55), ([{"name": "int8"}], 0.3), ([{"name": "qsgd", "bits": 2}], 0.12),
                         ([{"name": "topk", "k": 0.01}, {"name": "qsgd", "bits": 8}], 0.1)):  # .npy headers weigh on tiny models
        res = fedsim.run(fedsim.from_dict({**base.to_dict(), "codec": chain}), write=False)
        assert res.summary["client_failures"] == 0
        assert res.summary["bytes_up"] < ratio * plain.summary["bytes_up"], chain
        assert res.summary["bytes_down"] == plain.summary["bytes_down"]
        assert np.isfinite(res.history[-1]["central_loss"])
    fp16 = fedsim.run(fedsim.from_dict({**base.to_dict(), "codec": [{"name": "fp16"}]}), write=False)
    assert abs(fp16.summary["final_central_acc"] - plain.summary["final_central_acc"]) < 0.05


@pytest.mark.parametrize(("chain", "fragment"), [
    ([{"name": "gzip"}], "codec[0].name = 'gzip': unknown codec"),
    ([{"name": "qsgd", "bits": 3}], "codec[0].bits = 3: must be one of 8, 4, 2"),
    ([{"name": "topk", "k": 0.0}], "codec[0].k = 0.0: must be in (0, 1]"),
    ([{"name": "topk", "k": 1.5}], "codec[0].k = 1.5: must be in (0, 1]"),
    ([{"name": "int8", "bits": 4}], "codec[0].bits = 4: must be one of 8"),
])
def test_codec_config_errors(chain: list, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        fedsim.from_dict({**tiny_config().to_dict(), "codec": chain})
    assert str(info.value).startswith(fragment)


def test_framed_payload_is_one_array_of_exactly_the_packed_parts() -> None:
    from fedsim.clients.codecs.transport import PAYLOAD, encode_update, frame, unframe

    p = build_pipeline([codec("qsgd", bits=2, bucket=100)])
    record, marker, _ = encode_update(p, {k: v + 1 for k, v in X.items() if v.dtype.kind == "f"},
                                      {k: v for k, v in X.items() if v.dtype.kind == "f"}, CodecContext(0, 1, 0, {}))
    assert list(record) == [PAYLOAD] and marker["chain"] == "qsgd"
    parts = unframe(record[PAYLOAD].numpy())
    packed = sum(v.nbytes for v in parts.values())
    assert packed == -(-6400 * 2 // 8) + 64 * 4 + 8 + -(-100 * 2 // 8) + 4 + 4  # codes, norms, shapes
    blob = record[PAYLOAD].numpy()
    index_len = int.from_bytes(blob[:4].tobytes(), "little")
    assert len(blob) == 4 + index_len + packed  # the frame adds only its (counted) index
    assert {k: v.tolist() for k, v in unframe(frame(parts)).items()} == {k: v.tolist() for k, v in parts.items()}
    with pytest.raises(ValueError):
        unframe(blob[:-1])


def test_a_payload_damaged_in_transit_is_excluded_not_aggregated() -> None:
    cfg = fedsim.from_dict({**tiny_config(run={"rounds": 2}, network={"bit_error_rate": 1e-3},
                                          strategy={"name": "fedavg", "fraction_train": 1.0,
                                                    "fraction_evaluate": 0.0}).to_dict(),
                            "codec": [{"name": "int8"}]})
    res = fedsim.run(cfg, write=False)
    assert sum(r["corrupted"] for r in res.history) > 0
    assert all(np.isfinite(a.numpy()).all() for a in res.arrays.values())
