"""Shared helpers for the peer benchmark harness (stdlib only: imported by both
the SEAL venv (Python 3.11) and the OpenFHE venv (Python 3.10)).

Result schema (one JSON file per engine run):

    {"engine": "seal" | "openfhe" | "hetensor",
     "version": "...",
     "machine": "<uname> | <lscpu model name> | <n> cpus",
     "results": [{"config": id, "scheme": "ckks" | "bfv", "log_n": 13,
                  "limbs": 4, "log_qp": 200, "op": "mul_relin_rescale",
                  "median_us": 0.0, "min_us": 0.0, "max_us": 0.0, "reps": 20,
                  ... optional extra keys (cpu_median_us/cpu_min_us/cpu_max_us = thread
                  CPU time, n, log_q, special_primes, dnum, ...)}],
     "notes": ["..."],
     ... optional extra keys (checks, loadavg, started_at, ...)}

Op names: encrypt, decrypt, add, mul_relin, mul_relin_rescale, rescale,
rotate, key_switch, ntt_limb.
"""

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

OPS = ("encrypt", "decrypt", "add", "mul_relin", "mul_relin_rescale",
       "rescale", "rotate", "key_switch", "ntt_limb")

DEFAULT_WARMUP = 3


def parse_args(engine):
    ap = argparse.ArgumentParser(description=f"{engine} peer benchmark (single-threaded)")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "configs.json"))
    ap.add_argument("--out", required=True, help="output JSON file")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed repetitions per op (default: per-config 'reps' in configs.json)")
    ap.add_argument("--warmup", type=int, default=None,
                    help=f"untimed calls before timing each op (default: per-config 'warmup', else {DEFAULT_WARMUP})")
    ap.add_argument("--log-n", default=None,
                    help="comma-separated log_n values to run (default: all configs)")
    ap.add_argument("--only", default=None, help="comma-separated config ids to run")
    return ap.parse_args()


def load_configs(args):
    with open(args.config) as f:
        cfg = json.load(f)
    configs = cfg["configs"]
    if args.log_n:
        wanted = {int(x) for x in args.log_n.split(",") if x.strip()}
        configs = [c for c in configs if c["log_n"] in wanted]
    if args.only:
        wanted = {x.strip() for x in args.only.split(",") if x.strip()}
        configs = [c for c in configs if c["id"] in wanted]
    return configs


def reps_for(cfg, args):
    return args.reps if args.reps is not None else int(cfg.get("reps", 20))


def warmup_for(cfg, args):
    return args.warmup if args.warmup is not None else int(cfg.get("warmup", DEFAULT_WARMUP))


# HomomorphicEncryption.org standard, 128-bit classical, ternary secret: max log2(QP).
HE_STD_128_MAX_LOGQP = {10: 27, 11: 54, 12: 109, 13: 218, 14: 438, 15: 881, 16: 1770, 17: 3542}


def machine_string():
    u = platform.uname()
    model = "unknown-cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except Exception:
        pass
    return f"{u.system} {u.release} {u.machine} | {model} | {os.cpu_count()} cpus"


def time_op(fn, reps, warmup=DEFAULT_WARMUP):
    """Time fn() individually `reps` times after `warmup` untimed calls.
    Returns dict with median/min/max in microseconds.  GC is disabled while
    timing so Python's collector does not land inside a sample."""
    for _ in range(warmup):
        fn()
    samples = []
    cpu = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        pc = time.perf_counter
        tt = time.thread_time_ns
        for _ in range(reps):
            c0 = tt()
            t0 = pc()
            fn()
            t1 = pc()
            c1 = tt()
            samples.append((t1 - t0) * 1e6)
            cpu.append((c1 - c0) / 1e3)
    finally:
        if gc_was:
            gc.enable()
    # Wall clock (perf_counter) is the reported metric.  Thread CPU time is kept
    # alongside: on a loaded machine the wall time includes time spent waiting
    # for a core, the CPU time (mostly) does not.
    return {"median_us": statistics.median(samples), "min_us": min(samples),
            "max_us": max(samples), "reps": reps,
            "cpu_median_us": statistics.median(cpu), "cpu_min_us": min(cpu), "cpu_max_us": max(cpu)}


def slot_error(want, got):
    """Precision of a decrypted CKKS result: {"max_err_log2", "mean_err_log2"} = log2 of the
    max and of the mean |got - want| over all slots (hetensor's `bench --precision` fields)."""
    errs = [abs(g - w) for w, g in zip(want, got)]
    log2 = lambda e: round(math.log2(max(e, sys.float_info.min)), 2)  # noqa: E731
    return {"max_err_log2": log2(max(errs)), "mean_err_log2": log2(sum(errs) / len(errs))}


def scale_timing(t, factor):
    return {k: (v * factor if k.endswith("_us") else v) for k, v in t.items()}


def python_call_overhead_us(reps=20000):
    """Median cost of an empty Python call, for the notes (binding overhead
    of both libraries is of this order plus pybind11 argument conversion)."""
    def f():
        return None
    t = time_op(f, reps, warmup=100)
    return t["median_us"]


class Recorder:
    def __init__(self, engine, version):
        self.doc = {"engine": engine, "version": version, "machine": machine_string(),
                    "threads": 1, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "loadavg_start": list(os.getloadavg()),
                    "results": [], "notes": [], "checks": []}

    def note(self, msg):
        if msg not in self.doc["notes"]:
            self.doc["notes"].append(msg)
        print(f"[{self.doc['engine']}] note: {msg}", file=sys.stderr)

    def check(self, config, name, ok, detail):
        self.doc["checks"].append({"config": config, "check": name, "ok": bool(ok), "detail": detail})
        print(f"[{self.doc['engine']}] check {config}/{name}: {'OK' if ok else 'FAILED'} {detail}",
              file=sys.stderr)
        if not ok:
            raise SystemExit(f"correctness check {config}/{name} failed: {detail}")

    def result(self, meta, op, timing, **extra):
        assert op in OPS, op
        row = {"config": meta["config"], "scheme": meta["scheme"], "log_n": meta["log_n"],
               "limbs": meta["limbs"], "log_qp": meta["log_qp"], "op": op}
        row.update({k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()})
        for k, v in meta.items():
            if k not in row:
                row[k] = v
        row.update(extra)
        self.doc["results"].append(row)
        print(f"[{self.doc['engine']}] {meta['config']:<8} {op:<18} median {timing['median_us']:>11.1f} us"
              f"  (min {timing['min_us']:.1f}, max {timing['max_us']:.1f}, reps {timing['reps']}"
              f"{', cpu %.1f' % timing['cpu_median_us'] if 'cpu_median_us' in timing else ''})",
              file=sys.stderr)

    def write(self, path):
        self.doc["loadavg_end"] = list(os.getloadavg())
        self.doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        print(f"[{self.doc['engine']}] wrote {path} ({len(self.doc['results'])} results)", file=sys.stderr)
