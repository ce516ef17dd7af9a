#!/usr/bin/env bash
# The whole test suite on every backend. Installs what the GPU tests need on a fresh machine:
#   - Mesa's lavapipe Vulkan driver, so the wgpu parity tests run on the CPU (Debian packages);
#   - the NVRTC library (pip wheel `nvidia-cuda-nvrtc`), so every CUDA kernel is compiled to PTX
#     even without a GPU (a kernel that does not compile fails the suite).
#   - (a C++17 compiler, for the `cuda-emu` feature: every CUDA kernel compiled as host C++ and
#     run against the CPU backend, tests/cuda_emulated.rs)
# Then: cargo test --release --features wgpu,cuda,cuda-emu [extra cargo args].
# Nothing is counted as passed without running: the wgpu and NVRTC tests fail without lavapipe
# or NVRTC, and the CUDA device tests (tests/cuda_parity.rs) are #[ignore]d, reported as
# ignored, and run here too when `nvidia-smi -L` lists a GPU or HETENSOR_REQUIRE_CUDA=1 (then a
# missing device fails them).
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
if [ "${HETENSOR_REQUIRE_CUDA:-0}" = 1 ] || nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "== CUDA device tests (tests/cuda_parity.rs, ignored by default)"
  cargo test --release --features "$FEATURES" --test cuda_parity -- --ignored
else
  echo "== no CUDA device (nvidia-smi -L lists none): tests/cuda_parity.rs stays ignored"
fi
