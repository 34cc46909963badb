#!/usr/bin/env bash
# Build llama.cpp (the copy vendored in the llama-cpp-python sdist, or any checkout given as $1)
# and tests/llamacpp/top5.cpp against it, for tests/python/check_llamacpp.py.
#   bash scripts/build_llamacpp_top5.sh path/to/llama.cpp [build-dir]
# Needs cmake and a C++17 compiler (pip install cmake gives cmake).
set -euo pipefail
SRC=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
BUILD=${2:-build/llamacpp}
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF >/dev/null
cmake --build "$BUILD" --target llama -j "$(nproc)" >/dev/null
LIBS=$(find "$BUILD" -name '*.a' | sort -r)
c++ -std=c++17 -O2 -I"$SRC/include" -I"$SRC/ggml/include" tests/llamacpp/top5.cpp \
  -Wl,--start-group $LIBS -Wl,--end-group -lpthread -lgomp -ldl -o "$BUILD/top5"
echo "$BUILD/top5"
