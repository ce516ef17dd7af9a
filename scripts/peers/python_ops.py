"""TenSEAL's tutorial ckks_vector ops next to hetensor's Python API, one run, one machine.

Same ring and scale (N = 8192, scale 2^40, two rescalings: TenSEAL coeff_mod_bit_sizes
[60, 40, 40, 60], hetensor Context.ckks(depth=2, scale_bits=40)), 4096 values per ciphertext.
add / mul (relinearize + rescale) / dot (mul + sum of all slots) on vectors; the plaintext
matrix product is TenSEAL's vector·matrix (`mm`, one vector) against hetensor's batched layout
(4096 vectors in the slots, `@`), so it is also reported per vector. Precision: max |error|
against numpy. TenSEAL is skipped when not installed (pip install tenseal==0.3.18).

    python scripts/peers/python_ops.py [--reps 5] [--json]
"""

import argparse
import json
import statistics
import time

import numpy as np

import hetensor as he


def timed(f, reps):
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def run(reps, scale_bits=40, n_in=64, n_out=8):
    rng = np.random.default_rng(0)
    slots = 4096
    a, b = rng.uniform(-1, 1, slots), rng.uniform(-1, 1, slots)
    m = rng.uniform(-1, 1, (n_in, n_out))
    xs = rng.uniform(-1, 1, (slots, n_in))
    rows = []

    ctx = he.Context.ckks(depth=2, scale_bits=scale_bits)
    assert ctx.slots == slots
    ea, eb = ctx.encrypt(a), ctx.encrypt(b)
    ex = ctx.encrypt(xs)
    hres = {}
    r, t = timed(lambda: ea + eb, reps); hres["add"] = (t, np.abs(r.decrypt() - (a + b)).max())
    r, t = timed(lambda: ea * eb, reps); hres["mul"] = (t, np.abs(r.decrypt() - a * b).max())
    r, t = timed(lambda: (ea * eb).sum(axis=0), reps)
    hres["dot"] = (t, abs(r.decrypt()[0] - a @ b))
    r, t = timed(lambda: ex @ m, reps)
    hres["matmul"] = (t, np.abs(r.decrypt() - xs @ m).max(), t / slots)

    tres = {}
    try:
        import tenseal as ts
    except ImportError:
        ts = None
    if ts is not None:
        tctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
        tctx.global_scale = 2**40
        tctx.generate_galois_keys()
        ta, tb = ts.ckks_vector(tctx, a), ts.ckks_vector(tctx, b)
        tv = ts.ckks_vector(tctx, xs[0])
        r, t = timed(lambda: ta + tb, reps); tres["add"] = (t, np.abs(np.array(r.decrypt()) - (a + b)).max())
        r, t = timed(lambda: ta * tb, reps); tres["mul"] = (t, np.abs(np.array(r.decrypt()) - a * b).max())
        r, t = timed(lambda: ta.dot(tb), reps); tres["dot"] = (t, abs(r.decrypt()[0] - a @ b))
        r, t = timed(lambda: tv.mm(m), reps)
        tres["matmul"] = (t, np.abs(np.array(r.decrypt()) - xs[0] @ m).max(), t)

    for op in ("add", "mul", "dot", "matmul"):
        row = {"op": op, "hetensor_ms": hres[op][0] * 1e3, "hetensor_err": hres[op][1]}
        if op == "matmul":
            row["hetensor_ms_per_vector"] = hres[op][2] * 1e3
        if tres:
            row["tenseal_ms"] = tres[op][0] * 1e3
            row["tenseal_err"] = tres[op][1]
            per = row.get("hetensor_ms_per_vector", row["hetensor_ms"])
            row["speedup"] = (tres[op][2] if op == "matmul" else tres[op][0]) * 1e3 / per
        rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--scale-bits", type=int, default=40, help="hetensor's scale (TenSEAL: 2^40)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = run(a.reps, a.scale_bits)
    if a.json:
        print(json.dumps(rows))
        return
    print("| op | hetensor ms | hetensor max err | TenSEAL ms | TenSEAL max err | speedup |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        h = f"{r['hetensor_ms']:.2f}"
        if "hetensor_ms_per_vector" in r:
            h += f" ({r['hetensor_ms_per_vector'] * 1e3:.2f} µs/vector, 4096 vectors)"
        t = f"{r['tenseal_ms']:.2f}" if "tenseal_ms" in r else "n/a"
        te = f"{r['tenseal_err']:.1e}" if "tenseal_err" in r else "n/a"
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else "n/a"
        print(f"| {r['op']} | {h} | {r['hetensor_err']:.1e} | {t} | {te} | {sp} |")


if __name__ == "__main__":
    main()
