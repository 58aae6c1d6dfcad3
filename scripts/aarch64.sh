#!/usr/bin/env bash
# aarch64 (NEON) on an x86_64 machine: cross-build with Debian's rustc-web (it ships the arm64
# standard library) and run the tests under qemu-user. See shared/spec/AARCH64.md.
#
# 1. Installs what is missing (idempotent; needs root and Debian's archive): rustc-web with
#    libstd-rust-web-dev:arm64, rust-web-clippy, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
#    qemu-user-static.
# 2. Builds tests/emulated.rs for aarch64-unknown-linux-gnu (features `std` only: no rayon, since
#    any thread creation hangs under qemu-user on these VMs) with `--cfg gated_attention_selftest`
#    (the kernel unit tests, callable without libtest), and runs it under qemu: every available
#    ISA (scalar, portable, neon) against the f64 reference, and every kernel method against the
#    scalar kernel. Its last line is `N passed, M failed`.
# 3. Builds ensure_no_std/ for aarch64 (bare, and with alloc).
# 4. clippy -D warnings for aarch64 (Debian's clippy for this compiler): the library without
#    default features, and the library, tests, examples and benches with the default ones.
#
# Nothing here changes the x86_64 builds: the compiler, linker and runner are chosen by
# environment variables, and the artefacts go to target/aarch64.
#
# Timing: 328 s on the 2-core build VM under a load average of 7 (2026-11-29; packages installed,
# cargo registry warm, target/aarch64 empty): the emulated test build 3.3 min, its run under qemu
# about 40 s, ensure_no_std 45 s, clippy 45 s. A first install adds about 35 s.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
missing=()
[ -x /usr/bin/rustc ] && /usr/bin/rustc --print sysroot >/dev/null 2>&1 || missing+=(rustc-web)
[ -d /usr/lib/rustlib/$target/lib ] || missing+=(libstd-rust-web-dev:arm64)
[ -x /usr/bin/clippy-driver ] || missing+=(rust-web-clippy)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -d /usr/aarch64-linux-gnu/lib ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
/usr/bin/rustc --version

export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR="$PWD/target/aarch64"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
# One set of flags for every command below, so their dependencies are built once; no debug info
# (the release profile's `debug = 1` costs build time and nothing here reads it).
export RUSTFLAGS="--cfg gated_attention_selftest"
export CARGO_PROFILE_RELEASE_DEBUG=0
unset RUST_BACKTRACE

echo "==> emulated tests (qemu-aarch64)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# `cargo test` with harness = false runs the binary through the runner, on the main thread.
cargo test --release --target $target --no-default-features --features std --test emulated 2>&1 | tee "$log"
grep -Eq "^[0-9]+ passed, 0 failed$" "$log" || { echo "emulated tests: no clean summary line" >&2; exit 1; }
grep -q "^ok   kernel/neon/gemm_matches_scalar$" "$log" || { echo "the NEON kernel checks did not run" >&2; exit 1; }
grep -q "^ok   neon/attention" "$log" || { echo "the NEON attention checks did not run" >&2; exit 1; }

echo "==> ensure_no_std for $target (bare, alloc)"
# The dev profile (panic = "abort" there too): what is checked is that nothing pulls in std.
cargo build --target $target --manifest-path ensure_no_std/Cargo.toml
cargo build --target $target --manifest-path ensure_no_std/Cargo.toml --features alloc

echo "==> clippy -D warnings for $target (Debian's rust-web-clippy)"
/usr/bin/cargo-clippy clippy --release --target $target --lib --no-default-features -- -D warnings
/usr/bin/cargo-clippy clippy --release --target $target --all-targets -- -D warnings
echo "aarch64: OK"
