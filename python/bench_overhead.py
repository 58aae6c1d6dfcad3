"""The Python binding's per-call overhead over the Rust call, for a decode-sized problem.

    python python/bench_overhead.py [--iters N]

Times ``gated_attention.attention`` from Python (argument parsing, numpy views, output arrays,
GIL release) and the same call timed inside Rust on the same arrays
(``_native._bench_rust_attention``, outputs allocated once), and prints the difference. Each is the
median of several rounds, so a busy machine inflates both alike.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

# Run from the source tree, this directory would shadow the installed package (no _native there).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import gated_attention as ga
from gated_attention import _native


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # decode: one new token per sequence; (query heads, KV heads, head_dim, cached keys)
    problems = [(8, 2, 64, 128), (32, 8, 128, 1024)]
    for hq, hkv, d, n in problems:
        q = rng.standard_normal((1, 1, hq, d), dtype=np.float32)
        k = rng.standard_normal((1, n, hkv, d), dtype=np.float32)
        v = rng.standard_normal((1, n, hkv, d), dtype=np.float32)
        cases = [
            ("causal, sequential", {"causal": True, "parallel": False}),
            ("causal, rayon", {"causal": True}),
            ("7 options, sequential", {"causal": True, "parallel": False, "window": 512, "softcap": 30.0,
                                       "sinks": np.zeros(hq, np.float32), "scale": 0.1, "sink_tokens": 4}),
        ]
        for label, opts in cases:
            ga.attention(q, k, v, **opts)  # warm up
            py_times, rust_times = [], []
            iters = max(10, args.iters * 128 // n)
            for _ in range(args.rounds):  # interleaved, so both see the same machine load
                t0 = time.perf_counter()
                for _ in range(iters):
                    ga.attention(q, k, v, **opts)
                py_times.append((time.perf_counter() - t0) / iters)
                rust_times.append(_native._bench_rust_attention(iters, q, k, v, **opts))
            # the minimum over rounds: the least disturbed run of each (noise only adds time)
            py_t, rust_t = min(py_times), min(rust_times)
            print(f"hq={hq:2d} hkv={hkv} d={d:3d} keys={n:4d}  {label:22s} python {py_t * 1e6:8.2f} us  "
                  f"rust {rust_t * 1e6:8.2f} us  overhead {(py_t - rust_t) * 1e6:6.2f} us "
                  f"(median {(statistics.median(py_times) - statistics.median(rust_times)) * 1e6:6.2f} us)")


if __name__ == "__main__":
    main()
