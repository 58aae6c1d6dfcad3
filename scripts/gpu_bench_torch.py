#!/usr/bin/env python3
"""PyTorch's attention on the shapes `examples/cuda.rs` timed, and the ratios.

    GA_BENCH_CSV=rows.csv cargo run --release --features cuda --example cuda
    python3 scripts/gpu_bench_torch.py rows.csv [table.md]

For every row of the CSV (kind, dtype, batch, q_len, kv_len, q_heads, kv_heads, head_dim,
causal, ms, kernels) this times torch.nn.functional.scaled_dot_product_attention with the
FlashAttention-2 backend and the cuDNN backend, and `flash_attn.flash_attn_func` where that
package imports, the same way the example times ours: a warm-up, then three groups of up to ten
launches (about 20 ms per group) between CUDA events, the median group's mean. It prints a
markdown table (and writes it to the second argument) whose ratio columns are torch's time over
ours: above 1 we are faster. FLOP are counted as FlashAttention's benchmark does (4·B·H·L·L·D,
halved when causal) on both sides, so only the times matter for the ratios.
"""
import csv
import statistics
import sys

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    SDPBackend = sdpa_kernel = None
try:
    from flash_attn import flash_attn_func
except Exception:  # not installed, or built for another torch
    flash_attn_func = None


def timed_ms(f, reps=10):
    """Median over three groups of the mean launch time, after a timed warm-up."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    f()
    end.record()
    torch.cuda.synchronize()
    n = max(1, min(reps, int(20.0 / max(start.elapsed_time(end), 1e-3))))
    groups = []
    for _ in range(3):
        start.record()
        for _ in range(n):
            f()
        end.record()
        torch.cuda.synchronize()
        groups.append(start.elapsed_time(end) / n)
    return statistics.median(groups)


def sdpa(backend, q, k, v, causal):
    gqa = q.shape[1] != k.shape[1]

    def run():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    return run


def ceilings():
    """The run's own limits: an 8192^3 bf16 matrix product and a device-to-device copy."""
    a = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm = 2 * 8192**3 / timed_ms(lambda: a @ a) / 1e9
    x = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    copy = 2 * x.numel() / timed_ms(lambda: y.copy_(x)) / 1e6
    del a, x, y
    torch.cuda.empty_cache()
    return mm, copy


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    dev = torch.cuda.get_device_name()
    print(f"torch {torch.__version__} on {dev}; flash_attn: {'yes' if flash_attn_func else 'not importable'}")
    mm, copy = ceilings()
    limits = f"this run's ceilings: bf16 matmul 8192^3 {mm:.0f} TFLOP/s, device copy {copy:.0f} GB/s (read + write)"
    print(limits)
    backends = []
    if sdpa_kernel is not None:
        backends = [("SDPA flash", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)]
    head = "| kind | dtype | B | Lq | Lk | Hq | Hkv | D | causal | ours ms | ours TFLOP/s or GB/s |"
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    for name, _ in backends:
        head += f" {name} ms | {name} / ours |"
        sep += "---|---|"
    if flash_attn_func:
        head += " flash_attn ms | flash_attn / ours |"
        sep += "---|---|"
    head += " our kernels |"
    sep += "---|"
    lines = [head, sep]
    print(head)
    print(sep)
    for r in rows:
        b, lq, lk, hq, hkv, d = (int(r[c]) for c in ("batch", "q_len", "kv_len", "q_heads", "kv_heads", "head_dim"))
        causal = r["causal"] == "1"
        ours = float(r["ms"])
        dt = torch.float16 if r["dtype"] == "f16" else torch.bfloat16
        torch.manual_seed(0)
        q = torch.rand(b, hq, lq, d, device="cuda", dtype=dt) - 0.5
        k = torch.rand(b, hkv, lk, d, device="cuda", dtype=dt) - 0.5
        v = torch.rand(b, hkv, lk, d, device="cuda", dtype=dt) - 0.5
        if r["kind"] == "prefill":
            flop = 4.0 * b * hq * lq * lk * d / (2 if causal else 1)
            metric = f"{flop / ours / 1e9:.1f}"
        else:
            metric = f"{b * lk * hkv * d * 2 * k.element_size() / ours / 1e6:.0f} GB/s"
        # A single query attends to every key (our causal mask is bottom-right aligned; torch's
        # is_causal is top-left, which for q_len 1 would keep key 0 only).
        is_causal = causal and lq > 1
        line = (
            f"| {r['kind']} | {r['dtype']} | {b} | {lq} | {lk} | {hq} | {hkv} | {d} | {int(causal)} | "
            f"{ours:.3f} | {metric} |"
        )
        for _, backend in backends:
            try:
                ms = timed_ms(sdpa(backend, q, k, v, is_causal))
                line += f" {ms:.3f} | {ms / ours:.2f} |"
            except Exception as e:  # backend refuses this shape or dtype
                line += f" n/a ({type(e).__name__}) | |"
        if flash_attn_func:
            qf, kf, vf = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            try:
                ms = timed_ms(lambda: flash_attn_func(qf, kf, vf, causal=is_causal))
                line += f" {ms:.3f} | {ms / ours:.2f} |"
            except Exception as e:
                line += f" n/a ({type(e).__name__}) | |"
        line += f" {r['kernels']} |"
        print(line, flush=True)
        lines.append(line)
        del q, k, v
        torch.cuda.empty_cache()
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write(f"torch {torch.__version__} on {dev}; {limits}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
