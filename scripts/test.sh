#!/usr/bin/env bash
# The whole test suite on every backend. Installs what the GPU tests need on a fresh machine:
#   - Mesa's lavapipe Vulkan driver, so the wgpu parity tests run on the CPU (Debian packages);
#   - the NVRTC library (pip wheel `nvidia-cuda-nvrtc`), so every CUDA kernel is compiled to PTX
#     even without a GPU (a kernel that does not compile fails the suite).
#   - (a C++17 compiler, for the `cuda-emu` feature: every CUDA kernel compiled as host C++ and
#     run against the CPU backend, tests/cuda_emulated.rs, and for the libcuda shim below)
# Then: cargo test --release --features wgpu,cuda,cuda-emu [extra cargo args].
# Nothing is counted as passed without running: the wgpu and NVRTC tests fail without lavapipe
# or NVRTC, and the CUDA device tests (tests/cuda_parity.rs) are #[ignore]d in that run and run
# afterwards with --ignored: under the libcuda shim always, on the GPU too when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "== installing Mesa lavapipe (mesa-vulkan-drivers) for the wgpu tests"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

NVRTC_VENV="target/nvrtc-venv"
nvrtc_lib() { ls "$NVRTC_VENV"/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13 2>/dev/null | head -1; }
if [ -z "$(nvrtc_lib)" ]; then
  echo "== installing NVRTC (pip nvidia-cuda-nvrtc) to compile the CUDA kernels"
  python3 -m venv "$NVRTC_VENV"
  "$NVRTC_VENV/bin/pip" install -q --disable-pip-version-check 'nvidia-cuda-nvrtc>=13,<14'
fi
LIB="$(nvrtc_lib)"
if [ -z "$LIB" ]; then echo "NVRTC install failed: no libnvrtc.so.13 under $NVRTC_VENV" >&2; exit 1; fi
export LD_LIBRARY_PATH="$(dirname "$LIB"):${LD_LIBRARY_PATH:-}"

export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"          # fail loudly if lavapipe is missing
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
FEATURES=wgpu,cuda,cuda-emu
cargo test --release --features "$FEATURES" "$@"

# The CUDA device tests (tests/cuda_parity.rs, #[ignore]d by default) in strict mode
# (HETENSOR_REQUIRE_CUDA=1: no device or a failing backend fails them):
#   - on a real GPU when `nvidia-smi -L` lists one;
#   - always under the libcuda shim (scripts/cuda_shim.sh: the kernels run on the CPU), so the
#     backend's host code runs against the CPU backend in CI. NVRTC compiles the kernels anew
#     (no kernel cache). About 4-5 minutes on 2 cores, most of it the LeNet-1 test.
if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "== CUDA device tests on the GPU (tests/cuda_parity.rs --ignored)"
  HETENSOR_REQUIRE_CUDA=1 cargo test --release --features "$FEATURES" --test cuda_parity -- --ignored
fi
echo "== CUDA device tests under the libcuda shim (tests/cuda_parity.rs --ignored)"
SHIM="$(scripts/cuda_shim.sh)"
HETENSOR_REQUIRE_CUDA=1 HETENSOR_CUDA_CACHE=off LD_LIBRARY_PATH="$PWD/$SHIM:$LD_LIBRARY_PATH" \
  cargo test --release --features "$FEATURES" --test cuda_parity -- --ignored
