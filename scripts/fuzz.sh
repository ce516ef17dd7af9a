#!/usr/bin/env bash
# Fuzzes the decoders and the worker's frame parser with libFuzzer for SECONDS each (default 300).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: decode worker (default: both)
# Uses `cargo fuzz` when it is installed; otherwise builds the same targets with a nightly
# toolchain and the flags cargo-fuzz passes (sanitizer coverage + AddressSanitizer).
# Findings go to fuzz/artifacts/, the growing corpus to fuzz/corpus/<target>/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-300}"
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then targets=("$@"); else targets=(decode worker); fi
mkdir -p artifacts
if cargo fuzz --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
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
  mkdir -p "corpus/$t"
  "target/$triple/release/$t" -max_total_time="$secs" -rss_limit_mb=2048 \
    -artifact_prefix=artifacts/ "corpus/$t"
done
