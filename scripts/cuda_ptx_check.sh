#!/usr/bin/env bash
# Proves the native CUDA compiler path without a GPU: runs cubecl-llvm's own offline tests
# (real `#[cube]` kernels lowered through pliron and the local LLVM's NVPTX backend to PTX,
# checked on the assembly: launch bounds, shuffles, bf16x2 FMAs on sm_80, WMMA tensor-core
# tiles, stmatrix on sm_90, ...) against the LLVM scripts/cuda_env.sh installs.
#   bash scripts/cuda_ptx_check.sh      # ~10 min on 2 cores, offline once the crates are fetched
# The crate is tested from a copy of its published source with Ember's Cargo.lock, so the
# versions are exactly the ones `--features cuda` builds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
source scripts/cuda_env.sh
cargo fetch --locked >/dev/null
version=$(awk '/^name = "cubecl-llvm"$/ {getline; gsub(/[^0-9.]/, ""); print}' Cargo.lock)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cubecl-llvm-"$version" | head -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/cubecl-llvm"
cp Cargo.lock "$work/cubecl-llvm/Cargo.lock"
cd "$work/cubecl-llvm"
echo "cubecl-llvm $version: offline NVPTX tests with $(~/.local/share/tracel/tracel-llvm-23.1.0-4/bin/llvm-config --version 2>/dev/null || echo '?')" >&2
cargo test --offline --features nvptx --lib -- nvptx::
