"""Int8 K and V: quantize_int8 against a numpy re-derivation of the documented rule, its round
trip, and attention_int8 against reference_attention on the dequantised K and V."""

import ml_dtypes
import numpy as np
import pytest

import gated_attention as ga
import naive


def numpy_quantize(x):
    """The documented rule, per row of the last axis: scale = max|x| / 127 (f32), q = round(x /
    scale) ties to even within +-127; scale 0 and zeros for a row whose scale is 0, scale NaN and
    zeros for a row holding NaN or +-inf."""
    x = np.asarray(x).astype(np.float32)
    amax = np.abs(x).max(axis=-1)
    finite = np.isfinite(x).all(axis=-1)
    with np.errstate(invalid="ignore"):
        scale = np.where(finite, amax / np.float32(127), np.float32(np.nan)).astype(np.float32)
    ok = (finite & (scale != 0))[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.clip(np.rint(x / np.where(ok, scale[..., None], np.float32(1))), -127, 127)
    return np.where(ok, q, 0).astype(np.int8), scale


def special_rows(d):
    """Rows the rule treats apart: zeros, NaN, +-inf, below 127 * 2**-149 (scale 0), subnormal
    scales, exact ties, a largest element that is negative."""
    rows = np.zeros((9, d), np.float32)
    rows[1, 3] = np.nan
    rows[2, 0] = np.inf
    rows[3, -1] = -np.inf
    rows[4, :] = np.float32(2.0**-149) * 60  # max|x| / 127 < 2**-150 rounds to a scale of 0
    rows[5, :] = np.linspace(-1, 1, d, dtype=np.float32) * np.float32(1e-39)  # subnormal scale
    rows[6, :4] = [127.0, 0.5, 1.5, -2.5]  # scale 1: ties to even give 0, 2, -2
    rows[7, :] = np.linspace(-3, 1, d, dtype=np.float32)  # the largest magnitude is negative
    rows[8, :] = np.float32(3.0e38)  # near f32::MAX
    return rows


def random_rows(rng, shape, decades=17):
    """Gaussian rows, each scaled by a factor spread over `decades` decades."""
    x = rng.standard_normal(shape).astype(np.float32)
    e = decades * np.log(10) / 2
    return x * np.exp(rng.uniform(-e, e, shape[:-1] + (1,))).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_quantize_is_the_documented_rule(rng, dtype):
    b, s, h, d = 2, 7, 3, 24
    x = random_rows(rng, (b, s, h, d), decades=17 if dtype != np.float16 else 6)
    x[1, :3] = special_rows(d).reshape(3, 3, d)
    with np.errstate(over="ignore"):
        x = x.astype(dtype)  # float16: the 3e38 row becomes inf, and so NaN
    values, scales = ga.quantize_int8(x)
    want_values, want_scales = numpy_quantize(x)
    assert values.dtype == np.int8 and values.shape == x.shape and values.flags.c_contiguous
    assert scales.dtype == np.float32 and scales.shape == (b, s, h) and scales.flags.c_contiguous
    np.testing.assert_array_equal(scales, want_scales)  # NaN against NaN, bit for bit otherwise
    np.testing.assert_array_equal(values, want_values)
    assert values.min() >= -127


def test_ties_to_even_and_the_special_rows():
    values, scales = ga.quantize_int8(special_rows(8).reshape(1, 9, 1, 8))
    values, scales = values[0, :, 0], scales[0, :, 0]
    assert values[6, :4].tolist() == [127, 0, 2, -2] and scales[6] == 1.0  # not 1, 2, -3 (half away)
    assert np.isnan(scales[1:4]).all() and not values[1:4].any()  # NaN / inf rows: NaN and zeros
    assert scales[0] == 0 and scales[4] == 0 and not values[[0, 4]].any()
    assert 0 < scales[5] < np.finfo(np.float32).tiny and values[5].tolist()[::7] == [-127, 127]
    assert values[7, 0] == -127 and values[7, -1] == 42  # round(127 / 3)
    assert np.isfinite(scales[8]) and (values[8] == 127).all()


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_round_trip_within_half_a_step(rng, layout):
    x = random_rows(rng, (2, 9, 4, 32))
    values, scales = ga.quantize_int8(x, layout=layout)
    back = ga.dequantize_int8(values, scales, layout=layout)
    assert back.dtype == np.float32 and back.shape == x.shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back, scales[..., None] * values.astype(np.float32))
    step = scales.astype(np.float64)[..., None]
    err = np.abs(step * values - x)
    # half a step, plus the f32 rounding of x / scale (a relative 2**-24 of a quotient <= 127.5)
    assert (err <= step * (0.5 + 2.0**-16)).all()
    assert err.max() > 0.4 * step.max()  # the bound is tight: some element is off by almost half a step


def test_bhsd_and_strided_input(rng):
    x = random_rows(rng, (2, 5, 3, 16))
    values, scales = ga.quantize_int8(x)
    t = x.transpose(0, 2, 1, 3)  # a [batch, heads, seq, dim] view, not contiguous
    v2, s2 = ga.quantize_int8(t, layout="bhsd")
    assert v2.shape == t.shape and s2.shape == (2, 3, 5) and v2.flags.c_contiguous
    np.testing.assert_array_equal(v2, values.transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(s2, scales.transpose(0, 2, 1))
    wide = np.zeros((2, 10, 3, 16), np.float32)
    wide[:, ::2] = x  # a strided seq axis
    v3, s3 = ga.quantize_int8(wide[:, ::2])
    np.testing.assert_array_equal(v3, values)
    np.testing.assert_array_equal(s3, scales)
    empty_v, empty_s = ga.quantize_int8(np.zeros((1, 0, 2, 4), np.float32))
    assert empty_v.shape == (1, 0, 2, 4) and empty_s.shape == (1, 0, 2)
    assert ga.dequantize_int8(empty_v, empty_s).shape == (1, 0, 2, 4)


def quantized_kv(rng, b, lkv, hkv, d, layout="bshd"):
    k, v = (rng.standard_normal((b, lkv, hkv, d)).astype(np.float32) for _ in range(2))
    if layout == "bhsd":
        k, v = k.transpose(0, 2, 1, 3).copy(), v.transpose(0, 2, 1, 3).copy()
    kq, ks = ga.quantize_int8(k, layout=layout)
    vq, vs = ga.quantize_int8(v, layout=layout)
    kd, vd = ga.dequantize_int8(kq, ks, layout=layout), ga.dequantize_int8(vq, vs, layout=layout)
    return (kq, ks, vq, vs), (kd, vd)


CASES = {
    "causal_gqa_prefill": dict(b=2, lq=37, lkv=37, hq=8, hkv=2, d=64, opts=dict(causal=True)),
    "decode": dict(b=1, lq=1, lkv=2000, hq=8, hkv=2, d=128, opts=dict(causal=True)),
    "window_sinks": dict(b=1, lq=24, lkv=64, hq=4, hkv=2, d=32, opts=dict(causal=True, window=16, sink_tokens=4)),
    "learned_sinks_softcap": dict(b=1, lq=9, lkv=30, hq=4, hkv=1, d=32,
                                  opts=dict(causal=True, softcap=2.0, sinks=np.float32([0.5, -1.0, 2.0, 0.0]))),
    "bhsd": dict(b=2, lq=17, lkv=40, hq=6, hkv=3, d=48, opts=dict(causal=True, layout="bhsd")),
    "sequential_dv": dict(b=1, lq=5, lkv=12, hq=2, hkv=2, d=16, opts=dict(parallel=False, scale=0.3)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("q_dtype", [np.float32, np.float16])
def test_attention_int8_is_the_reference_on_the_dequantised_kv(rng, name, q_dtype):
    c = CASES[name]
    layout = c["opts"].get("layout", "bshd")
    q = rng.standard_normal((c["b"], c["lq"], c["hq"], c["d"])).astype(q_dtype)
    if layout == "bhsd":
        q = q.transpose(0, 2, 1, 3).copy()
    (kq, ks, vq, vs), (kd, vd) = quantized_kv(rng, c["b"], c["lkv"], c["hkv"], c["d"], layout)
    out, lse = ga.attention_int8(q, kq, ks, vq, vs, **c["opts"])
    assert out.dtype == q.dtype and out.shape == q.shape and lse.dtype == np.float32
    assert lse.shape == (c["b"], c["hq"], c["lq"])
    ga.assert_attention_close((out, lse), q, kd, vd, **c["opts"])
    # The oracle's K and V are the int8 ones: one V scale 1% off is outside the error model.
    row = (0, c["lkv"] - 1, 0) if layout == "bshd" else (0, 0, c["lkv"] - 1)
    vs_bad = vs.copy()
    vs_bad[row] *= 1.01
    bad = ga.attention_int8(q, kq, ks, vq, vs_bad, **c["opts"])
    with pytest.raises(AssertionError, match="exceed the error model"):
        ga.assert_attention_close(bad, q, kd, vd, **c["opts"])


def test_every_tensor_option(rng):
    b, lq, lkv, hq, hkv, d = 2, 5, 7, 4, 2, 16
    q = rng.standard_normal((b, lq, hq, d)).astype(np.float32)
    (kq, ks, vq, vs), (kd, vd) = quantized_kv(rng, b, lkv, hkv, d)
    rope = ga.RopeTable(d, 10000.0, 64)
    options = [
        {"alibi_slopes": rng.uniform(0.1, 1.0, hq).astype(np.float32)},
        {"bias": rng.uniform(-2, 2, (b, hq, lq, lkv)).astype(np.float32)},
        {"gate": rng.uniform(-3, 3, (b, lq, hq, d)).astype(np.float32), "gate_activation": "silu"},
        {"rope": rope, "rope_positions": 2, "causal": True},
        {"causal": True, "alignment": "top_left", "isa": "scalar"},
        {"window": 3, "right_window": 1},
    ]
    for opts in options:
        out, lse = ga.attention_int8(q, kq, ks, vq, vs, **opts)
        ga.assert_attention_close((out, lse), q, kd, vd, **opts)
        # and the option is applied: without it the result differs
        plain = ga.attention_int8(q, kq, ks, vq, vs)[0]
        assert np.abs(out - plain).max() > 1e-3, opts


def test_views_of_a_cache_are_read_in_place(rng):
    """The first n tokens of a preallocated int8 cache: strided values and scales."""
    b, cap, h, d, n = 1, 64, 2, 32, 21
    kq, ks = ga.quantize_int8(rng.standard_normal((b, cap, h, d)).astype(np.float32))
    vq, vs = ga.quantize_int8(rng.standard_normal((b, cap, h, d)).astype(np.float32))
    q = rng.standard_normal((b, 1, 4, d)).astype(np.float32)
    out, lse = ga.attention_int8(q, kq[:, :n], ks[:, :n], vq[:, :n], vs[:, :n])
    want = ga.attention_int8(q, *(np.ascontiguousarray(a[:, :n]) for a in (kq, ks, vq, vs)))
    np.testing.assert_array_equal(out, want[0])
    ga.assert_attention_close((out, lse), q, ga.dequantize_int8(kq, ks)[:, :n], ga.dequantize_int8(vq, vs)[:, :n])
    # bhsd views of a [batch, heads, capacity, dim] cache
    kt, kst = np.ascontiguousarray(kq.transpose(0, 2, 1, 3)), np.ascontiguousarray(ks.transpose(0, 2, 1))
    vt, vst = np.ascontiguousarray(vq.transpose(0, 2, 1, 3)), np.ascontiguousarray(vs.transpose(0, 2, 1))
    qt = q.transpose(0, 2, 1, 3)
    out_t, _ = ga.attention_int8(qt, kt[:, :, :n], kst[:, :, :n], vt[:, :, :n], vst[:, :, :n], layout="bhsd")
    np.testing.assert_array_equal(out_t, out.transpose(0, 2, 1, 3))


def test_a_nan_key_row_reaches_only_the_rows_that_see_it(rng):
    q = rng.standard_normal((1, 6, 2, 16)).astype(np.float32)
    k = rng.standard_normal((1, 6, 2, 16)).astype(np.float32)
    k[0, 3, 1, 5] = np.nan
    kq, ks = ga.quantize_int8(k)
    vq, vs = ga.quantize_int8(rng.standard_normal((1, 6, 2, 16)).astype(np.float32))
    out, lse = ga.attention_int8(q, kq, ks, vq, vs, causal=True)
    nan_rows = np.isnan(out).any(axis=3)[0]  # [q_len, heads]
    assert nan_rows[3:, 1].all() and not nan_rows[:3].any() and not nan_rows[:, 0].any()
    ga.assert_attention_close((out, lse), q, ga.dequantize_int8(kq, ks), ga.dequantize_int8(vq, vs), causal=True)


def test_errors(rng):
    q = rng.standard_normal((1, 4, 4, 16)).astype(np.float32)
    (kq, ks, vq, vs), _ = quantized_kv(rng, 1, 6, 2, 16)
    # element types: TypeError, as everywhere in the package
    with pytest.raises(TypeError, match="k_values: dtype float32 is not int8"):
        ga.attention_int8(q, kq.astype(np.float32), ks, vq, vs)
    with pytest.raises(TypeError, match="v_values: dtype uint8 is not int8"):
        ga.attention_int8(q, kq, ks, vq.view(np.uint8), vs)
    with pytest.raises(TypeError, match="k_scales: dtype float64 is not float32"):
        ga.attention_int8(q, kq, ks.astype(np.float64), vq, vs)
    with pytest.raises(TypeError, match="v_scales: dtype float16"):
        ga.attention_int8(q, kq, ks, vq, vs.astype(np.float16))
    with pytest.raises(TypeError, match="v_scales: dtype >f4"):
        ga.attention_int8(q, kq, ks, vq, vs.astype(">f4"))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        ga.attention_int8(q, kq.tolist(), ks, vq, vs)
    with pytest.raises(TypeError, match="float64"):
        ga.attention_int8(q.astype(np.float64), kq, ks, vq, vs)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ga.attention_int8(q, kq, ks, vq, vs, casual=True)
    # shapes: ValueError
    with pytest.raises(ValueError, match=r"k_scales: expected shape \[1, 6, 2\]"):
        ga.attention_int8(q, kq, ks[:, :5], vq, vs)
    with pytest.raises(ValueError, match=r"v_scales: expected shape"):
        ga.attention_int8(q, kq, ks, vq, vs[..., None])
    with pytest.raises(ValueError, match=r"k_scales: expected shape"):
        ga.attention_int8(q, kq, ks.transpose(0, 2, 1), vq, vs)  # bhsd scales with bshd values
    with pytest.raises(ValueError, match="4-d"):
        ga.attention_int8(q, kq[0], ks[0], vq, vs)
    with pytest.raises(ValueError, match="kv_len"):
        ga.attention_int8(q, kq, ks, vq[:, :5], vs[:, :5])
    with pytest.raises(ValueError, match="head_dim"):
        ga.attention_int8(q, kq[..., :8], ks, vq, vs)
    with pytest.raises(ValueError, match="cannot be grouped"):
        ga.attention_int8(q[:, :, :3], kq, ks, vq, vs)
    with pytest.raises(ValueError, match="contiguous"):
        ga.attention_int8(q, kq[..., ::2], ks, vq[..., ::2], vs)
    with pytest.raises(ValueError, match="layout"):
        ga.attention_int8(q, kq, ks, vq, vs, layout="sbhd")
    # the crate's errors keep their text
    with pytest.raises(ValueError) as e:
        ga.attention_int8(q, kq, ks, vq, vs, window=0)
    assert str(e.value) == "option window: must be >= 1 (it counts the query's own key)"
    with pytest.raises(ValueError, match="alibi"):
        ga.attention_int8(q, kq, ks, vq, vs, alibi_slopes=np.ones(3, np.float32))
    # quantize_int8 and dequantize_int8
    with pytest.raises(TypeError, match="x: dtype float64"):
        ga.quantize_int8(q.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected a 4-d array"):
        ga.quantize_int8(q[0])
    with pytest.raises(ValueError, match="layout"):
        ga.quantize_int8(q, layout="bsdh")
    with pytest.raises(TypeError):
        ga.quantize_int8(q, "bshd")  # layout is keyword-only
    with pytest.raises(TypeError, match="values: dtype int16"):
        ga.dequantize_int8(kq.astype(np.int16), ks)
    with pytest.raises(ValueError, match="scales: expected shape"):
        ga.dequantize_int8(kq, ks[:, :, :1])
    with pytest.raises(ValueError, match="layout"):
        ga.dequantize_int8(kq, ks, layout="x")


def test_q_bits_with_dtype():
    """uint16 bf16 bits for q with dtype='bfloat16', as attention takes them."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 3, 2, 16)).astype(ml_dtypes.bfloat16)
    (kq, ks, vq, vs), (kd, vd) = quantized_kv(rng, 1, 5, 1, 16)
    out_bits, lse = ga.attention_int8(q.view(np.uint16), kq, ks, vq, vs, dtype="bfloat16")
    assert out_bits.dtype == np.uint16
    out, _ = ga.attention_int8(q, kq, ks, vq, vs)
    np.testing.assert_array_equal(out_bits, out.view(np.uint16))
    ga.assert_attention_close(out, q, kd, vd)


def test_naive_numpy_agrees_on_dequantised_kv(rng):
    """The test's own f64 attention (naive.py), independent of the crate, on the dequantised K/V."""
    q = rng.standard_normal((1, 5, 4, 16)).astype(np.float32)
    (kq, ks, vq, vs), (kd, vd) = quantized_kv(rng, 1, 8, 2, 16)
    want_out, want_lse = naive.attention(q, kd, vd, causal=True)
    out, lse = ga.attention_int8(q, kq, ks, vq, vs, causal=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
