#!/usr/bin/env bash
# Runs prebuilt CUDA binaries on a GPU machine that has no Rust toolchain, and writes the
# results under $OUT (default bench-results/gpu). Build them first on a machine with Rust
# (see kernels/README.md, "Running on a GPU"):
#
#   scripts/gpu_bench.sh --build        # here: builds and copies the binaries into .gpu-bin/
#   scripts/gpu_bench.sh [BIN_DIR]      # there: runs them (BIN_DIR defaults to .gpu-bin)
#
# What it runs: the NVRTC kernel-compile test, the CUDA-vs-CPU parity tests (every backend op
# and CKKS/BFV/LeNet-1 at scheme level, exact word comparison), and `hetensor bench` on the
# cuda and cpu backends. Each step's exit status is recorded in $OUT/summary.txt; the script
# exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build" ]; then
  set -e
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
  mkdir -p .gpu-bin
  cargo build --release --features cuda --bin hetensor
  cp "$CARGO_TARGET_DIR/release/hetensor" .gpu-bin/hetensor
  for t in cuda_kernels cuda_parity; do
    exe=$(cargo test --release --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    cp "$exe" ".gpu-bin/$t"
  done
  strip .gpu-bin/* 2>/dev/null || true
  grep -qx '/.gpu-bin/' .git/info/exclude 2>/dev/null || echo '/.gpu-bin/' >> .git/info/exclude
  ls -la .gpu-bin
  exit 0
fi

BIN="${1:-.gpu-bin}"
OUT="${OUT:-bench-results/gpu}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0

# NVRTC: cudarc dlopens libnvrtc.so.13 (or .so); find one if the loader does not.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  lib=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[3-9]* /usr/local/cuda/targets/*/lib/libnvrtc.so.1[3-9]* \
        2>/dev/null | head -1)
  if [ -z "$lib" ]; then
    lib=$(find / -xdev -name 'libnvrtc.so.1[3-9]*' -not -name '*builtins*' 2>/dev/null | sort | head -1)
  fi
  if [ -n "$lib" ]; then
    export LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
    echo "NVRTC: $lib" | tee -a "$SUMMARY"
  else
    echo "NVRTC: not found (the CUDA backend will report it unavailable)" | tee -a "$SUMMARY"
  fi
fi
export HETENSOR_CUDA_CACHE="$OUT/kernel-cache"

{ nvidia-smi || echo "nvidia-smi failed"; } > "$OUT/nvidia-smi.txt" 2>&1
grep -m1 -E 'H100|H200|A100|NVIDIA' "$OUT/nvidia-smi.txt" | tee -a "$SUMMARY" || true

step() { # name, log file, command...
  local name=$1 log=$2; shift 2
  local t0=$(date +%s.%N)
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local dt=$(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo "?")
  printf '%-28s rc=%d  %ss  (%s)\n' "$name" "$rc" "$dt" "$log" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || status=1
}

step "kernel compile (NVRTC)" kernels.log "$BIN/cuda_kernels" --nocapture
step "parity cuda vs cpu" parity.log "$BIN/cuda_parity" --ignored --nocapture --test-threads=1
grep -E '^test |no CUDA device|LeNet|test result' "$OUT/parity.log" | tee -a "$SUMMARY"
# CKKS at N = 2^13..2^16 (peer-depth chains, dnum = levels + 1, and the dnum-3 max chain),
# batch 1 and 64; BFV presets at 2^13, 2^14. JSON for merging, Markdown for reading.
for be in cuda cpu; do
  if [ $be = cuda ]; then extra="--reps 10"; else extra="--reps 3 --threads 16"; fi
  step "bench $be ckks" bench-$be-ckks.log "$BIN/hetensor" bench --backend $be --scheme ckks \
    --log-n 13,14,15,16 --batch 64 $extra --json --out "$OUT/bench-$be-ckks.json"
  step "bench $be ckks max chain" bench-$be-max.log "$BIN/hetensor" bench --backend $be \
    --scheme ckks --max-chain --log-n 14,15 --batch 64 $extra --out "$OUT/bench-$be-max.md"
  step "bench $be bfv" bench-$be-bfv.log "$BIN/hetensor" bench --backend $be --scheme bfv \
    --log-n 13,14 $extra --out "$OUT/bench-$be-bfv.md"
done
step "mnist cuda (4096 images)" mnist-cuda.log "$BIN/hetensor" mnist --backend cuda --limit 4096
exit $status
