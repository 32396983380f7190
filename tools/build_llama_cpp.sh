#!/usr/bin/env bash
# Builds llama-cpp-python (the binding plus libllama/libggml) once per machine from the pinned PyPI
# sdist and installs the wheel into the given Python. Why a script: llama.cpp has no wheel on PyPI
# and no Debian package, and its default `-march=native` build compiles AMX kernels that some VMs
# forbid (every quantized GGUF then dies with SIGILL). So native is off, AMX is off, and the SIMD
# levels this CPU reports are switched on one by one. The wheel is cached under a key made of the
# version and those flags, so a machine with another CPU builds its own; a build takes about 5
# minutes on 2 cores (tools and examples off) and is reused afterwards.
set -euo pipefail
PYTHON="${1:-.venv/bin/python}"
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
CACHE="${COMPRESS_CACHE_DIR:-$HOME/.cache/compress}/llama-cpp"

has() { grep -qw "$1" /proc/cpuinfo 2>/dev/null; }
flags="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
flags+=" -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
flags+=" -DLLAMA_BUILD_SERVER=OFF"
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512vbmi:AVX512_VBMI \
            avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
  if has "${pair%%:*}"; then flags+=" -DGGML_${pair#*:}=ON"; else flags+=" -DGGML_${pair#*:}=OFF"; fi
done
key="$VERSION-$(printf '%s' "$flags" | sha256sum | cut -c1-12)"
dest="$CACHE/$key"
if ! compgen -G "$dest/llama_cpp_python-*.whl" >/dev/null; then
  mkdir -p "$CACHE/src"
  sdist="$CACHE/src/llama_cpp_python-$VERSION.tar.gz"
  [ -f "$sdist" ] || "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$CACHE/src"
  echo "building llama-cpp-python $VERSION ($key): about 5 minutes on 2 cores, cached afterwards" >&2
  echo "  CMAKE_ARGS=$flags" >&2
  tmp="$(mktemp -d "$CACHE/build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT  # a failed or interrupted build leaves nothing half-made in the cache
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PYTHON" -m pip wheel --quiet --no-deps --no-cache-dir "$sdist" -w "$tmp"
  printf '%s\n' "$flags" >"$tmp/CMAKE_ARGS"
  rm -rf "$dest" && mv "$tmp" "$dest"
fi
# With its dependencies (numpy, jinja2, diskcache, typing-extensions) from the package index.
"$PYTHON" -m pip install --quiet --disable-pip-version-check "$dest"/llama_cpp_python-*.whl
