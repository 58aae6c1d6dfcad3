"""KvCache: append and attend against dense attention over the same keys."""

import numpy as np
import pytest

import gated_attention as ga
import naive


def test_prefill_then_decode_equals_dense(rng):
    b, hq, hkv, d = 2, 4, 2, 16
    q, k, v = naive.random_qkv(rng, b, 9, 9, hq, hkv, d)
    cache = ga.KvCache(b, hkv, d, 16)
    cache.append(k[:, :6], v[:, :6])
    out, lse = cache.attend(q[:, :6])
    want, want_lse = naive.attention(q[:, :6], k[:, :6], v[:, :6], causal=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    for t in range(6, 9):  # decode one token at a time
        cache.append(k[:, t : t + 1], v[:, t : t + 1])
        out, _ = cache.attend(q[:, t : t + 1])
        want, _ = naive.attention(q[:, t : t + 1], k[:, : t + 1], v[:, : t + 1], causal=True)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert cache.len(0) == 9 and cache.next_position(1) == 9
    np.testing.assert_array_equal(cache.keys(1)[0], k[1])
    np.testing.assert_array_equal(cache.values(0)[0], v[0])


def test_rope_keys_and_queries(rng):
    b, hq, hkv, d = 1, 2, 1, 16
    q, k, v = naive.random_qkv(rng, b, 5, 5, hq, hkv, d)
    table = ga.RopeTable(d, 10000.0, 32)
    cache = ga.KvCache(b, hkv, d, 8)
    cache.append(k, v, table)
    out, _ = cache.attend(q, table)
    pos = np.arange(5)[None, :]
    inv = naive.rope_frequencies(d)
    kr = naive.rope_rotate(k, pos, inv)
    want, _ = naive.attention(q, kr, v, causal=True, rope_q=(inv, pos, "neox"))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_sliding_window_policy(rng):
    q, k, v = naive.random_qkv(rng, 1, 10, 10, 2, 2, 8)
    cache = ga.KvCache(1, 2, 8, 4, policy="sliding_window", window=3, sink_tokens=1)
    for t in range(10):
        cache.append(k[:, t : t + 1], v[:, t : t + 1])
        out, _ = cache.attend(q[:, t : t + 1])
        want, _ = naive.attention(q[:, t : t + 1], k[:, : t + 1], v[:, : t + 1], causal=True, window=3,
                                  sink_tokens=1)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert cache.positions(0) == [0, 7, 8, 9]


def test_rollback_truncate_and_errors(rng):
    _, k, v = naive.random_qkv(rng, 2, 1, 6, 2, 2, 8)
    cache = ga.KvCache(2, 2, 8, 6)
    cache.append(k, v)
    cache.rollback(0, 2)
    cache.truncate(1, 1)
    assert (cache.len(0), cache.len(1)) == (4, 1)
    with pytest.raises(ValueError, match="kv cache"):
        cache.rollback(1, 2)
    with pytest.raises(ValueError, match="append needs 10 slots, capacity is 6"):
        cache.append(np.ones((2, 6, 2, 8), np.float32), np.ones((2, 6, 2, 8), np.float32))
    assert (cache.len(0), cache.len(1)) == (4, 1)  # nothing written on error
    with pytest.raises(ValueError, match="outside"):
        cache.len(2)
    with pytest.raises(ValueError):
        cache.attend(np.ones((2, 2, 2, 4), np.float32))  # head_dim 4 against 8
    with pytest.raises(ValueError, match="policy"):
        ga.KvCache(1, 1, 8, 4, policy="sliding_window")
    with pytest.raises(TypeError, match="unexpected keyword"):
        cache.attend(np.ones((2, 1, 2, 8), np.float32), causal=True)
    cache.clear()
    assert cache.len(0) == 0


def test_storage_types(rng):
    _, k, v = naive.random_qkv(rng, 1, 1, 4, 2, 2, 8)
    for dtype in ["float16", "bfloat16"]:
        cache = ga.KvCache(1, 2, 8, 4, dtype=dtype)
        cache.append(k, v)
        got = cache.keys(0).astype(np.float32) if dtype == "float16" or cache.keys(0).dtype != np.uint16 else None
        if got is not None:
            np.testing.assert_allclose(got[0], k[0], rtol=8e-3, atol=8e-3)
        assert cache.dtype == dtype


def test_streaming_llm_policy_rotates_by_cache_index(rng):
    q, k, v = naive.random_qkv(rng, 1, 12, 12, 2, 1, 16)
    table = ga.RopeTable(16, 10000.0, 64)
    inv = naive.rope_frequencies(16)
    cache = ga.KvCache(1, 1, 16, 7, policy="streaming_llm", sink_tokens=2, recent=4)
    for t in range(12):
        cache.append(k[:, t : t + 1], v[:, t : t + 1], table)
        out, _ = cache.attend(q[:, t : t + 1], table)
        # attended: the 2 sink tokens and the 4 most recent, rotated by their index in that list
        kept = sorted(set(range(min(2, t + 1))) | set(range(max(0, t - 3), t + 1)))
        assert set(kept) <= set(cache.positions(0)) and cache.len(0) <= 7
        n = len(kept)
        kr = naive.rope_rotate(k[:, kept], np.arange(n)[None, :], inv)  # keys at their cache slots
        want, _ = naive.attention(q[:, t : t + 1], kr, v[:, kept], rope_q=(inv, np.array([[n - 1]]), "neox"))
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=f"token {t}")


def test_value_gate_and_single_rows(rng):
    q, k, v = naive.random_qkv(rng, 2, 3, 3, 2, 2, 8)
    g = rng.uniform(-2, 2, (2, 3, 2, 1)).astype(np.float32)  # head-wise value gate
    cache = ga.KvCache(2, 2, 8, 8)
    cache.append(k, v, value_gate=g)
    np.testing.assert_allclose(cache.values(1)[0], v[1] * naive.sigmoid(g[1].astype(np.float64)), rtol=1e-6)
    out, _ = cache.attend(q)
    want, _ = naive.attention(q, k, v * naive.sigmoid(g.astype(np.float64)), causal=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    cache.append(k[1:, :2], v[1:, :2], row=1)  # rows may hold different lengths
    assert (cache.len(0), cache.len(1)) == (3, 5)
    with pytest.raises(ValueError, match="outside"):
        cache.append(k[:1], v[:1], row=2)
