#!/usr/bin/env bash
# Create (once) the Python environment used by reference tests and benchmarks:
# torch 2.9.0 (the version burn-tch 0.22 links against), transformers, safetensors, numpy, pyarrow.
# Location: $EMBER_VENV, default ~/.cache/ember/venv (outside the clone, reused across runs).
# Prints the path of its python on the last line.
set -euo pipefail
VENV=${EMBER_VENV:-$HOME/.cache/ember/venv}
PKGS=(torch==2.9.0 "transformers>=4.56" safetensors numpy pyarrow gguf)
if ! "$VENV/bin/python" -c "import torch, transformers, safetensors, numpy, pyarrow, gguf" 2>/dev/null; then
  echo "setting up Python reference environment in $VENV (~3 GB download, a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}" >&2
fi
echo "$VENV/bin/python"
