#!/usr/bin/env bash
# The CUDA backend on a real GPU (H100/H200, CUDA 13, driver 580), in a few minutes:
#   1. the gpu_* tests (every kernel against the f64 reference on the device, the tensor-core
#      prefill and split-KV decode included; gpu_kv_cache_decode: the device KV cache against the
#      CPU cache; gpu_device_buffers: caller-owned cudarc buffers),
#   2. the benchmark (examples/cuda.rs): FlashAttention's prefill matrix (L 1k-16k, D 64/128/256,
#      causal and not, bf16, f16 at D 128), GQA prefill, decode, decode against the device KV
#      cache; then scripts/gpu_bench_torch.py times PyTorch SDPA (flash and cuDNN backends) and
#      flash_attn, where importable, on the same rows and prints the ratios,
#   3. compute-sanitizer memcheck, racecheck and synccheck on the small CUDA-core case and the
#      tensor-core prefill and decode (mma.sync, ldmatrix, cp.async pipeline), memcheck on the
#      device KV cache,
#   4. Nsight Compute on one tensor-core prefill launch (D 128, L 4k, bf16), where ncu reads the
#      counters.
# Logs, the benchmark rows (bench.csv) and the ratio table (bench.md) go to $OUT when it is set
# (the device tool's output folder), else to target/gpu-check/. GA_GPU_STEPS picks steps (default
# "tests bench sanitizers ncu").
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
steps=" ${GA_GPU_STEPS:-tests bench sanitizers ncu} "
want() { [[ "$steps" == *" $1 "* ]]; }
out=${OUT:-target/gpu-check}
mkdir -p "$out"
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

# NVRTC compiles the kernels in the first process; the others read the CUBIN from this cache.
export GA_CUBIN_CACHE=${GA_CUBIN_CACHE:-/tmp/ga-cubin-cache}

# One process per test, each with its own time limit, so that a hang costs one test.
want tests && mapfile -t gpu_tests < <("${tests[@]}" --ignored --list 2>/dev/null | sed -n 's/^\(gpu_[a-z0-9_]*\): test$/\1/p')
for t in "${gpu_tests[@]:-}"; do
    [ -n "$t" ] || continue
    step "$t (vs the f64 reference)"
    timeout 90 "${tests[@]}" --ignored --exact "$t" --test-threads=1 --nocapture >"$out/$t.log" 2>&1 ||
        { status=1; echo "FAILED: $t"; }
    tail -n 12 "$out/$t.log"
done
cat "$out"/gpu_*.log >"$out/tests.log" 2>/dev/null && rm -f "$out"/gpu_*.log

if want bench; then
    step "benchmark (examples/cuda.rs), rows to $out/bench.csv"
    GA_BENCH_CSV="$out/bench.csv" timeout 240 "${example[@]}" 2>&1 | tee "$out/example.log" || status=1
fi

if want bench && [ -s "$out/bench.csv" ]; then
    step "PyTorch SDPA (flash, cuDNN) and flash_attn on the same rows"
    PYTHONUNBUFFERED=1 timeout 240 python3 scripts/gpu_bench_torch.py "$out/bench.csv" "$out/bench.md" ||
        echo "NOTE: the torch comparison failed or torch is not importable"
fi

# One process per tool (NVRTC compiles the kernels once per process).
if ! want sanitizers; then
    :
elif command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
        cases=(gpu_small gpu_tensor_core_prefill gpu_tensor_core_decode)
        [ "$tool" = memcheck ] && cases+=(gpu_kv_cache_decode)
        step "compute-sanitizer --tool $tool on ${cases[*]}"
        timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 99 "${tests[@]}" --ignored --exact \
            "${cases[@]}" --test-threads=1 2>&1 | tee "$out/sanitizer-$tool.log" | tail -n 25 || status=1
    done
else
    echo "NOTE: compute-sanitizer not found; sanitizer runs skipped"
fi

# The first launch of attn_fwd_tc_d128_bf16 after 133 others is the matrix's L 4k non-causal
# D 128 row (1 correctness launch, then 33 per row for L 1k and 2k, causal and not).
if want ncu && command -v ncu >/dev/null; then
    step "ncu on one tensor-core prefill launch (D 128, L 4k, bf16)"
    timeout 150 ncu --clock-control none --kill yes --kernel-name attn_fwd_tc_d128_bf16 --launch-skip 133 \
        --launch-count 1 --section SpeedOfLight --section Occupancy --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis_Tables --section LaunchStats --section WarpStateStats \
        "${example[@]}" >"$out/ncu.txt" 2>&1 || echo "NOTE: ncu failed (see $out/ncu.txt)"
    grep -E "attn_fwd_tc|Duration|Throughput|Pipe|Bank|Occupancy|Registers|Warp Cycles|Stall" "$out/ncu.txt" | head -n 60
fi

step "done (status $status)"
exit $status
