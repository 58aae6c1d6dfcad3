#!/usr/bin/env python3
"""Seed inputs for the `parse_config` fuzz target's safetensors weight loader.

Random bytes almost never form a safetensors header, so without a valid file in the corpus the
fuzzer would stop at the first check of `load_weights`. These two files are the weights of the
small layer the target loads (hidden 8, 2 query heads, 1 KV head, head_dim 4, Qiu headwise gate,
Qwen3 QK-norm): one all-f32, one mixing f16 and bf16 tensors. The format is written by hand
(8-byte little-endian header length, JSON header, raw data) so the script needs only Python.

Run by hand from the repository root:

    python3 scripts/gen_fuzz_weight_seeds.py
"""
import json
import random
import struct

random.seed(5)


def f32(n):
    return b"".join(struct.pack("<f", random.uniform(-1, 1)) for _ in range(n))


def f16(n):
    return b"".join(struct.pack("<e", random.uniform(-1, 1)) for _ in range(n))


def bf16(n):
    # The upper half of an f32 is its bf16 truncation.
    return b"".join(struct.pack("<f", random.uniform(-1, 1))[2:] for _ in range(n))


def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, values) in tensors.items():
        count = 1
        for s in shape:
            count *= s
        raw = values(count)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


# q_proj carries 2 heads x 4 query features plus one headwise gate column per head.
SHAPES = {
    "q_proj.weight": [10, 8],
    "k_proj.weight": [4, 8],
    "v_proj.weight": [4, 8],
    "o_proj.weight": [8, 8],
    "q_norm.weight": [4],
    "k_norm.weight": [4],
}
OUT = "fuzz/corpus/parse_config/"

with open(OUT + "seed-weights-f32.safetensors", "wb") as f:
    f.write(safetensors({k: ("F32", s, f32) for k, s in SHAPES.items()}))
mixed = {k: (("F16", s, f16) if i % 2 else ("BF16", s, bf16)) for i, (k, s) in enumerate(SHAPES.items())}
with open(OUT + "seed-weights-f16-bf16.safetensors", "wb") as f:
    f.write(safetensors(mixed))
