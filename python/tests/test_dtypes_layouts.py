"""Storage types and memory layouts: round-trips, zero-copy views, bit patterns."""

import numpy as np
import pytest

import gated_attention as ga
import naive

ml_dtypes = pytest.importorskip("ml_dtypes") if False else None
try:
    import ml_dtypes
except ImportError:  # pragma: no cover - the bf16 tests below skip
    ml_dtypes = None


def test_float16_round_trip(rng):
    q, k, v = (t.astype(np.float16) for t in naive.random_qkv(rng))
    out, lse = ga.attention(q, k, v, causal=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    want, _ = naive.attention(q, k, v, causal=True)  # the f16 inputs, widened exactly
    np.testing.assert_allclose(out.astype(np.float64), want, rtol=1e-3, atol=1e-3)
    ga.assert_attention_close((out, lse), q, k, v, causal=True)


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")
def test_bfloat16_ml_dtypes_and_uint16_bits(rng):
    q, k, v = (t.astype(ml_dtypes.bfloat16) for t in naive.random_qkv(rng))
    out, lse = ga.attention(q, k, v, causal=True)
    assert out.dtype == ml_dtypes.bfloat16
    want, _ = naive.attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), causal=True)
    np.testing.assert_allclose(out.astype(np.float64), want, rtol=8e-3, atol=8e-3)
    ga.assert_attention_close(out, q, k, v, causal=True)
    bits = [t.view(np.uint16) for t in (q, k, v)]
    out_bits, lse_bits = ga.attention(*bits, causal=True, dtype="bfloat16")
    assert out_bits.dtype == np.uint16
    np.testing.assert_array_equal(out_bits, out.view(np.uint16))
    np.testing.assert_array_equal(lse_bits, lse)
    ga.assert_attention_close(out_bits, *bits, causal=True, dtype="bfloat16")


def test_uint16_bits_without_ml_dtypes(rng):
    """bf16 as bit patterns: the top half of an f32, computed here without ml_dtypes."""
    q, k, v = naive.random_qkv(rng)
    bits = [(t.view(np.uint32) >> 16).astype(np.uint16) for t in (q, k, v)]  # truncation: exact bf16 values
    widened = [(b.astype(np.uint32) << 16).view(np.float32) for b in bits]
    out, _ = ga.attention(*bits, dtype="bfloat16")
    got = (out.astype(np.uint32) << 16).view(np.float32)
    want, _ = naive.attention(*widened)
    np.testing.assert_allclose(got, want, rtol=8e-3, atol=8e-3)
    with pytest.raises(TypeError, match="bit patterns"):
        ga.attention(*bits)


def test_bhsd_layout(rng):
    q, k, v = naive.random_qkv(rng)
    out, lse = ga.attention(q, k, v, causal=True)
    qt, kt, vt = (np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in (q, k, v))
    out_t, lse_t = ga.attention(qt, kt, vt, causal=True, layout="bhsd")
    assert out_t.shape == (2, 4, 5, 16) and out_t.flags.c_contiguous
    np.testing.assert_array_equal(out_t.transpose(0, 2, 1, 3), out)
    np.testing.assert_array_equal(lse_t, lse)
    ref_t, _ = ga.reference_attention(qt, kt, vt, causal=True, layout="bhsd")
    assert ref_t.shape == out_t.shape
    ga.assert_attention_close((out_t, lse_t), qt, kt, vt, causal=True, layout="bhsd")


def test_strided_views_are_read_in_place(rng):
    q, k, v = naive.random_qkv(rng)
    big = rng.uniform(-1, 1, (2, 7, 4, 3, 16)).astype(np.float32)
    k_view = big[:, :, :2, 1]  # every stride but the last is not the contiguous one
    v_view = big[:, :, 2:, 0]
    q_view = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # bshd view of bhsd memory
    assert not (k_view.flags.c_contiguous or q_view.flags.c_contiguous)
    out, lse = ga.attention(q_view, k_view, v_view, causal=True)
    want, want_lse = naive.attention(q_view, k_view, v_view, causal=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    ga.assert_attention_close((out, lse), q_view, k_view, v_view, causal=True)


def test_broadcast_stride_zero(rng):
    q, _, _ = naive.random_qkv(rng)
    row = rng.uniform(-1, 1, (1, 1, 2, 16)).astype(np.float32)
    k = np.broadcast_to(row, (2, 7, 2, 16))  # strides 0: every key equal, no memory behind it
    assert k.strides[0] == 0 and k.strides[1] == 0
    out, _ = ga.attention(q, k, k, causal=True)
    np.testing.assert_allclose(out, naive.attention(q, k, k, causal=True)[0], rtol=1e-5, atol=1e-5)


def test_zero_sizes(rng):
    for shape_q, shape_k in [((0, 3, 2, 8), (0, 4, 2, 8)), ((1, 0, 2, 8), (1, 4, 2, 8)), ((1, 3, 2, 8), (1, 0, 2, 8))]:
        q = np.ones(shape_q, np.float32)
        k = np.ones(shape_k, np.float32)
        out, lse = ga.attention(q, k, k)
        assert out.shape == shape_q[:3] + (8,)
        assert lse.shape == (shape_q[0], 2, shape_q[1])
        if shape_k[1] == 0:
            assert np.all(out == 0) and np.all(lse == -np.inf)
        ro, rl = ga.reference_attention(q, k, k)
        assert ro.shape == out.shape and rl.shape == lse.shape


def test_nan_reaches_only_rows_that_see_it(rng):
    q, k, v = naive.random_qkv(rng, 1, 4, 4, 2, 2, 8)
    v = v.copy()
    v[0, 3] = np.nan  # the last key: only the last query row sees it under the causal mask
    out, lse = ga.attention(q, k, v, causal=True)
    assert np.all(np.isfinite(out[0, :3])) and np.all(np.isnan(out[0, 3]))
    ga.assert_attention_close((out, lse), q, k, v, causal=True)


def test_outputs_own_their_memory(rng):
    q, k, v = naive.random_qkv(rng)
    out, lse = ga.attention(q, k, v)
    assert out.flags.owndata or out.base is not None
    out[...] = 0  # writable
    assert out.flags.writeable and lse.flags.writeable
