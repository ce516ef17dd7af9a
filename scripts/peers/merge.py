#!/usr/bin/env python3
"""Merge peer-benchmark JSON files into a side-by-side Markdown table.

    python3 scripts/peers/merge.py bench-results/raw/*.json [--out bench-results/peers.md]
                                   [--baseline hetensor] [--write-best DIR]

Every input follows the schema in scripts/peers/peer_common.py (engine, version,
machine, results[], notes[]).  Several files of the SAME engine (e.g. the
interleaved A B A B passes of run_all.sh) are combined best-of: for each
(scheme, log_n, op) the run with the lowest median is kept, together with
its own min/max.

Rows are matched on (scheme, log_n, op) only: the engines run parameter sets of
equivalent security (128-bit) and depth, not identical primes (hetensor uses
~30-bit primes, SEAL/OpenFHE 40-60-bit ones), so limb counts differ.
Ratio columns are peer_median / baseline_median: > 1 means the baseline
(hetensor) is faster.  Stdlib only.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

OPS = ["encrypt", "decrypt", "add", "mul_relin", "mul_relin_rescale", "rescale",
       "rotate", "key_switch", "ntt_limb"]
SCHEMES = ["ckks", "bfv"]
PREFERRED = ["hetensor", "seal", "openfhe"]
METRIC = {"wall": ("median_us", "min_us", "max_us"),
          "cpu": ("cpu_median_us", "cpu_min_us", "cpu_max_us")}
MED, LO, HI = METRIC["wall"]


def load(paths):
    runs = OrderedDict()  # engine -> list of docs
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        d["_path"] = p
        runs.setdefault(d["engine"], []).append(d)
    return runs


def best_of(docs):
    """(scheme, log_n, op) -> best row (lowest median) across the docs of one engine."""
    best = {}
    counts = {}
    for d in docs:
        for r in d.get("results", []):
            if r.get(MED) is None:
                continue
            k = (r["scheme"], int(r["log_n"]), r["op"])
            counts[k] = counts.get(k, 0) + 1
            if k not in best or r[MED] < best[k][MED]:
                best[k] = dict(r, _source=d["_path"])
    for k, r in best.items():
        r["runs"] = counts[k]
    return best


def fmt_us(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(r):
    if r is None:
        return "—"
    return f"{fmt_us(r[MED])} ({fmt_us(r.get(LO))}–{fmt_us(r.get(HI))})"


def bits(r):
    """Precision of a row as "max / mean" bits (−log2 of the max / mean slot error), if measured."""
    if r is None or r.get("max_err_log2") is None:
        return "—"
    return f"{-r['max_err_log2']:.1f} / {-r['mean_err_log2']:.1f}"


def sort_key(k):
    scheme, log_n, op = k
    return (SCHEMES.index(scheme) if scheme in SCHEMES else 99, scheme, log_n,
            OPS.index(op) if op in OPS else 99, op)


def engine_order(engines, baseline):
    order = [e for e in [baseline] + PREFERRED if e in engines]
    order += [e for e in engines if e not in order]
    seen = []
    for e in order:
        if e not in seen:
            seen.append(e)
    return seen


def render(runs, baseline):
    engines = engine_order(list(runs), baseline)
    best = {e: best_of(runs[e]) for e in engines}
    peers = [e for e in engines if e != baseline] if baseline in engines else []
    keys = sorted({k for e in engines for k in best[e]}, key=sort_key)
    out = []
    w = out.append
    w("# Peer benchmark: single-threaded HE op latency")
    w("")
    what = ("wall-clock (perf_counter)" if MED == "median_us"
            else "thread CPU time (excludes time spent waiting for a core on a loaded machine)")
    w(f"Median µs per op, {what}, (min–max over the timed repetitions), best-of across the "
      "interleaved runs of each engine. **Configs are matched by (scheme, log_n, op): "
      "equivalent 128-bit security and multiplicative depth, not identical primes** "
      "(hetensor uses ~30-bit RNS primes, SEAL/OpenFHE 40–60-bit ones, so limb counts differ; "
      "see the parameter table).")
    if peers:
        w(f"Ratio columns are peer median / {baseline} median: **> 1 means {baseline} is faster**.")
    elif baseline not in engines:
        w(f"(No `{baseline}` results among the inputs, so no ratio columns.)")
    loaded = []
    for e in engines:
        for d in runs[e]:
            cpus = d.get("cpus")
            ls = [x for x in (d.get("loadavg_start"), d.get("loadavg_end")) if isinstance(x, list)]
            if cpus and ls and max(x[0] for x in ls) > cpus:
                loaded.append(f"{e}:{os.path.basename(d['_path'])} load {max(x[0] for x in ls):.1f} on {cpus} cpus")
    if loaded:
        w("")
        w("> **Warning: the machine was oversubscribed during some runs** (" + "; ".join(loaded) + "). "
          "Wall-clock numbers then include time spent waiting for a core; compare with the thread-CPU-time "
          "table (`merge.py --metric cpu`) and prefer interleaved runs.")
    # Precision columns only when some engine measured it (configs-precision.json, bench --precision).
    precise = [e for e in engines if any(r.get("max_err_log2") is not None for r in best[e].values())]
    if precise:
        w("Precision columns: **bits = −log2 of the max / mean slot error** of one output of the op, "
          "decrypted and compared with the plaintext result over all slots (inputs uniform in [-1, 1]); "
          "higher is better.")
    w("")
    hdr = (["scheme", "log_n", "op"] + [f"{e} µs" for e in engines] + [f"{e} bits" for e in precise]
           + [f"{p}/{baseline}" for p in peers])
    w("| " + " | ".join(hdr) + " |")
    w("|" + "|".join(["---"] * 3 + ["---:"] * (len(hdr) - 3)) + "|")
    for k in keys:
        scheme, log_n, op = k
        row = ([scheme, str(log_n), op] + [cell(best[e].get(k)) for e in engines]
               + [bits(best[e].get(k)) for e in precise])
        for p in peers:
            rb, rp = best[baseline].get(k), best[p].get(k)
            if rb and rp and rb[MED] > 0:
                row.append(f"{rp[MED] / rb[MED]:.2f}×")
            else:
                row.append("—")
        w("| " + " | ".join(row) + " |")
    w("")

    # Parameter table: per (scheme, log_n) what each engine actually ran.
    w("## Parameters actually used")
    w("")
    w("limbs = Q primes (ciphertext modulus at the top level); log2 QP includes special/key-switching primes.")
    w("")
    w("| scheme | log_n | " + " | ".join(engines) + " |")
    w("|---|---|" + "|".join(["---"] * len(engines)) + "|")
    sl = sorted({(k[0], k[1]) for k in keys},
                key=lambda x: (SCHEMES.index(x[0]) if x[0] in SCHEMES else 99, x[1]))
    for scheme, log_n in sl:
        cells = []
        for e in engines:
            r = next((v for kk, v in best[e].items() if kk[0] == scheme and kk[1] == log_n), None)
            if r is None:
                cells.append("—")
                continue
            parts = [f"`{r.get('config', '?')}`", f"limbs {r.get('limbs', '?')}", f"log2 QP {r.get('log_qp', '?')}"]
            if r.get("special_primes") is not None:
                parts.append(f"P primes {r['special_primes']}")
            if r.get("scale_bits") is not None:
                t = r.get("composition")
                parts.append(f"Δ 2^{r['scale_bits']}" + (f" ({t} primes/level)" if t and t > 1 else ""))
            if r.get("dnum") is not None:
                parts.append(f"dnum {r['dnum']}")
            if r.get("key_switching"):
                parts.append(str(r["key_switching"]))
            if r.get("plain_modulus"):
                parts.append(f"t {r['plain_modulus']}")
            if r.get("q_prime_bits"):
                parts.append("Q bits " + "/".join(str(int(b)) for b in r["q_prime_bits"]))
            cells.append(", ".join(parts))
        w(f"| {scheme} | {log_n} | " + " | ".join(cells) + " |")
    w("")

    w("## Engines and runs")
    w("")
    for e in engines:
        docs = runs[e]
        d0 = docs[0]
        w(f"- **{e}** — {d0.get('version', '?')}; {len(docs)} run(s): "
          + ", ".join(os.path.basename(d['_path']) for d in docs))
        w(f"  - machine: {d0.get('machine', '?')}")
        loads = [f"{d.get('loadavg_start', ['?'])[0]:.2f}→{d.get('loadavg_end', ['?'])[0]:.2f}"
                 for d in docs if isinstance(d.get('loadavg_start'), list) and isinstance(d.get('loadavg_end'), list)]
        if loads:
            w(f"  - 1-min load average during runs: {', '.join(loads)}")
        checks = [c for d in docs for c in d.get("checks", [])]
        if checks:
            bad = [c for c in checks if not c.get("ok")]
            uniq = OrderedDict()
            for c in checks:
                uniq[(c["config"], c["check"])] = c
            shown = "; ".join("%s/%s: %s" % (c["config"], c["check"], c["detail"])
                              for c in uniq.values() if "mul" in c["check"])
            w(f"  - correctness checks: {len(checks) - len(bad)}/{len(checks)} passed ({shown})")
        notes = OrderedDict()
        for d in docs:
            for n in d.get("notes", []):
                notes[n] = True
        for n in notes:
            w(f"  - {n}")
    w("")
    return "\n".join(out)


def write_best(runs, outdir):
    os.makedirs(outdir, exist_ok=True)
    for e, docs in runs.items():
        best = best_of(docs)
        d = {k: v for k, v in docs[0].items() if k not in ("results", "_path")}
        d["results"] = [{k: v for k, v in r.items() if k != "_source"} for _, r in sorted(best.items(), key=lambda kv: sort_key(kv[0]))]
        d["combined_from"] = [x["_path"] for x in docs]
        with open(os.path.join(outdir, f"{e}.json"), "w") as f:
            json.dump(d, f, indent=1)
            f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", help="write the Markdown here (also printed to stdout)")
    ap.add_argument("--baseline", default="hetensor")
    ap.add_argument("--write-best", metavar="DIR", help="also write best-of JSON per engine into DIR")
    ap.add_argument("--metric", choices=sorted(METRIC), default="wall",
                    help="wall: median_us/min_us/max_us (default); cpu: cpu_median_us/... (thread CPU time, "
                         "rows without it show as missing)")
    a = ap.parse_args()
    global MED, LO, HI
    MED, LO, HI = METRIC[a.metric]
    runs = load(a.files)
    md = render(runs, a.baseline)
    print(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(md + "\n")
        print(f"[merge] wrote {a.out}", file=sys.stderr)
    if a.write_best:
        write_best(runs, a.write_best)


if __name__ == "__main__":
    main()
