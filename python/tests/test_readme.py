"""The README's examples: the torch-free ones run as written, the SDPA one with a numpy SDPA."""

import os
import re

import numpy as np
import pytest

import gated_attention as ga

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def blocks():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_has_examples():
    assert len(blocks()) >= 3


@pytest.mark.parametrize("i", range(len(blocks())))
def test_torch_free_blocks_run(i):
    code = blocks()[i]
    if "import torch" in code:
        pytest.skip("needs torch (its flow is tested with numpy below)")
    exec(compile(code, f"README block {i}", "exec"), {})


def numpy_sdpa(q, k, v, is_causal=False):
    """torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True) in float32 numpy:
    [batch, heads, seq, dim], top-left causal mask."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(q.shape[-1]))
    if is_causal:
        lq, lk = q.shape[2], k.shape[2]
        s = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return ((p / p.sum(-1, keepdims=True)) @ v).astype(np.float32)


def test_the_sdpa_flow_with_numpy():
    """The README's first example, SDPA replaced by numpy_sdpa (torch is not a dependency)."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 8, 128, 64), dtype=np.float32)
    k = rng.standard_normal((2, 2, 128, 64), dtype=np.float32)
    v = rng.standard_normal((2, 2, 128, 64), dtype=np.float32)
    out = numpy_sdpa(q, k, v, is_causal=True)
    ga.assert_attention_close(out, q, k, v, causal=True, layout="bhsd")
    bad = out.copy()
    bad[1, 5, 17] = numpy_sdpa(q[1:2, 5:6, 17:18], k[1:2, 1:2, :19], v[1:2, 1:2, :19])[0, 0, 0]
    with pytest.raises(AssertionError) as e:
        ga.assert_attention_close(bad, q, k, v, causal=True, layout="bhsd")
    print(e.value)
    assert "(batch=1, head=5, row=17)" in str(e.value)
    assert "1 of 2048 output rows exceed the error model" in str(e.value)
