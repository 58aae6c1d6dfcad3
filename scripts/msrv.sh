#!/usr/bin/env bash
# Checks that the crate builds with its declared minimum Rust (Cargo.toml's rust-version) using
# Debian bookworm's rustc-web of that version, unpacked into .cache/msrv/ (nothing is installed
# system-wide, so Debian's newer rustc-web for the aarch64 recipe can coexist). Needs apt-get with
# Debian's archive reachable (run as root: `apt-get update` refreshes the package lists).
#
# Checked: the library with every feature but `cuda`, its tests, examples and benches, and the
# no_std and alloc-only builds. The `cuda` feature needs Rust 1.88 (cudarc 0.19 depends on
# libloading 0.9, whose rust-version is 1.88); the README says so.
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
deb_version="${msrv}.0+dfsg3-1~deb12u3" # bookworm's rustc-web for 1.85
llvm_package=libllvm19
dir="$PWD/.cache/msrv"
root="$dir/root"

if [ ! -x "$root/usr/bin/rustc" ]; then
    mkdir -p "$dir/debs"
    apt-get update -qq
    (cd "$dir/debs" && apt-get download -q "rustc-web=$deb_version" "libstd-rust-web-$msrv=$deb_version" \
        "libstd-rust-web-dev=$deb_version" "$llvm_package" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
    for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$root"; done
fi
export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/llvm-19/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTC="$root/usr/bin/rustc" CARGO_TARGET_DIR="$dir/target"
"$RUSTC" --version
"$RUSTC" --version | grep -q "^rustc $msrv\." || { echo "expected rustc $msrv" >&2; exit 1; }

cargo check -p gated-attention --all-targets --features ndarray
cargo check -p gated-attention --lib --no-default-features
cargo check -p gated-attention --lib --no-default-features --features alloc
echo "rust-version $msrv: OK (every feature but cuda)"
