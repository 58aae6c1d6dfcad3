"""Bad input from Python: ValueError (the crate's own text) or TypeError, never a crash."""

import numpy as np
import pytest

import gated_attention as ga
import naive


@pytest.fixture
def qkv(rng):
    return naive.random_qkv(rng)


def test_crate_errors_keep_their_text(qkv):
    q, k, v = qkv
    cases = [
        (dict(window=0), "option window: must be >= 1 (it counts the query's own key)"),
        (dict(causal=True, right_window=2), "option right_window: contradicts causal"),
        (dict(softcap=0.0), "option softcap: must be finite and > 0"),
        (dict(softcap=float("nan")), "option softcap: must be finite and > 0"),
        (dict(scale=float("inf")), "option scale: must be finite"),
        (dict(scale=1e300), "option scale: must be finite"),
    ]
    for kwargs, text in cases:
        for fn in (ga.attention, ga.reference_attention):
            with pytest.raises(ValueError) as e:
                fn(q, k, v, **kwargs)
            assert str(e.value) == text


def test_shapes(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="cannot be grouped"):
        ga.attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="4-d"):
        ga.attention(q[0], k, v)
    with pytest.raises(ValueError):
        ga.attention(q, k, v[:, :6])  # kv_len mismatch
    with pytest.raises(ValueError):
        ga.attention(q[..., :8], k, v)  # head_dim mismatch
    with pytest.raises(ValueError):
        ga.attention(q, k, v, alibi_slopes=np.ones(3, np.float32))
    with pytest.raises(ValueError):
        ga.attention(q, k, v, sinks=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="bias"):
        ga.attention(q, k, v, bias=np.zeros((2, 4, 5, 6), np.float32))
    with pytest.raises(ValueError):
        ga.attention(q, k, v, gate=np.zeros((2, 5, 3, 16), np.float32))
    with pytest.raises(ValueError):
        ga.attention(q, k, v, rope=ga.RopeTable(8, 10000.0, 16))  # head_dim 8 against 16
    with pytest.raises(ValueError):
        ga.attention(q, k, v, rope=ga.RopeTable(16, 10000.0, 4), rope_positions=2)  # beyond the table
    with pytest.raises(ValueError, match="positions"):
        ga.attention(q, k, v, rope=ga.RopeTable(16, 10000.0, 64), rope_positions=np.zeros(3, np.int64))


def test_types(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="float64"):
        ga.attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="int32"):
        ga.attention(q.astype(np.int32), k, v)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        ga.attention(q.tolist(), k, v)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        ga.attention(None, k, v)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ga.attention(q, k, v, casual=True)
    with pytest.raises(TypeError):
        ga.attention(q, k, v, causal=1)
    with pytest.raises(TypeError):
        ga.attention(q, k, v, window="3")
    with pytest.raises(ValueError, match="non-negative"):
        ga.attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="non-negative"):
        ga.attention(q, k, v, window=2**64)
    with pytest.raises(TypeError, match="boolean mask"):
        ga.attention(q, k, v, bias=np.ones((5, 7), bool))
    with pytest.raises(TypeError):
        ga.attention(q, k, v, rope="table")
    with pytest.raises(ValueError):
        ga.attention(q, k, v, layout="bsdh")
    with pytest.raises(ValueError):
        ga.attention(q, k, v, alignment="center")
    with pytest.raises(ValueError):
        ga.attention(q, k, v, isa="avx512")
    with pytest.raises(TypeError, match="contradicts"):
        ga.attention(q, k, v, dtype="bfloat16")
    # mixed storage types are the crate's feature, not an error: the output takes q's type
    out, _ = ga.attention(q, k.astype(np.float16), v)
    assert out.dtype == np.float32
    ga.assert_attention_close(out, q, k.astype(np.float16), v)

def test_layouts_the_crate_cannot_express(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="head dimension must have stride 1"):
        ga.attention(q[..., ::2], k[..., ::2], v[..., ::2])
    with pytest.raises(ValueError, match="non-negative"):
        ga.attention(q[:, ::-1], k, v)
    with pytest.raises(ValueError, match="head dimension must have stride 1"):
        ga.attention(np.asfortranarray(q), k, v)
    # misaligned: float32 elements starting at an odd byte
    raw = np.zeros(q.nbytes + 1, np.uint8)
    mis = np.frombuffer(raw.data, dtype=np.float32, count=q.size, offset=1).reshape(q.shape)
    with pytest.raises(ValueError, match="aligned"):
        ga.attention(mis, k, v)
    with pytest.raises(TypeError, match="byte-swapped"):
        ga.attention(q.astype(q.dtype.newbyteorder(">")), k, v)


def test_nothing_crashes_on_hostile_values(qkv):
    q, k, v = qkv
    for bad in [np.nan, np.inf, -np.inf, 3e38]:
        qb = q.copy()
        qb[0, 0, 0, 0] = bad
        out, lse = ga.attention(qb, k, v, causal=True, softcap=5.0)
        ref, _ = ga.reference_attention(qb, k, v, causal=True, softcap=5.0)
        assert out.shape == ref.shape
    for w in [1, 2**63, 2**64 - 1]:
        ga.attention(q, k, v, window=w, sink_tokens=w)
        ga.attention(q, k, v, right_window=w)
    ga.attention(q, k, v, softcap=1e-45)  # subnormal softcap


def test_hostile_sizes_are_errors_not_aborts():
    with pytest.raises(ValueError):
        ga.KvCache(1, 1, 8, 2**60)  # storage overflows: the crate's error, no allocation
    with pytest.raises(ValueError):
        ga.KvCache(2**40, 2**40, 2**40, 2**40)
    with pytest.raises(ValueError):
        ga.RopeTable(64, 10000.0, 2**62)  # a table the allocator cannot give
    with pytest.raises(ValueError, match="config"):
        ga.GatedAttention.seeded({"hidden_size": 2**40, "num_attention_heads": 1})
    q = np.ones((1, 1, 1, 8), np.float32)
    k = np.broadcast_to(np.ones((1, 1, 1, 8), np.float32), (1, 2**40, 1, 8))  # stride 0, no memory
    out, lse = ga.attention(q, k, k, causal=True, window=4)  # the window shows 4 keys: cheap
    np.testing.assert_allclose(out, 1.0)
