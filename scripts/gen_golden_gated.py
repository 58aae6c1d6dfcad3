#!/usr/bin/env python3
"""Golden vectors for gated attention (GATING.md §2 Qiu et al., §3 Qwen3-Next, §4 torch-gated-attention, §9 RoPE).

Run by hand (not in CI):

    python3 -m venv .venv-golden && .venv-golden/bin/pip install torch==2.15.0 transformers==5.24.0 safetensors numpy
    .venv-golden/bin/python scripts/gen_golden_gated.py

Writes, under tests/golden/:

* qwen3_next_attention.safetensors   -- transformers' own Qwen3NextAttention (eager, fp32), driven with a real
                                        DynamicCache for the decode steps;
* qiu_headwise_g{1,2,4}.safetensors,
  qiu_elementwise_g{1,2,4}.safetensors -- the official Qiu et al. Qwen3Attention forward (qiuzh20/gated_attention
                                        modeling_qwen3.py, eager path), rebuilt here from transformers' Qwen3 pieces;
* torch_gated_attention.safetensors  -- the navjak/torch-gated-attention GatedAttention forward, rebuilt here.

Every file holds the weights under their Hugging Face names (no module prefix), the block input `x` [1, L, hidden],
`positions` [1, L] (int64), `out_full` (one-shot causal forward of all L tokens), `out_prefill` (the first Lp tokens in
one call), `out_decode` (the remaining tokens one at a time through a KV cache; equals out_full[:, Lp:]) and
`gate_logits` (raw gate logits before the sigmoid). All float tensors are float32. Metadata: torch / transformers
versions, `pinned`, `config` (JSON of the exact config fields used), `source`, `layout` (JSON: tensor -> description),
`L`, `Lp`, `seed`. The script asserts its own consistency (prefill/decode vs full, explicit column-index gate layouts,
an independent re-implementation of GATING.md §3 against transformers' Qwen3NextAttention) before writing.
"""
import json
import os

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3NextConfig
from transformers.cache_utils import DynamicCache
from transformers.models.qwen3 import modeling_qwen3 as qwen3
from transformers.models.qwen3_next import modeling_qwen3_next as qwen3_next

PINNED = {"torch": "2.15.0", "transformers": "5.24.0"}
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden")
L, LP = 12, 8
HIDDEN, HEADS, HEAD_DIM, THETA, EPS = 64, 4, 16, 10000.0, 1e-6
ATOL = 1e-5


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "pinned": json.dumps(PINNED)}


def causal_mask(q_len, k_len):
    """Additive float mask [1, 1, q_len, k_len], bottom-right aligned: query i (absolute k_len-q_len+i) sees j <= that."""
    past = k_len - q_len
    i = torch.arange(q_len)[:, None]
    j = torch.arange(k_len)[None, :]
    return torch.zeros(q_len, k_len).masked_fill(j > past + i, float("-inf"))[None, None]


def check(name, got, want, atol=ATOL):
    err = (got - want).abs().max().item()
    assert torch.allclose(got, want, atol=atol, rtol=0), f"{name}: max abs err {err:.3e} > {atol}"
    print(f"  ok {name}: max abs err {err:.2e}")


def common_tensors(x, out_full, out_prefill, out_decode, gate_logits):
    return {"x": x, "positions": torch.arange(L, dtype=torch.int64)[None], "out_full": out_full,
            "out_prefill": out_prefill, "out_decode": out_decode, "gate_logits": gate_logits}


COMMON_LAYOUT = {
    "x": f"[1, L={L}, hidden] attention block input (after the decoder's input layernorm), randn",
    "positions": f"[1, L] int64 = arange(L); RoPE positions of x",
    "out_full": "[1, L, hidden] one-shot causal forward of all L tokens",
    "out_prefill": f"[1, Lp={LP}, hidden] forward of x[:, :Lp] in one call (causal), which also fills the KV cache",
    "out_decode": f"[1, L-Lp={L - LP}, hidden] x[:, Lp:] fed one token per call through the KV cache (post-RoPE k, v); "
                  "equals out_full[:, Lp:]",
}


def save(name, tensors, meta):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        want = torch.int64 if k == "positions" else torch.float32
        assert v.dtype == want, (k, v.dtype)
    path = os.path.join(OUT, name)
    save_file(tensors, path, metadata={k: str(v) for k, v in meta.items()})
    print(f"  wrote {name} ({os.path.getsize(path)} bytes)")


def randomize_linears(module, names, std=0.1):
    with torch.no_grad():
        for n in names:
            lin = getattr(module, n)
            lin.weight.normal_(0.0, std)
            if lin.bias is not None:
                lin.bias.normal_(0.0, std)


def linear_weights(module, names):
    out = {}
    for n in names:
        lin = getattr(module, n)
        out[f"{n}.weight"] = lin.weight
        if lin.bias is not None:
            out[f"{n}.bias"] = lin.bias
    return out


# --------------------------------------------------------------------------------------------------------------------
# 1. Qwen3-Next: transformers' real Qwen3NextAttention
# --------------------------------------------------------------------------------------------------------------------

def qwen3_next_reference(attn, x, cos, sin, mask):
    """GATING.md §3 written out independently (per-head [q_h | gate_h], (1 + w) fp32 RMSNorm, partial NeoX RoPE)."""
    b, l, _ = x.shape
    h, hkv, d = HEADS, 2, HEAD_DIM
    qp = x @ attn.q_proj.weight.T  # [b, l, 2*h*d]
    cols = torch.arange(h * 2 * d).view(h, 2, d)  # q[h, d] = col(h*2D + d), gate[h, d] = col(h*2D + D + d)
    q, gate = qp[..., cols[:, 0]], qp[..., cols[:, 1]]  # [b, l, h, d]

    def norm(t, w):
        t32 = t.float()
        return ((t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + EPS)) * (1.0 + w.float())).to(t.dtype)

    q = norm(q, attn.q_norm.weight).transpose(1, 2)
    k = norm((x @ attn.k_proj.weight.T).view(b, l, hkv, d), attn.k_norm.weight).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(b, l, hkv, d).transpose(1, 2)
    r = cos.shape[-1]
    c, s = cos[:, None], sin[:, None]

    def rope(t):
        tr, tp = t[..., :r], t[..., r:]
        rot = torch.cat((-tr[..., r // 2:], tr[..., : r // 2]), dim=-1)
        return torch.cat((tr * c + rot * s, tp), dim=-1)

    q, k = rope(q), rope(k)
    k = k.repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    p = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5 + mask, dim=-1)
    o = (p @ v).transpose(1, 2)  # [b, l, h, d]
    o = (o * torch.sigmoid(gate)).reshape(b, l, h * d)
    return o @ attn.o_proj.weight.T, gate


def qwen3_next_case():
    print("qwen3_next_attention")
    torch.manual_seed(1001)
    cfg_fields = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": 2, "head_dim": HEAD_DIM,
                  "rms_norm_eps": EPS, "rope_theta": THETA, "partial_rotary_factor": 0.25, "attention_bias": False}
    config = Qwen3NextConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HEAD_DIM,
                             rms_norm_eps=EPS, attention_bias=False, partial_rotary_factor=0.25,
                             rope_parameters={"rope_type": "default", "rope_theta": THETA},
                             num_hidden_layers=4, attn_implementation="eager")
    layer_idx = 3
    assert config.layer_types[layer_idx] == "full_attention", config.layer_types
    assert config.rope_parameters.get("partial_rotary_factor") == 0.25, config.rope_parameters
    attn = qwen3_next.Qwen3NextAttention(config, layer_idx).eval().float()
    rotary = qwen3_next.Qwen3NextRotaryEmbedding(config)
    assert rotary.inv_freq.numel() == 2, rotary.inv_freq  # rotary_dim = int(16 * 0.25) = 4
    randomize_linears(attn, ["q_proj", "k_proj", "v_proj", "o_proj"])
    with torch.no_grad():
        attn.q_norm.weight.copy_(0.1 * torch.randn(HEAD_DIM))
        attn.k_norm.weight.copy_(0.1 * torch.randn(HEAD_DIM))
    x = torch.randn(1, L, HIDDEN)
    pos = torch.arange(L)[None]

    def run(xs, p, cache):
        cos, sin = rotary(xs, p)
        out, _ = attn(xs, (cos, sin), causal_mask(xs.shape[1], p[0, -1].item() + 1), cache=cache)
        return out

    with torch.no_grad():
        out_full = run(x, pos, None)
        cache = DynamicCache(config=config)
        out_prefill = run(x[:, :LP], pos[:, :LP], cache)
        steps = []
        for t in range(LP, L):
            steps.append(run(x[:, t:t + 1], pos[:, t:t + 1], cache))
            assert cache.get_seq_length(layer_idx) == t + 1, cache.get_seq_length(layer_idx)
        out_decode = torch.cat(steps, dim=1)
        # gate logits: second half of each per-query-head 2D chunk of q_proj
        qp = attn.q_proj(x).view(1, L, HEADS, 2 * HEAD_DIM)
        gate_logits = qp[..., HEAD_DIM:]
        cos, sin = rotary(x, pos)
        ref_out, ref_gate = qwen3_next_reference(attn, x, cos, sin, causal_mask(L, L))
    check("prefill vs full[:Lp]", out_prefill, out_full[:, :LP])
    check("decode vs full[Lp:]", out_decode, out_full[:, LP:])
    check("GATING.md §3 re-implementation vs Qwen3NextAttention", ref_out, out_full)
    check("gate_logits vs §3 column formula", ref_gate, gate_logits, atol=0)

    tensors = {**linear_weights(attn, ["q_proj", "k_proj", "v_proj", "o_proj"]),
               "q_norm.weight": attn.q_norm.weight, "k_norm.weight": attn.k_norm.weight,
               **common_tensors(x, out_full, out_prefill, out_decode, gate_logits)}
    layout = {"q_proj.weight": f"[H*D*2={HEADS * HEAD_DIM * 2}, hidden] output column h*2D + d is q[h, d], "
                               "h*2D + D + d is gate[h, d] (per query head [q_h | gate_h])",
              "k_proj.weight": "[Hkv*D, hidden]", "v_proj.weight": "[Hkv*D, hidden]", "o_proj.weight": "[hidden, H*D]",
              "q_norm.weight": "[D] Qwen3NextRMSNorm: y = (x32 * rsqrt(mean(x32^2) + eps) * (1 + w)).to(dtype)",
              "k_norm.weight": "[D] same form as q_norm",
              **COMMON_LAYOUT,
              "gate_logits": "[1, L, H, D] raw gate logits (before sigmoid) = q_proj(x).view(1, L, H, 2D)[..., D:]"}
    meta = {**versions(), "config": json.dumps(cfg_fields), "L": L, "Lp": LP, "seed": 1001,
            "layer_idx": layer_idx, "attn_implementation": "eager", "rotary_dim": 4,
            "source": "transformers.models.qwen3_next.modeling_qwen3_next.Qwen3NextAttention (eager) + "
                      "Qwen3NextRotaryEmbedding; decode via transformers.cache_utils.DynamicCache",
            "layout": json.dumps(layout)}
    save("qwen3_next_attention.safetensors", tensors, meta)


# --------------------------------------------------------------------------------------------------------------------
# 2. Qiu et al. official Qwen3Attention with the output gate (GATING.md §2.1-2.2)
# --------------------------------------------------------------------------------------------------------------------

class QiuAttention(torch.nn.Module):
    """qiuzh20/gated_attention modeling_qwen3.py Qwen3Attention (eager), minus dropout and sliding window."""

    def __init__(self, hidden, heads, kv_heads, head_dim, qkv_bias, headwise, elementwise, use_qk_norm, eps):
        super().__init__()
        assert not (headwise and elementwise)
        self.h, self.hkv, self.d = heads, kv_heads, head_dim
        self.g = heads // kv_heads
        self.headwise, self.elementwise, self.use_qk_norm = headwise, elementwise, use_qk_norm
        q_out = heads * head_dim + heads if headwise else heads * head_dim * 2 if elementwise else heads * head_dim
        self.q_proj = torch.nn.Linear(hidden, q_out, bias=qkv_bias)
        self.k_proj = torch.nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = torch.nn.Linear(hidden, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = torch.nn.Linear(heads * head_dim, hidden, bias=qkv_bias)  # qkv_bias also drives o_proj
        if use_qk_norm:
            self.q_norm = qwen3.Qwen3RMSNorm(head_dim, eps=eps)
            self.k_norm = qwen3.Qwen3RMSNorm(head_dim, eps=eps)

    def split(self, hidden_states):
        b, l, _ = hidden_states.shape
        q = self.q_proj(hidden_states)
        gate = None
        if self.headwise:
            q = q.view(b, l, self.hkv, -1)  # grouped by KV head
            q, gate = torch.split(q, [self.d * self.g, self.g], dim=-1)
            gate = gate.reshape(b, l, -1, 1)
            q = q.reshape(b, l, -1, self.d).transpose(1, 2)
        elif self.elementwise:
            q = q.view(b, l, self.hkv, -1)
            q, gate = torch.split(q, [self.d * self.g, self.d * self.g], dim=-1)
            gate = gate.reshape(b, l, -1, self.d)
            q = q.reshape(b, l, -1, self.d).transpose(1, 2)
        else:
            q = q.view(b, l, -1, self.d).transpose(1, 2)
        return q, gate

    def forward(self, hidden_states, position_embeddings, attention_mask, past_kv=None):
        b, l, _ = hidden_states.shape
        q, gate = self.split(hidden_states)
        k = self.k_proj(hidden_states).view(b, l, -1, self.d).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, l, -1, self.d).transpose(1, 2)
        if self.use_qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        cos, sin = position_embeddings
        q, k = qwen3.apply_rotary_pos_emb(q, k, cos, sin)
        if past_kv is not None:  # own cache: concatenation of post-RoPE keys / values
            if past_kv:
                k = torch.cat([past_kv[0], k], dim=2)
                v = torch.cat([past_kv[1], v], dim=2)
            past_kv[:] = [k, v]
        k = qwen3.repeat_kv(k, self.g)
        v = qwen3.repeat_kv(v, self.g)
        w = torch.matmul(q, k.transpose(2, 3)) / (self.d ** 0.5)
        if attention_mask is not None:
            w = w + attention_mask[:, :, :, : k.shape[-2]]
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(w, v).transpose(1, 2).contiguous()  # [b, l, h, d]
        if gate is not None:
            o = o * torch.sigmoid(gate)
        return self.o_proj(o.reshape(b, l, -1))


def qiu_case(kind, g):
    name = f"qiu_{kind}_g{g}"
    print(name)
    seed = 2000 + 10 * g + (1 if kind == "elementwise" else 0)
    torch.manual_seed(seed)
    hkv = HEADS // g
    qkv_bias = g == 2
    headwise, elementwise = kind == "headwise", kind == "elementwise"
    cfg_fields = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": hkv,
                  "head_dim": HEAD_DIM, "rms_norm_eps": EPS, "rope_theta": THETA, "partial_rotary_factor": 1.0,
                  "qkv_bias": qkv_bias, "headwise_attn_output_gate": headwise,
                  "elementwise_attn_output_gate": elementwise, "use_qk_norm": True}
    rope_cfg = Qwen3Config(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=hkv, head_dim=HEAD_DIM,
                           rms_norm_eps=EPS, rope_parameters={"rope_type": "default", "rope_theta": THETA})
    rotary = qwen3.Qwen3RotaryEmbedding(rope_cfg)
    assert rotary.inv_freq.numel() == HEAD_DIM // 2
    attn = QiuAttention(HIDDEN, HEADS, hkv, HEAD_DIM, qkv_bias, headwise, elementwise, True, EPS).eval()
    randomize_linears(attn, ["q_proj", "k_proj", "v_proj", "o_proj"])
    with torch.no_grad():
        attn.q_norm.weight.copy_(1.0 + 0.1 * torch.randn(HEAD_DIM))
        attn.k_norm.weight.copy_(1.0 + 0.1 * torch.randn(HEAD_DIM))
    x = torch.randn(1, L, HIDDEN)
    pos = torch.arange(L)[None]

    def run(xs, p, cache):
        pe = rotary(xs, p)
        return attn(xs, pe, causal_mask(xs.shape[1], p[0, -1].item() + 1), cache)

    with torch.no_grad():
        out_full = run(x, pos, None)
        cache = []
        out_prefill = run(x[:, :LP], pos[:, :LP], cache)
        steps = []
        for t in range(LP, L):
            steps.append(run(x[:, t:t + 1], pos[:, t:t + 1], cache))
            assert cache[0].shape == (1, hkv, t + 1, HEAD_DIM), cache[0].shape
        out_decode = torch.cat(steps, dim=1)
        q, gate_logits = attn.split(x)
        # GATING.md §2.1 explicit column indices, head h = grp*G + r
        qp = attn.q_proj(x)[0]
        gd = 1 if headwise else HEAD_DIM
        chunk = g * HEAD_DIM + g * gd
        for h in range(HEADS):
            grp, r = divmod(h, g)
            qcols = [grp * chunk + r * HEAD_DIM + d for d in range(HEAD_DIM)]
            gcols = [grp * chunk + g * HEAD_DIM + r * gd + d for d in range(gd)]
            assert torch.equal(q[0, h], qp[:, qcols]), (name, h)
            assert torch.equal(gate_logits[0, :, h], qp[:, gcols]), (name, h)
        print("  ok q / gate column indices match GATING.md §2.1")
        if elementwise:  # the Qwen3-Next per-head [q_h | gate_h] reading agrees only for G == 1 (§2.1)
            per_head = qp.view(L, HEADS, 2 * HEAD_DIM)[..., HEAD_DIM:]
            assert torch.equal(per_head, gate_logits[0]) == (g == 1), name
        sg = torch.sigmoid(gate_logits)
        print(f"  gate sigmoid mean {sg.mean():.3f} min {sg.min():.3f} max {sg.max():.3f}")
    check("prefill vs full[:Lp]", out_prefill, out_full[:, :LP])
    check("decode vs full[Lp:]", out_decode, out_full[:, LP:])

    tensors = {**linear_weights(attn, ["q_proj", "k_proj", "v_proj", "o_proj"]),
               "q_norm.weight": attn.q_norm.weight, "k_norm.weight": attn.k_norm.weight,
               **common_tensors(x, out_full, out_prefill, out_decode, gate_logits)}
    gsz = "G" if headwise else "G*D"
    q_out = HEADS * HEAD_DIM + HEADS if headwise else 2 * HEADS * HEAD_DIM
    layout = {"q_proj.weight": f"[{q_out}, hidden] grouped by KV head: chunk g (size G*D + {gsz}) = "
                               f"[q of heads g*G..g*G+G-1 (G*D) | gate of those heads ({gsz})]; "
                               f"q[h,d] = col(g*chunk + r*D + d), gate[h,{'0' if headwise else 'd'}] = "
                               f"col(g*chunk + G*D + r{'' if headwise else '*D + d'}) with h = g*G + r",
              "k_proj.weight": "[Hkv*D, hidden]", "v_proj.weight": "[Hkv*D, hidden]", "o_proj.weight": "[hidden, H*D]",
              "q_norm.weight": "[D] Qwen3RMSNorm: y = w * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype)",
              "k_norm.weight": "[D] same form as q_norm",
              **COMMON_LAYOUT,
              "gate_logits": f"[1, L, H, {'1' if headwise else 'D'}] raw gate logits (before sigmoid) split out of "
                             "q_proj(x) as above; o[b,l,h,:] *= sigmoid(gate_logits[b,l,h,:])"}
    if qkv_bias:
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            layout[f"{n}.bias"] = f"[out_features of {n}] (qkv_bias=True drives all four projections)"
    meta = {**versions(), "config": json.dumps(cfg_fields), "L": L, "Lp": LP, "seed": seed, "G": g,
            "source": "Qiu et al. qiuzh20/gated_attention modeling_qwen3.Qwen3Attention (eager) re-implemented in "
                      "scripts/gen_golden_gated.py with transformers.models.qwen3.modeling_qwen3.{Qwen3RMSNorm, "
                      "Qwen3RotaryEmbedding, apply_rotary_pos_emb, repeat_kv}; decode via own post-RoPE KV concat",
            "layout": json.dumps(layout)}
    save(f"{name}.safetensors", tensors, meta)


# --------------------------------------------------------------------------------------------------------------------
# 3. navjak/torch-gated-attention GatedAttention (GATING.md §4)
# --------------------------------------------------------------------------------------------------------------------

class NavjakGatedAttention(torch.nn.Module):
    """gated_attention.layers.GatedAttention + core.gated_sdpa (navjak/torch-gated-attention), bias=False."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h, self.hd = num_heads, d_model // num_heads
        self.q_proj = torch.nn.Linear(d_model, d_model, bias=False)
        self.k_proj = torch.nn.Linear(d_model, d_model, bias=False)
        self.v_proj = torch.nn.Linear(d_model, d_model, bias=False)
        self.o_proj = torch.nn.Linear(d_model, d_model, bias=False)
        self.gate_proj = torch.nn.Linear(self.hd, self.hd, bias=True)  # gatedSDPA.gate_proj, shared by all heads

    def forward(self, x, rotary_callback, past_kv=None, attn_mask=None):
        b, l, dm = x.shape
        q = self.q_proj(x).view(b, l, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, l, self.h, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.h, self.hd).transpose(1, 2)
        q, k = rotary_callback(q, k)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
        gate_logits = F.linear(q, self.gate_proj.weight, self.gate_proj.bias)  # from the post-RoPE query
        o = o * torch.sigmoid(gate_logits)
        out = self.o_proj(o.transpose(1, 2).contiguous().view(b, l, dm))
        return out, (k, v), gate_logits.transpose(1, 2)


def navjak_case():
    print("torch_gated_attention")
    seed = 3001
    torch.manual_seed(seed)
    cfg_fields = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
                  "head_dim": HEAD_DIM, "rope_theta": THETA, "partial_rotary_factor": 1.0, "attention_bias": False,
                  "o_proj_bias": False, "gate_bias": True, "use_qk_norm": False}
    rope_cfg = Qwen3Config(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                           head_dim=HEAD_DIM, rope_parameters={"rope_type": "default", "rope_theta": THETA})
    rotary = qwen3.Qwen3RotaryEmbedding(rope_cfg)
    attn = NavjakGatedAttention(HIDDEN, HEADS).eval()
    randomize_linears(attn, ["q_proj", "k_proj", "v_proj", "o_proj"])
    with torch.no_grad():
        attn.gate_proj.weight.normal_(0.0, 0.25)  # hd = 16 inputs with |q| ~ 1: logits std ~ 1
        attn.gate_proj.bias.normal_(0.0, 0.1)
    x = torch.randn(1, L, HIDDEN)
    pos = torch.arange(L)[None]

    def run(xs, p, past):
        cos, sin = rotary(xs, p)
        cb = lambda q, k: qwen3.apply_rotary_pos_emb(q, k, cos, sin)  # noqa: E731
        return attn(xs, cb, past, causal_mask(xs.shape[1], p[0, -1].item() + 1))

    with torch.no_grad():
        out_full, _, gate_logits = run(x, pos, None)
        out_prefill, kv, _ = run(x[:, :LP], pos[:, :LP], None)
        steps = []
        for t in range(LP, L):
            o, kv, _ = run(x[:, t:t + 1], pos[:, t:t + 1], kv)
            steps.append(o)
        out_decode = torch.cat(steps, dim=1)
    check("prefill vs full[:Lp]", out_prefill, out_full[:, :LP])
    check("decode vs full[Lp:]", out_decode, out_full[:, LP:])

    tensors = {**linear_weights(attn, ["q_proj", "k_proj", "v_proj", "o_proj"]),
               "gatedSDPA.gate_proj.weight": attn.gate_proj.weight, "gatedSDPA.gate_proj.bias": attn.gate_proj.bias,
               **common_tensors(x, out_full, out_prefill, out_decode, gate_logits)}
    layout = {"q_proj.weight": "[H*hd, hidden]", "k_proj.weight": "[H*hd, hidden]", "v_proj.weight": "[H*hd, hidden]",
              "o_proj.weight": "[hidden, H*hd] (no bias)",
              "gatedSDPA.gate_proj.weight": "[hd, hd] shared by all heads",
              "gatedSDPA.gate_proj.bias": "[hd]",
              **COMMON_LAYOUT,
              "gate_logits": "[1, L, H, hd] = q_rot @ W_g^T + b_g, q_rot = per-head query after NeoX RoPE "
                             "(full hd, theta 10000); o[b,l,h,:] *= sigmoid(gate_logits[b,l,h,:])"}
    meta = {**versions(), "config": json.dumps(cfg_fields), "L": L, "Lp": LP, "seed": seed,
            "causal": "bottom-right, explicit additive mask (is_causal=False)",
            "source": "navjak/torch-gated-attention gated_attention.layers.GatedAttention + core.gated_sdpa "
                      "re-implemented in scripts/gen_golden_gated.py; rotary_callback = "
                      "transformers.models.qwen3.modeling_qwen3.apply_rotary_pos_emb with Qwen3RotaryEmbedding; "
                      "decode via past_kv concat",
            "layout": json.dumps(layout)}
    save("torch_gated_attention.safetensors", tensors, meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    qwen3_next_case()
    for g in (1, 2, 4):
        for kind in ("headwise", "elementwise"):
            qiu_case(kind, g)
    navjak_case()
    print("written to", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
