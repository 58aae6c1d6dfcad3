"""Agreement with PyTorch's SDPA on the options it has (skipped without torch)."""

import numpy as np
import pytest

import gated_attention as ga
import naive

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_agrees(rng, causal):
    q, k, v = (np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in naive.random_qkv(rng, 2, 6, 6, 4, 4, 16))
    want = F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                          is_causal=causal).numpy()
    # SDPA's is_causal is top-left aligned; equal here as q_len == kv_len
    ga.assert_attention_close(want, q, k, v, causal=causal, layout="bhsd")
    out, _ = ga.attention(q, k, v, causal=causal, layout="bhsd")
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_sdpa_top_left_and_mask(rng):
    q, k, v = (np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in naive.random_qkv(rng, 1, 3, 7, 2, 2, 8))
    tq, tk, tv = (torch.from_numpy(t) for t in (q, k, v))
    want = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).numpy()
    ga.assert_attention_close(want, q, k, v, causal=True, alignment="top_left", layout="bhsd")
    bias = rng.uniform(-1, 1, (3, 7)).astype(np.float32)
    want = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(bias)).numpy()
    ga.assert_attention_close(want, q, k, v, bias=bias, layout="bhsd")


def test_bf16_tensors_as_bit_patterns(rng):
    q, k, v = (torch.from_numpy(np.ascontiguousarray(t.transpose(0, 2, 1, 3))).to(torch.bfloat16)
               for t in naive.random_qkv(rng, 1, 4, 4, 2, 2, 8))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    bits = [t.view(torch.int16).numpy().view(np.uint16) for t in (q, k, v, out)]
    ga.assert_attention_close(bits[3], *bits[:3], causal=True, layout="bhsd", dtype="bfloat16")
