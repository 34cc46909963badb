# Source this to build or run Ember's `tch` backend (LibTorch through burn-tch 0.22, which
# links PyTorch 2.9.0): creates the Python environment once (scripts/setup_python.sh, pip
# torch==2.9.0) and points the build (LIBTORCH_USE_PYTORCH) and the loader at its libtorch.
#   source scripts/tch_env.sh && cargo build --release --features tch
_ember_py=$(bash "$(dirname "${BASH_SOURCE[0]}")/setup_python.sh" | tail -n 1)
export LIBTORCH_USE_PYTORCH=1
export PATH="$(dirname "$_ember_py"):$PATH"
_ember_torch_lib=$("$_ember_py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$_ember_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _ember_py _ember_torch_lib
