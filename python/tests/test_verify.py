"""assert_attention_close: passes correct kernels, names the worst rows of wrong ones."""

import numpy as np
import pytest

import gated_attention as ga
import naive


def numpy_kernel(q, k, v, causal=False):
    """A float32 numpy attention: a 'kernel under test' computed without the crate."""
    q, k, v = (t.astype(np.float32) for t in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) / np.float32(np.sqrt(q.shape[-1]))
    if causal:
        lq, lk = q.shape[1], k.shape[1]
        i, j = np.arange(lq)[:, None] + (lk - lq), np.arange(lk)[None, :]
        s = np.where(j <= i, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    out = np.einsum("bhij,bjhd->bihd", p / l, v)
    return out.astype(np.float32), (m + np.log(l))[..., 0].astype(np.float32)


def test_a_correct_float32_kernel_passes(rng):
    q, k, v = naive.random_qkv(rng, 2, 16, 16, 4, 2, 32)
    out, lse = numpy_kernel(q, k, v, causal=True)
    ga.assert_attention_close((out, lse), q, k, v, causal=True)
    ga.assert_attention_close(out.astype(np.float16), q, k, v, causal=True)  # judged as f16 output


def test_a_planted_bug_is_caught_with_its_rows(rng):
    q, k, v = naive.random_qkv(rng, 2, 16, 16, 4, 2, 32)
    # the bug: the causal mask off by one (each row also sees the next key)
    qb = q.copy()
    s_out, _ = numpy_kernel(q, k, v, causal=False)
    out, _ = numpy_kernel(q, k, v, causal=True)
    out[1, 5, 3] = s_out[1, 5, 3]  # one row computed without the mask
    with pytest.raises(AssertionError) as e:
        ga.assert_attention_close(out, qb, k, v, causal=True)
    msg = str(e.value)
    assert "1 of 128 output rows exceed the error model" in msg
    assert "(batch=1, head=3, row=5)" in msg and "bound" in msg


def test_worst_rows_come_first_and_are_limited(rng):
    q, k, v = naive.random_qkv(rng, 1, 8, 8, 2, 2, 16)
    out, _ = ga.attention(q, k, v)
    out = out.copy()
    out[0, 1, 0, 2] += 1e-3
    out[0, 6, 1, 0] += 1e-1
    out[0, 7, 1, 0] += 1e-2
    with pytest.raises(AssertionError) as e:
        ga.assert_attention_close(out, q, k, v, max_rows=2)
    lines = str(e.value).splitlines()
    assert "3 of 16 output rows" in lines[1]
    assert "(batch=0, head=1, row=6)" in lines[2] and "(batch=0, head=1, row=7)" in lines[3]
    assert len(lines) == 4


def test_lse_is_checked(rng):
    q, k, v = naive.random_qkv(rng)
    out, lse = ga.attention(q, k, v)
    lse = lse.copy()
    lse[1, 2, 3] += 1e-3
    with pytest.raises(AssertionError, match=r"lse \(batch=1, head=2, row=3\)"):
        ga.assert_attention_close((out, lse), q, k, v)


def test_nan_where_the_oracle_is_finite_fails(rng):
    q, k, v = naive.random_qkv(rng)
    out, _ = ga.attention(q, k, v)
    out[0, 0, 0, 0] = np.nan
    with pytest.raises(AssertionError, match=r"\(batch=0, head=0, row=0\)"):
        ga.assert_attention_close(out, q, k, v)


def test_bounds_follow_the_storage_type(rng):
    q, k, v = naive.random_qkv(rng)
    _, _, b32, bl = ga.attention_bounds(q, k, v, out_dtype="float32")
    _, _, b16, _ = ga.attention_bounds(q, k, v, out_dtype="float16")
    _, _, bbf, _ = ga.attention_bounds(q, k, v, out_dtype="bfloat16")
    assert np.all(b32 < b16) and np.all(b16 < bbf)
    assert np.all(b32 <= 2e-5 + 2e-5 * 1.0)  # capped by the crate's fixed table
    # an f16 rounding of a correct result passes the f16 bound but not the f32 one
    out, _ = ga.attention(q, k, v)
    ga.assert_attention_close(out.astype(np.float16), q, k, v)
    with pytest.raises(AssertionError):
        ga.assert_attention_close(out.astype(np.float16).astype(np.float32), q, k, v)


def test_shape_mismatch_is_an_assertion(rng):
    q, k, v = naive.random_qkv(rng)
    out, _ = ga.attention(q, k, v)
    with pytest.raises(AssertionError, match="shape"):
        ga.assert_attention_close(out[:, :3], q, k, v)
    with pytest.raises(TypeError):
        ga.assert_attention_close(out.astype(np.int32), q, k, v)


def test_bhsd_layout(rng):
    q, k, v = (np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in naive.random_qkv(rng))
    out, lse = ga.attention(q, k, v, causal=True, layout="bhsd")
    ga.assert_attention_close((out, lse), q, k, v, causal=True, layout="bhsd")
    out[1, 3, 2, 0] += 1e-2
    with pytest.raises(AssertionError, match=r"\(batch=1, head=3, row=2\)"):
        ga.assert_attention_close(out, q, k, v, causal=True, layout="bhsd")
