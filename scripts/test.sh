#!/usr/bin/env bash
# The test command: sets up the Python reference environment (torch 2.9.0 + transformers,
# once), the Mesa software Vulkan driver for the WGPU tests, openssl for the TLS test and
# OpenBLAS for the teacher's CPU matmuls and Debian's static LLVM 22 for the native CUDA
# compiler (apt, when missing and root), then runs every Rust test with the wgpu, tch and
# cuda backends compiled in (cuda is built and linked, and refused cleanly without a driver).
# EMBER_FEATURES overrides the backend features (e.g. EMBER_FEATURES= for the lean build).
# Reuses a cargo target directory outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
FEATURES=${EMBER_FEATURES-wgpu,tch,cuda}
EMBER_PYTHON=$(bash scripts/setup_python.sh | tail -n 1)
export EMBER_PYTHON
if [[ ,$FEATURES, == *,tch,* ]]; then
  source scripts/tch_env.sh
fi
if [[ ,$FEATURES, == *,cuda,* ]]; then
  source scripts/cuda_env.sh
fi
if [[ ,$FEATURES, == *,wgpu,* ]] && ! ls /usr/share/vulkan/icd.d/lvp_icd*.json /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  SUDO=""
  [[ $(id -u) != 0 ]] && sudo -n true 2>/dev/null && SUDO="sudo -n"
  if { [[ $(id -u) == 0 ]] || [[ -n $SUDO ]]; } && command -v apt-get >/dev/null; then
    echo "installing the Mesa software Vulkan driver for the WGPU tests" >&2
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1) >&2
  else
    echo "warning: no Vulkan driver; the WGPU test will fail (apt-get install mesa-vulkan-drivers libvulkan1)" >&2
  fi
fi
# the https remote-teacher test makes its certificates with openssl
if ! command -v openssl >/dev/null; then
  SUDO=""
  [[ $(id -u) != 0 ]] && sudo -n true 2>/dev/null && SUDO="sudo -n"
  echo "installing openssl for the TLS test" >&2
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssl) >&2 || echo "warning: no openssl; the https test will fail" >&2
fi
# the teacher's CPU matmuls use OpenBLAS when it is installed; the tests check both paths
if ! ldconfig -p 2>/dev/null | grep -q "libopenblas.so.0"; then
  SUDO=""
  [[ $(id -u) != 0 ]] && sudo -n true 2>/dev/null && SUDO="sudo -n"
  echo "installing OpenBLAS for the teacher's CPU matmuls" >&2
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libopenblas0-pthread) >&2 || echo "warning: no OpenBLAS; the OpenBLAS test will fail" >&2
fi
# Mesa's Vulkan loader wants a runtime dir (else a harmless "XDG_RUNTIME_DIR is invalid" per test)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
echo "cargo target: $CARGO_TARGET_DIR; features: ${FEATURES:-none}; reference python: $EMBER_PYTHON" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The llama.cpp check needs a llama.cpp build (scripts/build_llamacpp_top5.sh, cmake): opt in with
# EMBER_LLAMACPP_TOP5=<top5 binary>, which runs the ignored tests too.
EXTRA=()
[[ -n ${EMBER_LLAMACPP_TOP5:-} ]] && EXTRA=(-- --include-ignored)
cargo test --workspace --locked ${FEATURES:+--features "$FEATURES"} "$@" "${EXTRA[@]}" 2>&1 | tee "$log" || status=$?
# One closing line over all test binaries (cargo prints one per binary).
awk '/^test result:/ {p += $4; f += $6; s += $8} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, s}' "$log"
exit "$status"
