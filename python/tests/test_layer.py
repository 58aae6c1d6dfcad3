"""GatedAttention.from_pretrained on a safetensors file written here, against a numpy forward."""

import json
import struct

import numpy as np
import pytest

import gated_attention as ga
import naive

CONFIG = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
          "use_qk_norm": False, "rope_theta": 10000.0, "max_position_embeddings": 64}


def write_safetensors(path, tensors):
    """The safetensors format: u64 header length, a JSON header, then the raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def numpy_forward(x, w, cfg):
    b, l, _ = x.shape
    h, hkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    x = x.astype(np.float64)
    q = (x @ w["q_proj.weight"].T).reshape(b, l, h, d)
    k = (x @ w["k_proj.weight"].T).reshape(b, l, hkv, d)
    v = (x @ w["v_proj.weight"].T).reshape(b, l, hkv, d)
    pos = np.tile(np.arange(l), (b, 1))
    inv = naive.rope_frequencies(d, cfg["rope_theta"])
    q, k = naive.rope_rotate(q, pos, inv), naive.rope_rotate(k, pos, inv)
    o, _ = naive.attention(q, k, v, causal=True)
    return o.reshape(b, l, h * d) @ w["o_proj.weight"].T


def test_from_pretrained_matches_numpy(tmp_path, rng):
    prefix = "model.layers.0.self_attn."
    w = {
        "q_proj.weight": rng.uniform(-0.3, 0.3, (32, 32)),
        "k_proj.weight": rng.uniform(-0.3, 0.3, (16, 32)),
        "v_proj.weight": rng.uniform(-0.3, 0.3, (16, 32)),
        "o_proj.weight": rng.uniform(-0.3, 0.3, (32, 32)),
    }
    w = {n: t.astype(np.float32) for n, t in w.items()}
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    write_safetensors(tmp_path / "model.safetensors", {prefix + n: t for n, t in w.items()})
    layer = ga.GatedAttention.from_pretrained(str(tmp_path / "config.json"), str(tmp_path / "model.safetensors"),
                                              prefix)
    assert (layer.hidden_size, layer.num_heads, layer.num_kv_heads, layer.head_dim) == (32, 4, 2, 8)
    x = rng.uniform(-1, 1, (2, 6, 32)).astype(np.float32)
    want = numpy_forward(x, w, CONFIG)
    np.testing.assert_allclose(layer.reference_forward(x), want, rtol=1e-9, atol=1e-9)
    cache = layer.new_cache(2, 16)
    y = layer.forward(x[:, :4], cache)
    y2, stats = layer.forward(x[:, 4:], cache, stats=True)
    np.testing.assert_allclose(np.concatenate([y, y2], axis=1), want, rtol=1e-4, atol=1e-4)
    assert stats["first_token_share"].shape == (4,) and stats["gate"]["count"] == 0
    with pytest.raises(ValueError, match="weight"):
        ga.GatedAttention.from_pretrained(str(tmp_path / "config.json"), str(tmp_path / "model.safetensors"),
                                          "wrong.")
    with pytest.raises(ValueError, match="x must be"):
        layer.forward(x[..., :16], cache)


def test_gated_layer_against_its_reference(rng):
    cfg = dict(CONFIG, headwise_attn_output_gate=True, use_qk_norm=True)
    layer = ga.GatedAttention.seeded(cfg, seed=7)
    x = rng.uniform(-1, 1, (1, 5, 32)).astype(np.float32)
    y, stats = layer.forward(x, layer.new_cache(1, 8), stats=True)
    np.testing.assert_allclose(y, layer.reference_forward(x), rtol=1e-4, atol=1e-4)
    assert stats["gate"]["count"] > 0 and 0.0 < stats["gate"]["mean"] < 1.0
