#!/usr/bin/env bash
# Fuzzes the decoders, the worker's frame parser, the IDX, safetensors and ONNX loaders with
# libFuzzer, under a memory cap.
#   scripts/fuzz.sh [SECONDS | -runs=N] [TARGET...]
#     SECONDS    run each target for this long (default 300)
#     -runs=N    run each target on N inputs instead (e.g. -runs=1000000)
#     TARGET     decode worker idx safetensors onnx (default: all five)
# Every run passes -rss_limit_mb=2048 -malloc_limit_mb=1024: a process above 2 GiB resident,
# or a single allocation above 1 GiB, is a finding (the decoders bound what they allocate).
# Extra libFuzzer flags: FUZZ_FLAGS="-jobs=2 -workers=2" scripts/fuzz.sh ...
# Uses `cargo fuzz` when it is installed; otherwise builds the same targets with a nightly
# toolchain and the flags cargo-fuzz passes (sanitizer coverage + AddressSanitizer).
# Findings go to fuzz/artifacts/<target>/, the growing corpus to fuzz/corpus/<target>/ (both
# ignored by git); empty corpora are seeded (the bundled weights, an IDX label file, a
# STORE / JOB / DROP / QUIT sequence for the worker).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
limit=(-max_total_time=300)
if [ $# -gt 0 ]; then
  case "$1" in
    -runs=*) limit=("$1") ;;
    *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS | -runs=N] [TARGET...]" >&2; exit 2 ;;
    *) limit=(-max_total_time="$1") ;;
  esac
  shift
fi
if [ $# -gt 0 ]; then targets=("$@"); else targets=(decode worker idx safetensors onnx npy); fi
caps=(-rss_limit_mb=2048 -malloc_limit_mb=1024)
# shellcheck disable=SC2206
extra=(${FUZZ_FLAGS:-})
# Per-target flags. `worker`: serve_with reads its input on a thread of its own (pipes have no
# read timeout), which may still be running its thread-local destructors when libFuzzer checks
# the input for leaks; LeakSanitizer then reports that thread's TLS (std's channel context, 112
# bytes) as leaked. So leak detection is off for that target only; ASan and the caps stay on.
target_flags() { if [ "$1" = worker ]; then echo -detect_leaks=0; fi; }

seed() {
  local t="$1"
  mkdir -p "corpus/$t" "artifacts/$t"
  [ -n "$(ls -A "corpus/$t")" ] && return 0
  case "$t" in
    safetensors) cp "$root/data/lenet1.safetensors" "corpus/$t/lenet1" ;;
    onnx) cp "$root"/tests/data/onnx/*.onnx "corpus/$t/" ;;
    npy) command -v python3 >/dev/null && python3 - "corpus/$t/f8-2x3" <<'PY'
import struct, sys
header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"
header += " " * (63 - (10 + len(header)) % 64) + "\n"
open(sys.argv[1], 'wb').write(b"\x93NUMPY\x01\x00" + struct.pack('<H', len(header))
                              + header.encode() + struct.pack('<6d', *range(6)))
PY
    ;;
    idx) { printf '\0'; cat "$root/data/mnist/t10k-labels-idx1-ubyte.gz"; } >"corpus/$t/labels-gz"
         { printf '\1'; gzip -dc "$root/data/mnist/t10k-labels-idx1-ubyte.gz" | head -c 64; } >"corpus/$t/labels-head" ;;
    worker) command -v python3 >/dev/null && python3 - "corpus/$t/store-job-drop" <<'PY'
import struct, sys
def frame(tag, payload):
    return bytes([tag]) + struct.pack('<Q', len(payload)) + payload
task = b'{"ColumnSums":{"layout":{"block":2,"slots":512}}}'
job = struct.pack('<I', len(task)) + task + struct.pack('<III', 0, 1, 1)
open(sys.argv[1], 'wb').write(
    frame(6, struct.pack('<II', 1, 0)) + frame(2, job) + frame(8, struct.pack('<I', 1))
    + frame(5, b''))
PY
    ;;
  esac
}

if cargo fuzz --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    seed "$t"
    cargo fuzz run "$t" "corpus/$t" -- "${limit[@]}" "${caps[@]}" \
      -artifact_prefix="artifacts/$t/" $(target_flags "$t") "${extra[@]}"
  done
  exit 0
fi
triple="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks" \
  cargo +nightly build --release --target "$triple" --bins
for t in "${targets[@]}"; do
  seed "$t"
  "target/$triple/release/$t" "${limit[@]}" "${caps[@]}" \
    -artifact_prefix="artifacts/$t/" $(target_flags "$t") "${extra[@]}" "corpus/$t"
done
