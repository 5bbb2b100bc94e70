#!/usr/bin/env bash
# The real OpenAI-compatible server the endpoint tests start on 127.0.0.1: llama.cpp's, through
# llama-cpp-python[server] (requirements-server.txt). PyPI ships only its sdist, so llama.cpp is built
# once per machine (5-10 min on 2 cores) and the wheel kept outside the checkout; later installs take
# seconds. It is built portable (AVX2): a native build (GGML_NATIVE) on an AMX/AVX-512 machine segfaults
# on batched prompt decode, and pip's own wheel cache could hand back such a build.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
WHEELS="${PERSYN_WHEEL_CACHE:-$HOME/.cache/persyn_hub/wheels}/llama-cpp-avx2"
if ! ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  echo "building llama-cpp-python $VERSION once (5-10 min) into $WHEELS" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    python -m pip wheel --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$VERSION"
fi
python -m pip install --quiet --no-deps "$WHEELS"/llama_cpp_python-$VERSION-*.whl
python -m pip install --quiet -r requirements-server.txt  # the [server] extra's dependencies
