#!/usr/bin/env python3
"""Golden vectors for RoPE scalings and gpt-oss sink attention, from Hugging Face transformers.

Run by hand (not in CI):

    python3 -m venv .venv-golden && .venv-golden/bin/pip install torch==2.15.0 transformers==5.24.0 safetensors numpy
    .venv-golden/bin/python scripts/gen_golden_rope_sinks.py

Writes tests/golden/rope_<type>.safetensors and tests/golden/gpt_oss_sinks.safetensors. Every file's
metadata records the torch and transformers versions and the parameters. The tests in
tests/golden.rs read these files; nothing here runs in CI.
"""
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_oss import modeling_gpt_oss as gpt_oss
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

PINNED = {"torch": "2.15.0", "transformers": "5.24.0"}
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden")
HEAD_DIM, HEADS, SEQ, THETA = 64, 2, 24, 10000.0


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "pinned": json.dumps(PINNED)}


def rope_case(name, rope_parameters, seq_len, max_pos=2048, partial=1.0):
    torch.manual_seed(abs(hash(name)) % (2**31))
    params = {"rope_theta": THETA, **rope_parameters}
    cfg = LlamaConfig(hidden_size=HEAD_DIM * HEADS, num_attention_heads=HEADS, head_dim=HEAD_DIM,
                      max_position_embeddings=max_pos, rope_parameters=params,
                      partial_rotary_factor=partial)
    rope_type = params["rope_type"]
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", seq_len=seq_len) if rope_type != "default" \
        else (1.0 / (THETA ** (torch.arange(0, int(HEAD_DIM * partial), 2, dtype=torch.int64).float() / int(HEAD_DIM * partial))), 1.0)
    rot = int(HEAD_DIM * partial)
    # positions spread over the table, as HF computes them: f32 product, f32 cos/sin
    positions = torch.tensor(sorted(torch.randperm(seq_len)[:SEQ].tolist()), dtype=torch.int64)
    freqs = positions[:, None].float() * inv_freq[None, :].float()
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * attention_factor, emb.sin() * attention_factor
    x = torch.rand(1, HEADS, SEQ, HEAD_DIM) * 2 - 1  # [batch, heads, seq, dim]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    y_rot, _ = apply_rotary_pos_emb(x_rot, x_rot, cos[None], sin[None])
    y = torch.cat((y_rot, x_pass), dim=-1)
    meta = {**versions(), "rope_type": rope_type, "rope_parameters": json.dumps(params), "seq_len": str(seq_len),
            "max_position_embeddings": str(max_pos), "head_dim": str(HEAD_DIM), "rotary_dim": str(rot),
            "attention_factor": repr(float(attention_factor)), "layout": "x, y: [batch, heads, seq, dim]"}
    save_file({"inv_freq": inv_freq.float().contiguous(), "positions": positions.contiguous(), "x": x.contiguous(), "y": y.contiguous()},
              os.path.join(OUT, f"rope_{name}.safetensors"), metadata=meta)


def sinks_case():
    torch.manual_seed(7)
    b, hq, hkv, l, d, window = 1, 4, 2, 140, 16, 128

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_key_value_groups = hq // hkv
            self.sinks = torch.nn.Parameter(torch.randn(hq) * 2)

    m = Module().eval()
    q = torch.randn(b, hq, l, d)
    k = torch.randn(b, hkv, l, d)
    v = torch.randn(b, hkv, l, d)
    i = torch.arange(l)[:, None]
    j = torch.arange(l)[None, :]
    visible = (j <= i) & (j > i - window)  # gpt-oss sliding layers: i - W < j <= i
    mask = torch.zeros(l, l).masked_fill(~visible, float("-inf"))[None, None]
    scaling = d ** -0.5
    with torch.no_grad():
        out, _ = gpt_oss.eager_attention_forward(m, q, k, v, mask, scaling)
        out_full, _ = gpt_oss.eager_attention_forward(m, q, k, v, torch.zeros(l, l).masked_fill(j > i, float("-inf"))[None, None], scaling)
    meta = {**versions(), "window": str(window), "scaling": repr(scaling),
            "layout": "q, k, v: [batch, heads, seq, dim]; out, out_full: [batch, seq, heads, dim]",
            "source": "transformers.models.gpt_oss.modeling_gpt_oss.eager_attention_forward"}
    save_file({"q": q, "k": k, "v": v, "sinks": m.sinks.detach().clone(), "out": out.contiguous(), "out_full": out_full.contiguous()},
              os.path.join(OUT, "gpt_oss_sinks.safetensors"), metadata=meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    rope_case("default", {"rope_type": "default"}, 512)
    rope_case("partial", {"rope_type": "default"}, 512, partial=0.5)
    rope_case("linear", {"rope_type": "linear", "factor": 4.0}, 512)
    rope_case("dynamic", {"rope_type": "dynamic", "factor": 2.0}, 512, max_pos=256)
    rope_case("yarn", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}, 512, max_pos=512)
    rope_case("yarn_gpt_oss", {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                               "original_max_position_embeddings": 4096}, 512, max_pos=131072)
    rope_case("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 128}, 512)
    short = [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)]
    long = [2.0 + 0.1 * i for i in range(HEAD_DIM // 2)]
    rope_case("longrope_short", {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                                 "original_max_position_embeddings": 256}, 200, max_pos=1024)
    rope_case("longrope_long", {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                                "original_max_position_embeddings": 256}, 512, max_pos=1024)
    sinks_case()
    print("written to", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
