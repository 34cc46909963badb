#!/usr/bin/env bash
# The test command: sets up the Python reference environment (torch + transformers, once),
# then runs every Rust test. Reuses a cargo target directory outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cargo_env.sh
EMBER_PYTHON=$(bash scripts/setup_python.sh | tail -n 1)
export EMBER_PYTHON
echo "cargo target: $CARGO_TARGET_DIR; reference python: $EMBER_PYTHON" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line over all test binaries (cargo prints one per binary).
awk '/^test result:/ {p += $4; f += $6; s += $8} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, s}' "$log"
exit "$status"
