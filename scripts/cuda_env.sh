# Source this to build Ember's native CUDA backend (`--features cuda`, CubeCL) offline:
#   source scripts/cuda_env.sh && cargo build --release --features cuda
#
# cubecl-cuda always pulls in cubecl-llvm (its NVPTX compiler), whose build-dependency
# tracel-llvm-bundler downloads a prebuilt LLVM 23 in its build.rs unless the sentinel
# `.tracel-llvm-installed` exists in its install prefix
# (`${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-23.1.0-4`); cubecl-llvm then only runs
# `<prefix>/bin/llvm-config --link-static ...`. This script gives it Debian's static LLVM 22
# (llvm-22-dev, bookworm-security, NVPTX built in) instead: it installs the package when
# missing (apt, as root or with passwordless sudo), writes an llvm-config wrapper into that
# prefix and the sentinel. Nothing is downloaded from GitHub.
#
# The wrapper exists because Debian's `llvm-config --system-libs` names libz3 by absolute path
# (`/usr/lib/x86_64-linux-gnu/libz3.so`), which the bundler turns into `-llibz3`; the wrapper
# prints `-lz3` instead. No CUDA toolkit is needed to build: cudarc loads the driver, NVRTC and
# NVML at run time, so the binary starts everywhere and `--backend cuda` needs an NVIDIA driver.
_ember_llvm=${EMBER_LLVM_PREFIX:-/usr/lib/llvm-22}
if [[ ! -x $_ember_llvm/bin/llvm-config ]] || [[ ! -e /usr/include/zstd.h ]] || [[ ! -e $_ember_llvm/lib/libPolly.a ]]; then
  _ember_sudo=""
  [[ $(id -u) != 0 ]] && sudo -n true 2>/dev/null && _ember_sudo="sudo -n"
  if { [[ $(id -u) == 0 ]] || [[ -n $_ember_sudo ]]; } && command -v apt-get >/dev/null; then
    echo "installing Debian's static LLVM 22 (llvm-22-dev, libpolly-22-dev) and libzstd-dev for the cuda feature" >&2
    ($_ember_sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $_ember_sudo apt-get install -y -qq --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev) >&2
  else
    echo "error: the cuda feature needs a static LLVM with NVPTX: apt-get install llvm-22-dev libpolly-22-dev libzstd-dev (or set EMBER_LLVM_PREFIX)" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
if ! "$_ember_llvm/bin/llvm-config" --targets-built | grep -qw NVPTX; then
  echo "error: $_ember_llvm has no NVPTX target (llvm-config --targets-built)" >&2
  return 1 2>/dev/null || exit 1
fi
_ember_prefix=${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4
mkdir -p "$_ember_prefix/bin"
cat > "$_ember_prefix/bin/llvm-config.tmp" <<EOF
#!/bin/sh
# Written by Ember's scripts/cuda_env.sh: Debian's LLVM ($_ember_llvm) for cubecl-llvm.
# Shared libraries given by absolute path become -l flags (the bundler reads bare names).
"$_ember_llvm/bin/llvm-config" "\$@" | sed -E 's#(^| )/[^ ]*/lib([A-Za-z0-9_+-]+)\.so[.0-9]*#\1-l\2#g'
EOF
chmod +x "$_ember_prefix/bin/llvm-config.tmp"
echo "$_ember_llvm $("$_ember_llvm/bin/llvm-config" --version)" > "$_ember_prefix/.tracel-llvm-installed.tmp"
# Replace the files only when they change: the bundler's build script reruns when the sentinel's
# mtime changes, and with it cubecl-llvm and every burn crate above it (~9 minutes here).
for _ember_f in bin/llvm-config .tracel-llvm-installed; do
  if cmp -s "$_ember_prefix/$_ember_f.tmp" "$_ember_prefix/$_ember_f"; then
    rm "$_ember_prefix/$_ember_f.tmp"
  else
    mv "$_ember_prefix/$_ember_f.tmp" "$_ember_prefix/$_ember_f"
  fi
done
unset _ember_llvm _ember_prefix _ember_sudo _ember_f
