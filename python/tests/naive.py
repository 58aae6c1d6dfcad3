"""A small float64 attention written for the tests, independent of the crate.

Every formula here is the documented semantics (README "Numerics contract",
``AttentionOptions``), written out again in numpy: scores, softcap, ALiBi, bias, the mask as a
predicate, learned sinks, the output gate and RoPE.
"""

from __future__ import annotations

import numpy as np


def visible(i, j, q_len, kv_len, causal=False, alignment="bottom_right", window=None, right_window=None,
            sink_tokens=0):
    pos = i + (kv_len - q_len if alignment == "bottom_right" else 0)
    if causal and j > pos:
        return False
    if right_window is not None and j > pos + right_window:
        return False
    if window is not None and j <= pos - window and j >= sink_tokens:
        return False
    return True


def rope_frequencies(rotary_dim, base=10000.0, linear_factor=1.0):
    i = np.arange(rotary_dim // 2, dtype=np.float64)
    return 1.0 / base ** (2.0 * i / rotary_dim) / linear_factor


def rope_rotate(x, positions, inv_freq, pairing="neox"):
    """x: [batch, seq, heads, dim] float64; positions: [batch, seq] ints."""
    x = np.array(x, dtype=np.float64)
    r = 2 * len(inv_freq)
    theta = positions[:, :, None].astype(np.float64) * inv_freq[None, None, :]  # [b, s, r/2]
    c, s = np.cos(theta)[:, :, None, :], np.sin(theta)[:, :, None, :]
    if pairing == "neox":
        a, b = x[..., : r // 2].copy(), x[..., r // 2 : r].copy()
        x[..., : r // 2] = a * c - b * s
        x[..., r // 2 : r] = b * c + a * s
    else:
        a, b = x[..., 0:r:2].copy(), x[..., 1:r:2].copy()
        x[..., 0:r:2] = a * c - b * s
        x[..., 1:r:2] = b * c + a * s
    return x


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def activate(g, activation):
    if activation == "sigmoid":
        return sigmoid(g)
    if activation == "silu":
        return g * sigmoid(g)
    if activation == "ns_sigmoid":
        return 0.5 + 0.5 * sigmoid(g)
    raise ValueError(activation)


def attention(q, k, v, *, scale=None, causal=False, alignment="bottom_right", window=None, right_window=None,
              sink_tokens=0, softcap=None, alibi_slopes=None, sinks=None, bias=None, gate=None,
              gate_activation="sigmoid", gate_mode="multiplicative", rope_q=None, keep=None):
    """q [b, lq, hq, d], k [b, lkv, hkv, d], v [b, lkv, hkv, dv] (any float dtype, read as float64).

    rope_q: (inv_freq, positions [b, lq], pairing) rotating the queries. keep(b, kvh, i, j): an
    extra visibility predicate (sparse attention's index lists). Returns (out [b, lq, hq, dv],
    lse [b, hq, lq]).
    """
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    b_, lq, hq, d = q.shape
    lkv, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    if rope_q is not None:
        inv, pos, pairing = rope_q
        q = rope_rotate(q, pos, inv, pairing)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    group = hq // hkv
    out = np.zeros((b_, lq, hq, dv))
    lse = np.zeros((b_, hq, lq))
    for b in range(b_):
        for h in range(hq):
            kh = h // group
            for i in range(lq):
                s = scale * (k[b, :, kh] @ q[b, i, h])
                if softcap is not None:
                    s = softcap * np.tanh(s / softcap)
                pos = i + (lkv - lq if alignment == "bottom_right" else 0)
                if alibi_slopes is not None:
                    s = s - alibi_slopes[h] * np.abs(pos - np.arange(lkv))
                if bias is not None:
                    s = s + np.broadcast_to(bias, (b_, hq, lq, lkv))[b, h, i]
                vis = np.array([visible(i, j, lq, lkv, causal, alignment, window, right_window, sink_tokens)
                                and (keep is None or keep(b, kh, i, j)) for j in range(lkv)], dtype=bool)
                s = np.where(vis, s, -np.inf)
                m = s.max(initial=-np.inf)
                if sinks is not None:
                    m = max(m, sinks[h])
                if m == -np.inf:
                    out[b, i, h] = 0.0
                    lse[b, h, i] = -np.inf
                    continue
                p = np.exp(s - m)
                l = p.sum() + (np.exp(sinks[h] - m) if sinks is not None else 0.0)
                o = (p @ v[b, :, kh]) / l
                if gate is not None:
                    g = np.broadcast_to(np.asarray(gate, dtype=np.float64), (b_, lq, hq, dv))[b, i, h]
                    a = activate(g, gate_activation)
                    o = o * a if gate_mode == "multiplicative" else o + a
                out[b, i, h] = o
                lse[b, h, i] = m + np.log(l)
    return out, lse


def random_qkv(rng, b=2, lq=5, lkv=7, hq=4, hkv=2, d=16, dv=None, dtype=np.float32):
    dv = d if dv is None else dv
    q = rng.uniform(-1, 1, (b, lq, hq, d)).astype(dtype)
    k = rng.uniform(-1, 1, (b, lkv, hkv, d)).astype(dtype)
    v = rng.uniform(-1, 1, (b, lkv, hkv, dv)).astype(dtype)
    return q, k, v
