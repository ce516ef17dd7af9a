#!/usr/bin/env bash
# Builds the libcuda shim (kernels/host/libcuda_shim.cpp + the host emulator emu.cpp) into
# DIR (default target/cuda-shim) as libcuda.so.1 and libcuda.so, and prints DIR. With DIR first
# on LD_LIBRARY_PATH, cudarc loads it instead of an NVIDIA driver, and CudaBackend runs every
# kernel on the CPU (see kernels/README.md, "libcuda shim"). Needs a C++17 compiler; rebuilds
# only when a source is newer than the library.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-target/cuda-shim}"
LIB="$DIR/libcuda.so.1"
SRC=(kernels/host/libcuda_shim.cpp kernels/host/emu.cpp kernels/host/cuda_host.h
     kernels/common.cuh kernels/elementwise.cu kernels/ntt.cu kernels/rns.cu kernels/permute.cu
     kernels/keyswitch.cu
     scripts/cuda_shim.sh)
stale=0
[ -f "$LIB" ] || stale=1
for f in "${SRC[@]}"; do [ "$f" -nt "$LIB" ] && stale=1; done
if [ $stale = 1 ]; then
  mkdir -p "$DIR"
  # Only the cu* entry points are exported (version script); -Bsymbolic keeps the emulator's
  # own symbols bound inside the library.
  printf '{ global: cu*; local: *; };\n' > "$DIR/exports.map"
  ${CXX:-c++} -std=c++17 -O2 -fPIC -shared -fvisibility=hidden -Wall -Wno-unknown-pragmas \
    -Wno-unused-parameter -Wl,-Bsymbolic -Wl,-soname,libcuda.so.1 \
    -Wl,--version-script="$DIR/exports.map" \
    kernels/host/libcuda_shim.cpp kernels/host/emu.cpp -o "$LIB.tmp"
  mv "$LIB.tmp" "$LIB"
  ln -sf libcuda.so.1 "$DIR/libcuda.so"
fi
echo "$DIR"
