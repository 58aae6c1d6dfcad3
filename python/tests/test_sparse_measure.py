"""Sparse indexers, top-k, sparse attention and the measurements against numpy."""

import numpy as np
import pytest

import gated_attention as ga
import naive


def indexer_inputs(rng, b=2, lq=6, lkv=6, hi=3, di=8):
    q = rng.uniform(-1, 1, (b, lq, hi, di)).astype(np.float32)
    k = rng.uniform(-1, 1, (b, lkv, 1, di)).astype(np.float32)
    w = rng.uniform(-1, 1, (b, lq, 1, hi)).astype(np.float32)
    return q, k, w


def numpy_scores(q, k, w, kind="lightning", bias=None, causal=False):
    q, k, w = (t.astype(np.float64) for t in (q, k, w))
    hi, di = q.shape[2], q.shape[3]
    x = np.einsum("bthd,bsd->btsh", q, k[:, :, 0])
    if kind == "lightning":
        x = x / np.sqrt(di * hi)
        s = np.einsum("btsh,bth->bts", np.maximum(x, 0), w[:, :, 0])
    else:
        x = x / np.sqrt(di)
        s = np.einsum("btsh,bth->bts", naive.sigmoid(x + bias), naive.sigmoid(w[:, :, 0]))
    if causal:
        lq, lk = q.shape[1], k.shape[1]
        vis = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
        s = np.where(vis[None], s, -np.inf)
    return s


@pytest.mark.parametrize("kind", ["lightning", "gated"])
def test_indexer_scores(rng, kind):
    q, k, w = indexer_inputs(rng)
    bias = rng.uniform(-1, 1, 3).astype(np.float32) if kind == "gated" else None
    want = numpy_scores(q, k, w, kind, bias, causal=True)
    ref = ga.reference_indexer_scores(q, k, w, kind=kind, bias=bias, causal=True)
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-12)
    got = ga.indexer_scores(q, k, w, kind=kind, bias=bias, causal=True)
    assert got.dtype == np.float32 and got.shape == (2, 6, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_top_k_and_sparse_attention(rng):
    q_i, k_i, w = indexer_inputs(rng, 1, 8, 8)
    top = ga.top_k_indices(q_i, k_i, w, 3, causal=True)
    assert top.dtype == np.int32 and top.shape == (1, 8, 3)
    scores = numpy_scores(q_i, k_i, w, causal=True)
    for t in range(8):
        visible = min(3, t + 1)
        want = np.argsort(-scores[0, t, : t + 1], kind="stable")[:visible]
        np.testing.assert_array_equal(top[0, t, :visible], want)
        assert np.all(top[0, t, visible:] == ga.PAD)
    q, k, v = naive.random_qkv(rng, 1, 8, 8, 4, 2, 16)
    listed = lambda b, kvh, i, j: j in top[b, i]  # noqa: E731
    want, want_lse = naive.attention(q, k, v, causal=True, keep=listed)
    ref, ref_lse = ga.reference_sparse_attention(q, k, v, top, causal=True)
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-12)
    out, lse = ga.sparse_attention(q, k, v, top, causal=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sparse indices"):
        ga.sparse_attention(q, k, v, np.full((1, 8, 2), 9, np.int32))
    with pytest.raises(TypeError, match="int32"):
        ga.sparse_attention(q, k, v, top.astype(np.int64))


def test_adaptive_top_k(rng):
    q, k, w = indexer_inputs(rng, 1, 16, 16)
    bias = np.zeros(3, np.float32)
    idx, counts = ga.adaptive_top_k_indices(q, k, w, k_base=4, k_min=2, k_max=6, bias=bias, causal=True)
    assert idx.shape == (1, 16, 6) and counts.shape == (1, 16)
    for t in range(16):
        n = counts[0, t]
        assert 1 <= n <= 6 and n <= t + 1
        assert np.all(idx[0, t, :n] >= 0) and np.all(idx[0, t, n:] == ga.PAD)
    with pytest.raises(ValueError, match="adaptive top-k"):
        ga.adaptive_top_k_indices(q, k, w, k_min=8, k_max=4, bias=bias)


def test_first_token_share_and_gate_statistics(rng):
    q, k, v = naive.random_qkv(rng, 2, 6, 6, 4, 2, 16)
    out, lse = ga.attention(q, k, v, causal=True)
    p = ga.first_token_probabilities(q, k, lse, causal=True)
    # numpy: the softmax weight on key 0
    group = 2
    kk = np.repeat(k.astype(np.float64), group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q.astype(np.float64), kk) / 4.0
    vis = np.arange(6)[None, :] <= np.arange(6)[:, None]
    s = np.where(vis, s, -np.inf)
    want = np.exp(s[..., 0] - np.log(np.exp(s).sum(-1)))
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    share = ga.sink_share_per_head(p, exclude_first_queries=1)
    np.testing.assert_allclose(share, p[:, :, 1:].mean(axis=(0, 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="exclude_first_queries"):
        ga.sink_share_per_head(p, exclude_first_queries=6)
    g = naive.sigmoid(rng.normal(size=1000))
    st = ga.gate_statistics(g)
    assert st["count"] == 1000
    assert st["mean"] == pytest.approx(g.mean()) and st["std"] == pytest.approx(g.std(), rel=1e-2)
    assert st["min"] == g.min() and st["max"] == g.max()
    assert st["fraction_below_0_5"] == pytest.approx((g < 0.5).mean())
    assert st["fraction_below_0_1"] == pytest.approx((g < 0.1).mean())


def test_per_kv_head_lists(rng):
    q, k, v = naive.random_qkv(rng, 1, 4, 6, 4, 2, 8)
    idx = np.full((1, 4, 2, 3), ga.PAD, np.int32)
    for i in range(4):
        idx[0, i, 0, : 1 + (i > 0)] = [0, i][: 1 + (i > 0)]  # KV head 0: key 0 and the diagonal
        idx[0, i, 1, : min(3, i + 1)] = np.arange(min(3, i + 1))[::-1]
    listed = lambda b, kvh, i, j: j in idx[b, i, kvh]  # noqa: E731
    want, want_lse = naive.attention(q, k, v, keep=listed)
    ref, _ = ga.reference_sparse_attention(q, k, v, idx)
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-12)
    out, lse = ga.sparse_attention(q, k, v, idx)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="listed twice"):
        ga.sparse_attention(q, k, v, np.zeros((1, 4, 2, 2), np.int32))
