"""attention and reference_attention against the test's own float64 numpy attention."""

import numpy as np
import pytest

import gated_attention as ga
import naive

OPTIONS = [
    {},
    {"causal": True},
    {"causal": True, "alignment": "top_left"},
    {"causal": True, "window": 3},
    {"causal": True, "window": 2, "sink_tokens": 2},
    {"window": 3, "right_window": 1},
    {"right_window": 0},
    {"scale": 0.375, "softcap": 1.5},
    {"causal": True, "window": 2**64 - 1},
    {"window": 1, "sink_tokens": 2**64 - 1, "causal": True},
]


def tensor_options(rng, hq, lq, lkv, b, dv):
    return [
        ({"alibi_slopes": rng.uniform(0.1, 1.0, hq).astype(np.float32)}, {}),
        ({"sinks": rng.uniform(-1, 2, hq).astype(np.float32), "causal": True}, {}),
        ({"bias": rng.uniform(-2, 2, (b, hq, lq, lkv)).astype(np.float32)}, {}),
        ({"bias": rng.uniform(-2, 2, (lq, lkv)).astype(np.float32)}, {}),  # broadcast over batch and heads
        ({"gate": rng.uniform(-3, 3, (b, lq, hq, dv)).astype(np.float32)}, {}),
        ({"gate": rng.uniform(-3, 3, (b, lq, hq, 1)).astype(np.float32), "gate_activation": "silu"}, {}),
        ({"gate": rng.uniform(-3, 3, (b, lq, 1, dv)).astype(np.float32), "gate_mode": "additive",
          "gate_activation": "ns_sigmoid"}, {}),
    ]


def naive_kwargs(opts):
    return {k: v for k, v in opts.items() if k not in ("isa", "parallel", "layout", "dtype")}


@pytest.mark.parametrize("opts", OPTIONS)
def test_mask_and_score_options(rng, opts):
    q, k, v = naive.random_qkv(rng)
    want_out, want_lse = naive.attention(q, k, v, **opts)
    ref_out, ref_lse = ga.reference_attention(q, k, v, **opts)
    assert ref_out.dtype == np.float64 and ref_out.shape == want_out.shape
    np.testing.assert_allclose(ref_out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref_lse, want_lse, rtol=1e-12, atol=1e-12)
    out, lse = ga.attention(q, k, v, **opts)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    ga.assert_attention_close((out, lse), q, k, v, **opts)


def test_tensor_options(rng):
    b, lq, lkv, hq, hkv, d = 2, 5, 7, 4, 2, 16
    q, k, v = naive.random_qkv(rng, b, lq, lkv, hq, hkv, d)
    for opts, _ in tensor_options(rng, hq, lq, lkv, b, d):
        want_out, want_lse = naive.attention(q, k, v, **opts)
        ref_out, ref_lse = ga.reference_attention(q, k, v, **opts)
        np.testing.assert_allclose(ref_out, want_out, rtol=1e-12, atol=1e-12, err_msg=str(list(opts)))
        np.testing.assert_allclose(ref_lse, want_lse, rtol=1e-12, atol=1e-12)
        out, lse = ga.attention(q, k, v, **opts)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5, err_msg=str(list(opts)))
        ga.assert_attention_close((out, lse), q, k, v, **opts)


def test_rope_on_queries(rng):
    q, k, v = naive.random_qkv(rng, d=16)
    table = ga.RopeTable(16, 10000.0, 64)
    inv = naive.rope_frequencies(16)
    for positions, pos_array in [
        (3, np.arange(5)[None, :].repeat(2, 0) + 3),
        (np.array([0, 10]), np.arange(5)[None, :] + np.array([[0], [10]])),
        (np.arange(10).reshape(2, 5) * 2, np.arange(10).reshape(2, 5) * 2),
    ]:
        want_out, want_lse = naive.attention(q, k, v, causal=True, rope_q=(inv, pos_array, "neox"))
        ref_out, _ = ga.reference_attention(q, k, v, causal=True, rope=table, rope_positions=positions)
        np.testing.assert_allclose(ref_out, want_out, rtol=1e-6, atol=1e-7)  # the table's f32 cos/sin
        out, lse = ga.attention(q, k, v, causal=True, rope=table, rope_positions=positions)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        ga.assert_attention_close((out, lse), q, k, v, causal=True, rope=table, rope_positions=positions)


def test_gqa_mqa_and_value_dim(rng):
    for hq, hkv, d, dv in [(4, 4, 8, 8), (4, 1, 8, 8), (6, 2, 8, 12), (2, 1, 64, 32)]:
        q, k, v = naive.random_qkv(rng, 1, 4, 9, hq, hkv, d, dv)
        want_out, want_lse = naive.attention(q, k, v, causal=True)
        out, lse = ga.attention(q, k, v, causal=True)
        assert out.shape == (1, 4, hq, dv)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)


def test_isa_and_sequential_agree(rng):
    q, k, v = naive.random_qkv(rng, 1, 33, 40, 4, 2, 32)
    base, _ = ga.attention(q, k, v, causal=True, parallel=False, isa="scalar")
    for isa in ["scalar", "portable"]:
        out, _ = ga.attention(q, k, v, causal=True, isa=isa)
        ga.assert_attention_close(out, q, k, v, causal=True)
    out, _ = ga.attention(q, k, v, causal=True, parallel=True, isa="scalar")
    np.testing.assert_array_equal(out, base)  # bit-identical for every thread count


def test_rows_without_visible_keys(rng):
    q, k, v = naive.random_qkv(rng, 1, 6, 3, 2, 2, 8)
    out, lse = ga.attention(q, k, v, causal=True)  # bottom-right: the first 3 rows see nothing
    assert np.all(out[:, :3] == 0) and np.all(lse[:, :, :3] == -np.inf)
    sinks = np.array([0.5, -1.0], np.float32)
    out, lse = ga.attention(q, k, v, causal=True, sinks=sinks)
    np.testing.assert_array_equal(lse[0, :, 0], sinks)
    ga.assert_attention_close((out, lse), q, k, v, causal=True, sinks=sinks)


def test_threads_release_the_gil(rng):
    """Calls from several Python threads give the single-threaded results."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [naive.random_qkv(np.random.default_rng(s), 1, 16, 64, 4, 2, 32) for s in range(4)]
    serial = [ga.attention(*c, causal=True)[0] for c in cases]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda c: ga.attention(*c, causal=True)[0], cases))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_numpy_integer_options(rng):
    q, k, v = naive.random_qkv(rng)
    table = ga.RopeTable(16, 10000.0, 64)
    a, _ = ga.attention(q, k, v, causal=True, window=np.int64(3), rope=table, rope_positions=np.int32(2))
    b, _ = ga.attention(q, k, v, causal=True, window=3, rope=table, rope_positions=2)
    np.testing.assert_array_equal(a, b)


def test_the_gil_is_released_during_a_call():
    """While one thread computes, another keeps running Python code."""
    import threading
    import time

    rng = np.random.default_rng(5)
    q, k, v = naive.random_qkv(rng, 1, 256, 256, 8, 2, 64)
    done = threading.Event()

    def work():
        ga.reference_attention(q, k, v, causal=True)
        done.set()

    t0 = time.perf_counter()
    ga.reference_attention(q, k, v, causal=True)
    alone = time.perf_counter() - t0
    worker = threading.Thread(target=work)
    worker.start()
    spins = 0
    while not done.is_set():
        spins += 1
    worker.join()
    # A held GIL would stall this loop for the whole call; released, it spins all along.
    assert alone > 0.01
    assert spins > 1000
