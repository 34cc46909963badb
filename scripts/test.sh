#!/usr/bin/env bash
# The test command: sets up the Python reference environment (torch + transformers, once),
# then runs every Rust test. Reuses a cargo target directory outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
  for d in /work/target "$HOME/.cache/ember/target"; do
    if [[ -d $d && -w $d ]]; then export CARGO_TARGET_DIR=$d; break; fi
  done
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ember/target}
fi
EMBER_PYTHON=$(bash scripts/setup_python.sh | tail -n 1)
export EMBER_PYTHON
echo "cargo target: $CARGO_TARGET_DIR; reference python: $EMBER_PYTHON" >&2
cargo test --workspace --locked "$@"
