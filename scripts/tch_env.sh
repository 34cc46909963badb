# Source this to build or run Ember's `tch` backend (LibTorch through burn-tch 0.22):
#   source scripts/tch_env.sh && cargo build --release --features tch
# It points the build (LIBTORCH_USE_PYTORCH: torch-sys compiles its C++ shim against that
# PyTorch's headers and links its libraries) and the loader at one PyTorch:
# - default: PyTorch 2.9.0, the version tch 0.22 was written for, in the reference
#   environment (scripts/setup_python.sh creates it once);
# - EMBER_TORCH=<version> (e.g. 2.11.0): a venv holding only torch==<version>, created once
#   under ~/.cache/ember/torch-<version> (PyPI: CUDA wheels, ~4.5 GB);
# - EMBER_TORCH_PYTHON=<python>: the PyTorch of that interpreter (e.g. a GPU machine's).
# A binary must run on the libtorch it was built against: a 2.9 build on 2.11 libraries fails
# at its first tensor copy with "Cannot access data pointer of Tensor that doesn't have storage"
# (the C++ shim inlines TensorImpl's layout). So for the GPU machines (PyTorch 2.11 at
# /opt/torch/.venv) build with EMBER_TORCH=2.11.0. Versions other than 2.9.0 set
# LIBTORCH_BYPASS_VERSION_CHECK (torch-sys otherwise refuses them); tch's API is unchanged up
# to 2.11, and tests/it/backends.rs checks the result against the CPU backend.
_ember_dir=$(dirname "${BASH_SOURCE[0]}")
if [[ -n ${EMBER_TORCH_PYTHON:-} ]]; then
  _ember_py=$EMBER_TORCH_PYTHON
elif [[ -n ${EMBER_TORCH:-} && ${EMBER_TORCH} != 2.9.0 ]]; then
  _ember_venv=$HOME/.cache/ember/torch-$EMBER_TORCH
  if ! "$_ember_venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "installing torch==$EMBER_TORCH into $_ember_venv for the tch backend (~4.5 GB, a few minutes)" >&2
    python3 -m venv "$_ember_venv"
    "$_ember_venv/bin/pip" install --quiet --disable-pip-version-check "torch==$EMBER_TORCH" numpy setuptools >&2
  fi
  _ember_py=$_ember_venv/bin/python
else
  _ember_py=$(bash "$_ember_dir/setup_python.sh" | tail -n 1)
fi
_ember_torch=$("$_ember_py" -c 'import os, torch; print(torch.__version__.split("+")[0], os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) ||
  { echo "error: $_ember_py has no torch" >&2; return 1 2>/dev/null || exit 1; }
read -r _ember_torch_version _ember_torch_lib <<< "$_ember_torch"
if [[ $_ember_torch_version != 2.9.0 ]]; then
  export LIBTORCH_BYPASS_VERSION_CHECK=1
else
  unset LIBTORCH_BYPASS_VERSION_CHECK
fi
export LIBTORCH_USE_PYTORCH=1
export PATH="$(dirname "$_ember_py"):$PATH"
export LD_LIBRARY_PATH="$_ember_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "tch backend: PyTorch $_ember_torch_version ($_ember_torch_lib)" >&2
unset _ember_dir _ember_py _ember_venv _ember_torch _ember_torch_version _ember_torch_lib
