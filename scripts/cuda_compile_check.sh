#!/usr/bin/env bash
# Compiles every CUDA kernel with NVIDIA's own compiler on a machine without a GPU or toolkit:
# NVRTC from pinned PyPI wheels (CUDA 12.8 and 13.0, installed into the ignored .cache/), each
# for sm_80 and sm_90 to CUBIN through the crate's own compile path (src/cuda/nvrtc.rs), with
# ptxas' -v report parsed by tests/cuda.rs: the run fails on a compile error, any spill,
# registers above the per-kernel budget, shared memory above the per-block limit, or a resource
# table that differs from the committed kernels/ptxas/cudaXY.txt (GA_BLESS=1 rewrites them).
#
# NVRTC runs ptxas internally for a CUBIN, so no separate ptxas wheel is needed.
#
# The CUBINs go to target/cubin/cudaXY_sm_NN.cubin (GA_DUMP_CUBIN) for scripts/sass_model.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# (wheel==version, library directory inside the install)
wheels=(
    "nvidia-cuda-nvrtc-cu12==12.8.93 nvidia/cuda_nvrtc/lib"
    "nvidia-cuda-nvrtc==13.0.48 nvidia/cu13/lib"
)
libpaths=()
for entry in "${wheels[@]}"; do
    read -r wheel libdir <<<"$entry"
    version=${wheel#*==}
    dest=.cache/cuda-nvrtc-${version%.*}
    if [ ! -d "$dest/$libdir" ]; then
        echo "==> pip install $wheel into $dest"
        python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dest" "$wheel"
    fi
    libpaths+=("$version $PWD/$dest/$libdir")
done

# Build once, then one process per NVRTC version, side by side (each compiles the D 256 kernels
# for two architectures, about 40 s per architecture on one core); logs are printed in order.
# The features and packages of the README's test command (`.ci/run test`), so that after it the
# test binary is already built: `--features cuda` alone rebuilt the crate (62 s on 2 cores).
cuda_test=(--release --workspace --all-features --test cuda)
cargo test "${cuda_test[@]}" --no-run
logs=$(mktemp -d)
pids=()
for entry in "${libpaths[@]}"; do
    read -r version libpath <<<"$entry"
    LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" GA_REQUIRE_NVRTC=1 \
        GA_DUMP_CUBIN="$PWD/target/cubin" \
        cargo test "${cuda_test[@]}" nvrtc -- --nocapture >"$logs/$version.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    read -r version _ <<<"${libpaths[$i]}"
    wait "${pids[$i]}" || status=1
    echo "==> NVRTC $version: every kernel for sm_80 and sm_90"
    cat "$logs/$version.log"
done
rm -rf "$logs"
exit $status
