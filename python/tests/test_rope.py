"""RopeTable against numpy cos/sin and rotations."""

import json

import numpy as np
import pytest

import gated_attention as ga
import naive


def test_default_and_linear_tables():
    t = ga.RopeTable(16, 10000.0, 32)
    inv = naive.rope_frequencies(16)
    np.testing.assert_allclose(t.inv_freq, inv, rtol=1e-15)
    theta = np.arange(32)[:, None] * inv[None, :]
    np.testing.assert_allclose(t.cos, np.cos(theta), atol=1e-7)
    np.testing.assert_allclose(t.sin, np.sin(theta), atol=1e-7)
    lin = ga.RopeTable(16, 10000.0, 32, scaling={"rope_type": "linear", "factor": 4.0})
    np.testing.assert_allclose(lin.inv_freq, inv / 4.0, rtol=1e-15)
    assert t.attention_factor == 1.0 and t.pairing == "neox" and t.rotary_dim == 16


def test_every_scaling_builds():
    scalings = [
        {"rope_type": "default"},
        {"rope_type": "linear", "factor": 2.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 16},
        {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
         "original_max_position_embeddings": 16},
    ]
    for s in scalings:
        t = ga.RopeTable(16, 10000.0, 64, scaling=s, max_position_embeddings=64)
        assert t.cos.shape == (64, 8) and np.all(np.isfinite(t.cos)), s
    yarn = ga.RopeTable(16, 10000.0, 64, scaling=scalings[3], max_position_embeddings=128)
    assert yarn.attention_factor == pytest.approx(0.1 * np.log(4.0) + 1.0)
    with pytest.raises(ValueError, match="config field factor: missing or not a valid value"):
        ga.RopeTable(16, 10000.0, 8, scaling={"rope_type": "linear"})  # no factor


def test_from_config_dict_and_path(tmp_path):
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "rope_theta": 500000.0, "max_position_embeddings": 128, "partial_rotary_factor": 0.5,
           "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    t = ga.RopeTable.from_config(cfg)
    assert (t.head_dim, t.rotary_dim, t.positions) == (16, 8, 128)
    np.testing.assert_allclose(t.inv_freq, naive.rope_frequencies(8, 500000.0) / 2.0, rtol=1e-15)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    t2 = ga.RopeTable.from_config(str(p), positions=10)
    np.testing.assert_array_equal(t2.cos, t.cos[:10])
    with pytest.raises(ValueError, match="config"):
        ga.RopeTable.from_config({"hidden_size": 64})


@pytest.mark.parametrize("pairing", ["neox", "gptj"])
def test_rotate(rng, pairing):
    t = ga.RopeTable(16, 10000.0, 64, rotary_dim=12, pairing=pairing)
    x = rng.uniform(-1, 1, (2, 5, 3, 16)).astype(np.float32)
    pos = np.arange(10).reshape(2, 5) * 3
    want = naive.rope_rotate(x, pos, naive.rope_frequencies(12), pairing)
    got = t.rotate(x, pos)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(t.reference_rotate(x, pos), want, atol=1e-12)
    np.testing.assert_array_equal(got[..., 12:], x[..., 12:])  # the tail passes through
    x16 = x.astype(np.float16)
    assert t.rotate(x16, 0).dtype == np.float16
    with pytest.raises(ValueError, match="beyond the RoPE table"):
        t.rotate(x, 60)
