#!/usr/bin/env bash
# The test suite under AddressSanitizer (nightly). Not part of .ci/run: it rebuilds everything
# instrumented and roughly doubles CI time. Run by hand: `bash scripts/asan.sh [extra cargo test args]`.
# The kernels' unsafe code (SIMD loads/stores, the parallel output writer, matrixmultiply calls)
# is what it checks; the fuzz targets run under ASan too (cargo-fuzz's default).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=1"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/asan}"
# --target keeps the sanitizer flags off build scripts and proc macros.
cargo +nightly test --release --all-features --target "$host" --tests "$@"
