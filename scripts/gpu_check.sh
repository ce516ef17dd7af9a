#!/usr/bin/env bash
# One-shot check of the GPU backends on a machine with an NVIDIA GPU, CUDA 13 (driver + NVRTC)
# and no Rust. Two modes (kernels/README.md, "Running on a GPU"):
#
#   scripts/gpu_check.sh build [CARRY]   here, with Rust: release binaries, test executables,
#                                        MNIST and the Vulkan loader .deb into CARRY
#                                        (default target/gpu-carry, ~40 MB)
#   scripts/gpu_check.sh run [CARRY]     there: runs everything from CARRY, writes $OUT
#
# `run` writes exactly two files into $OUT (default target/gpu-check-out): summary.txt (commit,
# GPU, NVRTC, driver, each step's status and time, the parity and bench headlines) and
# gpu-check.tar.gz (every log and JSON report). Steps, each under `timeout`, in order:
#   0. nvrtc:   NVRTC compiles every kernel (tests/cuda_kernels.rs; prints NVRTC's version)
#   1. parity:  tests/cuda_parity.rs --ignored, strict (HETENSOR_REQUIRE_CUDA=1)
#   2. bench:   hetensor bench --backend cuda (CKKS 2^13..2^16 batch 64, the dnum-3 max chain
#               at 2^16 with --trace, BFV 2^13/2^14), JSON
#   3. mnist:   hetensor mnist --backend cuda --data-dir CARRY/mnist, JSON
#   4. wgpu:    tests/wgpu_parity.rs (--include-ignored) and hetensor bench --backend wgpu on
#               Vulkan (the NVIDIA ICD when present)
# About 3-4 minutes on an H100/H200 (the timeouts add up to under 5). Without a CUDA driver
# library it stops after the preflight with a one-line reason (exit 1), in well under a second.
# Exit status: 0 when every step passed.
#
# Knobs: GPU_CHECK_QUICK=1 shrinks every size and multiplies the timeouts by 10: the libcuda
# shim (scripts/cuda_shim.sh, on LD_LIBRARY_PATH) then runs the whole script on the CPU, which
# is how `run` is tested without a GPU. HETENSOR_CUDA_DEVICE picks the device (default 0).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
CARRY="${2:-target/gpu-carry}"
FEATURES=wgpu,cuda,cuda-emu   # what scripts/test.sh builds, so the build reuses its artifacts

# Prints the executable of test target $1 (after building it).
test_exe() {
  cargo test --release --features "$FEATURES" --test "$1" --no-run --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1
}

if [ "$MODE" = build ]; then
  set -e
  rm -rf "$CARRY"
  mkdir -p "$CARRY/bin" "$CARRY/mnist" "$CARRY/debs"
  cargo build --release --features "$FEATURES" --bin hetensor
  cp target/release/hetensor "$CARRY/bin/"
  for t in cuda_kernels cuda_parity wgpu_parity; do
    exe="$(test_exe "$t")"
    [ -n "$exe" ] || { echo "no executable for test $t" >&2; exit 1; }
    cp "$exe" "$CARRY/bin/$t"
  done
  strip "$CARRY"/bin/* 2>/dev/null || true
  cp data/mnist/*.gz "$CARRY/mnist/"
  cp scripts/gpu_check.sh "$CARRY/"
  { git rev-parse HEAD; git status --porcelain --untracked-files=no | sed 's/^/dirty: /'; } \
    > "$CARRY/COMMIT"
  # The Vulkan loader, in case the GPU machine lacks it (unpacked there only if needed).
  (cd "$CARRY/debs" && apt-get download libvulkan1 >/dev/null 2>&1) ||
    echo "warning: apt-get download libvulkan1 failed; the wgpu step needs the machine's loader" >&2
  du -sh "$CARRY"
  ls -la "$CARRY" "$CARRY/bin"
  exit 0
fi

if [ "$MODE" != run ]; then
  echo "usage: scripts/gpu_check.sh build|run [CARRY]" >&2
  exit 2
fi

CARRY="$(cd "$CARRY" 2>/dev/null && pwd)" || { echo "no carry folder: run 'scripts/gpu_check.sh build' first" >&2; exit 2; }
OUT="${OUT:-target/gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$(mktemp -d)/gpu-check"
mkdir -p "$LOGS"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0
QUICK="${GPU_CHECK_QUICK:-0}"
SCALE=1
[ "$QUICK" = 1 ] && SCALE=10
say() { echo "$*" | tee -a "$SUMMARY"; }
finish() {
  tar -C "$(dirname "$LOGS")" -czf "$OUT/gpu-check.tar.gz" gpu-check
  say "result: $([ $status = 0 ] && echo PASS || echo FAIL) (logs and JSON: gpu-check.tar.gz)"
  exit $status
}
# Every step ends by the deadline (the whole run stays under 5 minutes on the GPU).
DEADLINE=$((SECONDS + 285 * SCALE))
# step NAME SECONDS LOG COMMAND...: runs the command under `timeout` (its own limit, cut to
# the time left), records rc and seconds; a step with under 5 s left is skipped (failed).
step() {
  local name=$1 limit=$(($2 * SCALE)) log=$3; shift 3
  local left=$((DEADLINE - SECONDS))
  [ $left -lt $limit ] && limit=$left
  if [ $limit -lt 5 ]; then
    printf '%-8s skipped: out of time  %s\n' "$name" "$log" | tee -a "$SUMMARY"
    status=1
    return 1
  fi
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$LOGS/$log" 2>&1
  local rc=$?
  local why=""
  [ $rc = 124 ] && why=" (timed out after ${limit}s)"
  printf '%-8s rc=%-3s %4ss  %s%s\n' "$name" "$rc" "$((SECONDS - t0))" "$log" "$why" | tee -a "$SUMMARY"
  [ $rc = 0 ] || status=1
  return $rc
}
# A library the dynamic loader finds (LD_LIBRARY_PATH, then the ld.so cache), or nothing.
find_lib() {
  local d
  IFS=: read -ra dirs <<< "${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do
    [ -n "$d" ] && [ -e "$d/$1" ] && { readlink -f "$d/$1"; return; }
  done
  ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }'
}

say "hetensor gpu_check $(date -u +%FT%TZ)$([ "$QUICK" = 1 ] && echo ' (GPU_CHECK_QUICK: small sizes)')"
say "commit: $(head -1 "$CARRY/COMMIT" 2>/dev/null || echo unknown)$(grep -q dirty "$CARRY/COMMIT" 2>/dev/null && echo ' (+ uncommitted changes)')"
{ nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } > "$LOGS/nvidia-smi.txt"
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
say "gpu: ${GPU:-none listed by nvidia-smi}"

# Preflight: the CUDA driver library and NVRTC (cudarc dlopens libcuda.so / libcuda.so.1 and
# libnvrtc.so.13 / libnvrtc.so by name).
CUDA_LIB="$(find_lib libcuda.so.1)"
[ -n "$CUDA_LIB" ] || CUDA_LIB="$(find_lib libcuda.so)"
NVRTC_LIB="$(find_lib libnvrtc.so.13)"
if [ -z "$NVRTC_LIB" ]; then
  for cand in /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda-13*/lib64/libnvrtc.so.13 \
              /usr/local/cuda/targets/*/lib/libnvrtc.so.13 \
              /usr/local/lib/python3*/dist-packages/nvidia/cu13/lib/libnvrtc.so.13; do
    if [ -e "$cand" ]; then NVRTC_LIB="$(readlink -f "$cand")"; break; fi
  done
  [ -n "$NVRTC_LIB" ] && export LD_LIBRARY_PATH="$(dirname "$NVRTC_LIB"):${LD_LIBRARY_PATH:-}"
fi
say "libcuda: ${CUDA_LIB:-not found}"
say "nvrtc: ${NVRTC_LIB:-not found}"
if [ -z "$CUDA_LIB" ] || [ -z "$NVRTC_LIB" ]; then
  say "FAIL: no $([ -z "$CUDA_LIB" ] && echo 'CUDA driver library (libcuda.so.1): not a GPU machine' || echo 'NVRTC 13 library (libnvrtc.so.13): install the CUDA 13 toolkit or pip nvidia-cuda-nvrtc')"
  status=1
  finish
fi

export HETENSOR_REQUIRE_CUDA=1 HETENSOR_MNIST_DIR="$CARRY/mnist"
export HETENSOR_CUDA_CACHE="$LOGS/kernel-cache" RUST_BACKTRACE=1
B="$CARRY/bin"

step nvrtc 60 nvrtc.log "$B/cuda_kernels" --nocapture --test-threads=1
say "  $(grep -m1 -o 'NVRTC ([0-9, ]*)' "$LOGS/nvrtc.log" || echo 'NVRTC version: see nvrtc.log')"

step parity 120 parity.log "$B/cuda_parity" --ignored --nocapture
grep -E '^test result|FAILED|panicked' "$LOGS/parity.log" | head -8 | sed 's/^/  /' | tee -a "$SUMMARY"

if [ "$QUICK" = 1 ]; then
  BENCH=(--log-n 13 --batch 2 --reps 1); MAXC=(--log-n 13 --batch 2 --reps 1); BFV=(--log-n 13 --reps 1)
  MNIST=(--limit 4 --batch 4)
else
  BENCH=(--log-n 13,14,15,16 --batch 64 --reps 10); MAXC=(--log-n 16 --batch 64 --reps 10)
  BFV=(--log-n 13,14 --reps 10); MNIST=(--limit 4096)
fi
step bench 60 bench-cuda-ckks.log "$B/hetensor" bench --backend cuda --scheme ckks "${BENCH[@]}" \
  --json --out "$LOGS/bench-cuda-ckks.json"
step bench 40 bench-cuda-max.log "$B/hetensor" bench --backend cuda --scheme ckks --max-chain \
  "${MAXC[@]}" --trace --json --out "$LOGS/bench-cuda-max.json"
step bench 30 bench-cuda-bfv.log "$B/hetensor" bench --backend cuda --scheme bfv "${BFV[@]}" \
  --json --out "$LOGS/bench-cuda-bfv.json"
step mnist 60 mnist-cuda.json "$B/hetensor" mnist --backend cuda "${MNIST[@]}" \
  --data-dir "$CARRY/mnist" --json
grep -oE '"(images_per_second|encrypted_accuracy|argmax_agreement)": ?[0-9.e+-]+' \
  "$LOGS/mnist-cuda.json" 2>/dev/null | sed 's/^/  /' | tee -a "$SUMMARY"

# wgpu on Vulkan: bring the loader if the machine has none, and prefer NVIDIA's ICD.
if [ -z "$(find_lib libvulkan.so.1)" ] && ls "$CARRY"/debs/*.deb >/dev/null 2>&1; then
  mkdir -p "$LOGS/vulkan"
  for f in "$CARRY"/debs/*.deb; do dpkg -x "$f" "$LOGS/vulkan"; done
  export LD_LIBRARY_PATH="$(dirname "$(find "$LOGS/vulkan" -name 'libvulkan.so.1' | head -1)"):$LD_LIBRARY_PATH"
fi
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
           /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
  [ -e "$icd" ] && { export VK_DRIVER_FILES="$icd"; break; }
done
say "vulkan: loader $(find_lib libvulkan.so.1 || true), ICD ${VK_DRIVER_FILES:-default}"
export WGPU_BACKEND=vulkan XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# On a GPU the LeNet-1 test too (#[ignore]d for its ~15 min on lavapipe).
WGPU_ALL=(--include-ignored); [ "$QUICK" = 1 ] && WGPU_ALL=()
step wgpu 60 wgpu-parity.log "$B/wgpu_parity" --nocapture "${WGPU_ALL[@]}"
say "  $(grep -m1 'wgpu adapter' "$LOGS/wgpu-parity.log" || echo 'wgpu adapter: see wgpu-parity.log')"
grep -E '^test result' "$LOGS/wgpu-parity.log" | sed 's/^/  /' | tee -a "$SUMMARY"
step wgpu 40 bench-wgpu-ckks.log "$B/hetensor" bench --backend wgpu --scheme ckks "${BENCH[@]}" \
  --json --out "$LOGS/bench-wgpu-ckks.json"
finish
