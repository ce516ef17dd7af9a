#!/usr/bin/env bash
# Peer benchmark driver: SEAL (tenseal.sealapi) vs OpenFHE (openfhe-python) vs hetensor.
#
#   scripts/peers/run_all.sh                 # log_n 13,14, two interleaved passes (A B A B)
#   LOG_N=13,14,15,16 scripts/peers/run_all.sh
#   REPS=10 PASSES=3 scripts/peers/run_all.sh
#
# Env knobs:
#   CONFIG     peer config file (default scripts/peers/configs.json; configs-precision.json runs
#              the issue-#14 precision side by side: per-config hetensor args, errors per op)
#   LOG_N      comma list of ring sizes to run (default 13,14; 15/16 take minutes per pass)
#   REPS       timed repetitions per op (default: per-config "reps" in configs.json)
#   PASSES     interleaved passes (default 2); the best median per (scheme, log_n, op) is kept
#   OUT_DIR    results directory (default bench-results; not committed)
#   HETENSOR   our binary (default target/release/hetensor); run only if it exists
#   HETENSOR_ARGS  extra args appended to `hetensor bench --json --out FILE`
#                  (default: --log-n $LOG_N --threads 1, matching the peers); configs with a
#                  "hetensor" entry instead run one bench each with those args and --threads 1
#   HETENSOR_EXTRA extra args for every per-config hetensor run of a CONFIG with "hetensor"
#                  entries, e.g. "--extra-special-primes 0" (key switching at SEAL's precision)
#   SKIP_SETUP=1   do not run setup.sh
#   NICE=-10   run every engine under `nice -n $NICE` (opt-in; a negative value needs root and
#              takes CPU from whatever else runs on the machine, e.g. concurrent cargo builds)
#
# Output: $OUT_DIR/raw/<stamp>/{seal,openfhe,hetensor}-<pass>.json (one file per run),
#         $OUT_DIR/{seal,openfhe,hetensor}.json (best-of), $OUT_DIR/peers.md (wall clock),
#         $OUT_DIR/peers-cpu.md (same table on thread CPU time; hetensor rows need cpu_* fields).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
HERE=scripts/peers
LOG_N="${LOG_N:-13,14}"
PASSES="${PASSES:-2}"
OUT_DIR="${OUT_DIR:-bench-results}"
HETENSOR="${HETENSOR:-target/release/hetensor}"
CONFIG="${CONFIG:-$HERE/configs.json}"
STAMP="$(date +%Y%m%d-%H%M%S)"
RAW="$OUT_DIR/raw/$STAMP"
mkdir -p "$RAW"

if [ "${SKIP_SETUP:-0}" != 1 ]; then
    "$HERE/setup.sh"
fi

run=()
if [ -n "${NICE:-}" ]; then run=(nice -n "$NICE"); fi
common=(--config "$CONFIG" --log-n "$LOG_N")
# "<id> <args>" per config that says how hetensor runs it; none: one run with HETENSOR_ARGS.
mapfile -t het_runs < <(python3 "$HERE/hetensor_runs.py" "$CONFIG" "$LOG_N")
het_threads=(--threads 1)
if [ "${#het_runs[@]}" = 0 ]; then
    het_runs=("all ${HETENSOR_ARGS---log-n $LOG_N --threads 1}")
    het_threads=()
fi
if [ -n "${REPS:-}" ]; then common+=(--reps "$REPS"); fi

echo "[run_all] log_n=$LOG_N passes=$PASSES raw=$RAW  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
start=$SECONDS
for pass in $(seq 1 "$PASSES"); do
    echo "[run_all] pass $pass: seal"
    "${run[@]}" venv-seal/bin/python "$HERE/bench_seal.py" "${common[@]}" --out "$RAW/seal-$pass.json"
    echo "[run_all] pass $pass: openfhe"
    OMP_NUM_THREADS=1 "${run[@]}" venv-openfhe/bin/python "$HERE/bench_openfhe.py" "${common[@]}" --out "$RAW/openfhe-$pass.json"
    if [ -x "$HETENSOR" ]; then
        echo "[run_all] pass $pass: hetensor"
        for line in "${het_runs[@]}"; do
            id="${line%% *}"
            out="$RAW/hetensor-$pass-$id.json"
            # shellcheck disable=SC2086
            if ! "${run[@]}" "$HETENSOR" bench --json --out "$out" ${line#* } ${HETENSOR_EXTRA:-} "${het_threads[@]}"; then
                echo "[run_all] WARNING: $HETENSOR bench ($id) failed (pass $pass); continuing without it" >&2
                rm -f "$out"
            fi
        done
    elif [ "$pass" = 1 ]; then
        echo "[run_all] $HETENSOR not found; peers only"
    fi
    echo "[run_all] pass $pass done at +$((SECONDS - start))s"
done

python3 "$HERE/merge.py" "$RAW"/*.json --out "$OUT_DIR/peers.md" --write-best "$OUT_DIR" >/dev/null
python3 "$HERE/merge.py" "$RAW"/*.json --metric cpu --out "$OUT_DIR/peers-cpu.md" >/dev/null
echo "[run_all] total $((SECONDS - start))s; wrote $OUT_DIR/peers.md and $OUT_DIR/peers-cpu.md"
