#!/usr/bin/env bash
# A static throughput model of the NEON gemm microkernel (no ARM hardware needed): compiles the
# library for aarch64 to assembly, extracts the microkernel's inner loops (scripts/neon_mca.py)
# and runs llvm-mca on each. Prints, per loop, LLVM version and -mcpu, the scheduling model
# llvm-mca used, the modelled cycles per pass, FMAs per cycle, and that as a fraction of the
# core's peak: Cortex-A76, Neoverse-N1 and Neoverse-N2 issue two 128-bit FMAs (`FMLA .4S`) per
# cycle, on their V0 and V1 pipes.
#
# Which model runs matters: LLVM 16 (Debian's llvm-16) has no model of its own for cortex-a76 or
# neoverse-n1 and uses its Cortex-A57 one, where a 128-bit FMLA occupies both 64-bit FP pipes
# (a peak of one per cycle, half the real cores'); LLVM 19 (Debian's llvm-19) models the
# Neoverse-N1, whose core is the Cortex-A76's (cortex-a76 still maps to the A57 model there).
# Both are run, and the model's name printed next to each figure.
#
# Needs what scripts/aarch64.sh installs, plus Debian's llvm-16 and llvm-19 (installed if
# missing). Results: benches/README.md, "aarch64: the NEON microkernel under llvm-mca".
set -euo pipefail
cd "$(dirname "$0")/.."

for v in 16 19; do
    if ! command -v llvm-mca-$v >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends llvm-$v >/dev/null
    fi
done
target=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$PWD/target/aarch64-mca"
# One codegen unit: one assembly file. The release profile's debug info adds only directives.
cargo rustc --release --target $target --lib --no-default-features -- --emit asm -C codegen-units=1
asm=$(ls -t "$CARGO_TARGET_DIR"/$target/release/deps/gated_attention-*.s | head -1)
loops="$CARGO_TARGET_DIR/mca"
rm -rf "$loops"
python3 scripts/neon_mca.py "$asm" "$loops"

printf '\n%-8s %-5s %-12s %-11s %5s %11s %9s %10s\n' loop llvm cpu model FMAs cycles/pass FMA/cycle "% of peak"
for s in "$loops"/*.s; do
    kind=$(basename "$s" .s)
    fmas=$(grep -c '^fmla' "$s")
    for v in 16 19; do
        for cpu in cortex-a76 neoverse-n1 neoverse-n2; do
            report=$(llvm-mca-$v -mtriple=aarch64 -mcpu=$cpu -iterations=1000 "$s" 2>/dev/null)
            cycles=$(awk '/^Total Cycles:/ {print $3}' <<<"$report")
            iters=$(awk '/^Iterations:/ {print $2}' <<<"$report")
            # The resource names say which model ran: A57UnitW, N1UnitV, N2UnitV, ...
            model=$(grep -m1 -o '[A-Za-z0-9]*Unit[A-Z]' <<<"$report" | sed 's/Unit.*//')
            python3 -c "c = $cycles / $iters; f = $fmas / c; print('%-8s %-5s %-12s %-11s %5d %11.2f %9.2f %9.1f%%' % ('$kind', '$v', '$cpu', '$model', $fmas, c, f, 50 * f))"
        done
    done
done
echo
echo "(llvm-mca-V -mtriple=aarch64 -mcpu=CPU -iterations=1000 on the loops in $loops; % of a peak of 2 FMLA.4S per cycle)"
