#!/usr/bin/env bash
# The emulated CUDA kernels under sanitizers (needs g++ with libtsan/libasan):
#   ThreadSanitizer on the thread-mode emulator (every CUDA thread an OS thread): no race, and a
#     planted missing __syncthreads must be reported as a data race;
#   AddressSanitizer on the fiber-mode emulator: no out-of-bounds access, and a planted read past
#     the last key must be reported.
# One multi-tile shape per kernel (cuda-emu/sanitize/harness.cpp; the tensor-core prefill in f16,
# and in bf16 with softcap and a non-finite V that takes the cold path; the tensor-core split-KV
# decode in f16 with the combine); the tensor-core unit kernels
# (cp.async, the double-buffered GEMM: cuda-emu/sanitize/tc_harness.cpp) likewise, with a planted
# missing barrier before a stage is refilled that TSan must report.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cxx=(g++ -std=c++20 -O1 -g -Ikernels -Wno-clobbered cuda-emu/sanitize/harness.cpp)
tc=(g++ -std=c++20 -O1 -g -Ikernels -Wno-clobbered cuda-emu/sanitize/tc_harness.cpp)
fail=0

run() {  # name, expect (clean|report), pattern, binary
    local name=$1 expect=$2 pattern=$3 bin=$4 log="$out/$1.log"
    timeout 600 "$bin" >"$log" 2>&1
    local rc=$?
    if [ "$expect" = clean ]; then
        if [ $rc -ne 0 ] || grep -q "$pattern" "$log"; then
            echo "FAIL $name: expected a clean run (exit $rc)"; tail -40 "$log"; fail=1
        else
            echo "ok   $name: clean"
        fi
    else
        if grep -q "$pattern" "$log"; then
            echo "ok   $name: reported ($(grep -m1 "$pattern" "$log" | sed 's/^ *//'))"
        else
            echo "FAIL $name: the planted fault was not reported (exit $rc)"; tail -20 "$log"; fail=1
        fi
    fi
}

"${cxx[@]}" -fsanitize=thread -DEMU_THREADS -pthread -o "$out/tsan" && run tsan clean "ThreadSanitizer" "$out/tsan"
"${cxx[@]}" -fsanitize=thread -DEMU_THREADS -DGA_FAULT_NO_SYNC -pthread -o "$out/tsan_fault" &&
    run tsan_missing_sync report "ThreadSanitizer: data race" "$out/tsan_fault"
"${tc[@]}" -fsanitize=thread -DEMU_THREADS -pthread -o "$out/tsan_tc" && run tsan_tc clean "ThreadSanitizer" "$out/tsan_tc"
"${tc[@]}" -fsanitize=thread -DEMU_THREADS -DGA_FAULT_TC_NO_TRAILING_SYNC -pthread -o "$out/tsan_tc_fault" &&
    run tsan_tc_missing_trailing_sync report "ThreadSanitizer: data race" "$out/tsan_tc_fault"
# ASan and swapcontext: the fiber stacks are ordinary heap memory; ASan warns that stack
# switching is only partly supported, which is harmless here (no stack-use checks on fibers).
export ASAN_OPTIONS=detect_stack_use_after_return=0:detect_leaks=0
"${cxx[@]}" -fsanitize=address -o "$out/asan" && run asan clean "AddressSanitizer: [a-z-]*-overflow\|ERROR: AddressSanitizer" "$out/asan"
"${cxx[@]}" -fsanitize=address -DGA_FAULT_OOB -o "$out/asan_fault" &&
    run asan_out_of_bounds report "AddressSanitizer: heap-buffer-overflow" "$out/asan_fault"
"${tc[@]}" -fsanitize=address -o "$out/asan_tc" && run asan_tc clean "AddressSanitizer: [a-z-]*-overflow\|ERROR: AddressSanitizer" "$out/asan_tc"
exit $fail
