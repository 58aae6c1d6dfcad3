#!/usr/bin/env bash
# The SASS side of issue 13's performance model, without a GPU or toolkit: disassembles the
# CUBINs the crate's own NVRTC path builds (dumped by scripts/cuda_compile_check.sh through
# GA_DUMP_CUBIN, NVRTC 12.8 and 13.0, sm_80 and sm_90) with cuobjdump/nvdisasm from pinned PyPI
# wheels (installed into the ignored .cache/), and counts the instruction mix of each tensor-core
# kernel's K/V loop (prefill attn_fwd_tc_* and split-KV decode attn_split_tc_*) (scripts/sass_model.py says how the loop is found). The counts go to
# kernels/sass/cudaXY.txt; the run fails when a kernel's inner-loop HMMA share falls more than
# 10% below the committed figure, or a kernel appears or disappears (GA_BLESS=1 rewrites them).
#
# Reads target/cubin/cudaXY_sm_NN.cubin; runs scripts/cuda_compile_check.sh first when one is
# missing or older than a kernel source.
set -euo pipefail
cd "$(dirname "$0")/.."

version=13.5.37
dest=.cache/sass-tools-${version%.*}
bin=$dest/nvidia/cu13/bin
if [ ! -x "$bin/cuobjdump" ] || [ ! -x "$bin/nvdisasm" ]; then
    echo "==> pip install nvidia-cuda-cuobjdump/nvdisasm $version into $dest"
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dest" \
        "nvidia-cuda-cuobjdump==$version" "nvidia-cuda-nvdisasm==$version"
fi
export PATH="$PWD/$bin:$PATH"  # cuobjdump runs nvdisasm from PATH

cubins=target/cubin
stale=0
for nv in 128 130; do
    for arch in sm_80 sm_90; do
        f=$cubins/cuda${nv}_$arch.cubin
        if [ ! -f "$f" ] || [ -n "$(find kernels -newer "$f" -type f -name '*.cu*' | head -1)" ]; then stale=1; fi
    done
done
if [ "$stale" = 1 ]; then
    echo "==> CUBINs missing or stale: scripts/cuda_compile_check.sh"
    scripts/cuda_compile_check.sh
fi

mkdir -p kernels/sass
status=0
for nv in 128 130; do
    new=$(mktemp)
    {
        echo "# K/V loop of the tensor-core prefill and split-KV decode, NVRTC ${nv:0:2}.${nv:2}, SASS by cuobjdump $version (scripts/sass_model.sh)"
        echo "# static counts, one pass of the loop body; hmma_share_pct = 100 hmma / insns; CI floor: 90% of it"
        echo "# kernel arch insns hmma ldsm ldgsts lds ldg sts stg shfl bar mufu hmma_share_pct loop_start loop_end"
        for arch in sm_80 sm_90; do
            sass=$(mktemp)
            # (nvdisasm warns about the ELF flavour of the 12.8 CUBINs and disassembles them fine)
            if ! cuobjdump -sass "$cubins/cuda${nv}_$arch.cubin" >"$sass" 2>"$sass.err"; then
                cat "$sass.err" >&2
                exit 1
            fi
            python3 scripts/sass_model.py table "$sass" "$arch"
            rm -f "$sass" "$sass.err"
        done
    } >"$new"
    committed=kernels/sass/cuda$nv.txt
    if [ -n "${GA_BLESS:-}" ]; then
        cp "$new" "$committed"
        echo "==> wrote $committed"
    elif [ ! -f "$committed" ]; then
        echo "$committed missing; run with GA_BLESS=1 to create it:" >&2
        cat "$new" >&2
        status=1
    else
        echo "==> NVRTC ${nv:0:2}.${nv:2}: K/V loop vs $committed"
        column -t <"$new" | grep -v '^#' || true
        if ! python3 scripts/sass_model.py check "$committed" "$new"; then status=1; fi
        if ! diff -q "$committed" "$new" >/dev/null; then
            echo "(counts differ from $committed, within the floor; GA_BLESS=1 to record them)"
        fi
    fi
    rm -f "$new"
done
exit $status
