#!/usr/bin/env bash
# The CUDA backend on a real GPU (H100/H200, CUDA 13, driver 580), in a few minutes:
#   1. the gpu_* tests (every kernel against the f64 reference on the device; gpu_kv_cache_decode:
#      the device KV cache against the CPU cache; gpu_device_buffers: caller-owned cudarc buffers),
#   2. compute-sanitizer memcheck, racecheck and synccheck on the small test (gpu_small) and on
#      the tensor-core prefill (gpu_tensor_core_prefill: mma.sync, ldmatrix, cp.async pipeline),
#   3. the benchmark (examples/cuda.rs: TFLOP/s prefill, GB/s decode, GB/s decode against the device
#      KV cache with its RoPE-append time, against the device's peaks),
#   4. PyTorch's scaled_dot_product_attention on the same shapes, when torch is importable.
#
# `scripts/gpu_check.sh --prepare` (on a build machine, no GPU needed) builds the test binary and
# the example into target/gpu-bundle/ so a GPU machine without Rust can run
# `scripts/gpu_check.sh` with that directory carried along. NVRTC must be loadable there: this
# script adds /usr/local/cuda/lib64 and torch's nvidia/cu13/lib (or cuda_nvrtc/lib) to the path.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=target/gpu-bundle

if [ "${1:-}" = "--prepare" ]; then
    set -e
    mkdir -p "$bundle"
    bin=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda": print(m["executable"])')
    cargo build --release --features cuda --example cuda
    cp "$bin" "$bundle/cuda_tests"
    cp target/release/examples/cuda "$bundle/cuda_example"
    strip "$bundle/cuda_tests" "$bundle/cuda_example" 2>/dev/null || true
    ls -l "$bundle"
    exit 0
fi

start=$SECONDS
status=0
step() { echo; echo "==> [+$((SECONDS - start))s] $*"; }

for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
torch_nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
if [ -n "$torch_nv" ]; then
    for d in "$torch_nv"/nvidia/cu13/lib "$torch_nv"/nvidia/cuda_nvrtc/lib; do
        [ -d "$d" ] && export LD_LIBRARY_PATH="$d:$LD_LIBRARY_PATH"
    done
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

if [ -x "$bundle/cuda_tests" ] && ! command -v cargo >/dev/null; then
    tests=("$bundle/cuda_tests")
    example=("$bundle/cuda_example")
else
    step "building the GPU tests and the example"
    bash "$0" --prepare || exit 1
    tests=("$bundle/cuda_tests")
    example=("$bundle/cuda_example")
fi

step "gpu_* tests (every kernel vs the f64 reference)"
timeout 300 "${tests[@]}" --ignored gpu_ --test-threads=1 || status=1

if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
        step "compute-sanitizer --tool $tool on gpu_small"
        timeout 180 compute-sanitizer --tool "$tool" --error-exitcode 99 "${tests[@]}" --ignored --exact gpu_small \
            --test-threads=1 || status=1
    done
    for tool in memcheck racecheck synccheck; do
        step "compute-sanitizer --tool $tool on gpu_tensor_core_prefill"
        timeout 180 compute-sanitizer --tool "$tool" --error-exitcode 99 "${tests[@]}" --ignored --exact \
            gpu_tensor_core_prefill --test-threads=1 || status=1
    done
    step "compute-sanitizer --tool memcheck on gpu_kv_cache_decode (RoPE-append, compaction, decode)"
    timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 "${tests[@]}" --ignored --exact \
        gpu_kv_cache_decode --test-threads=1 || status=1
else
    echo "NOTE: compute-sanitizer not found; sanitizer runs skipped"
fi

step "benchmark (examples/cuda.rs)"
timeout 180 "${example[@]}" || status=1

step "torch scaled_dot_product_attention on the same shapes"
timeout 120 python3 - <<'PY' || echo "NOTE: torch comparison failed or torch is not importable"
import torch, torch.nn.functional as F
if not torch.cuda.is_available():
    raise SystemExit("torch without CUDA")
def bench(f, reps=10):
    f(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps): f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps
for L, causal in [(4096, True), (4096, False)]:
    q = torch.randn(1, 32, L, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, L, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
    pairs = L * (L + 1) / 2 if causal else L * L
    print(f"torch SDPA prefill bf16 L={L} Hq=32 Hkv=8 D=128 causal={causal}: {ms:.3f} ms, {4*32*pairs*128/ms/1e9:.1f} TFLOP/s")
for B, S in [(1, 8192), (8, 4096), (32, 16384)]:
    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, 8, S, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    print(f"torch SDPA decode bf16 batch={B} kv={S}: {ms:.3f} ms, {B*S*8*128*2*2/ms/1e6:.0f} GB/s of K/V")
PY

step "done (status $status)"
exit $status
