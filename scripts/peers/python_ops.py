"""TenSEAL's tutorial ckks_vector ops next to hetensor's Python API, one run, one machine.

Same ring and scale (N = 8192, scale 2^40, two rescalings: TenSEAL coeff_mod_bit_sizes
[60, 40, 40, 60], hetensor Context.ckks(depth=2, scale_bits=40)), 4096 values per ciphertext.
add / mul (relinearize + rescale) / dot (mul + sum of all slots) on one vector each; the
plaintext matrix product is TenSEAL's vector·matrix (`mm`, one 64-vector by 64×8) against
hetensor's batched layout (4096 vectors in the slots, `@`), and "dot, batched" is TenSEAL's dot
of two 64-vectors against hetensor's `[4096, 64].dot([4096, 64])`: those two rows are reported
per vector. Each repetition times hetensor then TenSEAL, so both see the same machine load;
the table gives medians and minima (on a loaded machine the minimum is the op's cost
without preemption). Precision: max |error| against numpy. TenSEAL is
skipped when not installed (pip install tenseal==0.3.18).

    python scripts/peers/python_ops.py [--reps 7] [--threads 1] [--json]
"""

import argparse
import json
import statistics
import time

import numpy as np

import hetensor as he

SLOTS = 4096


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def cases(rng, n_in=64, n_out=8):
    """(op, hetensor setup, TenSEAL setup, vectors per hetensor call); each setup takes its
    context and returns (call, error of the call's result against numpy)."""
    a, b = rng.uniform(-1, 1, SLOTS), rng.uniform(-1, 1, SLOTS)
    m = rng.uniform(-1, 1, (n_in, n_out))
    xs, ys = rng.uniform(-1, 1, (SLOTS, n_in)), rng.uniform(-1, 1, (SLOTS, n_in))

    def he_pair(ctx):
        return ctx.encrypt(a), ctx.encrypt(b)

    def ts_pair(ctx):
        import tenseal as ts

        return ts.ckks_vector(ctx, a), ts.ckks_vector(ctx, b)

    def err(got, want):
        return float(np.abs(np.asarray(got) - want).max())

    def he_add(c):
        ea, eb = he_pair(c)
        return lambda: ea + eb, lambda r: err(r.decrypt(), a + b)

    def ts_add(c):
        ta, tb = ts_pair(c)
        return lambda: ta + tb, lambda r: err(r.decrypt(), a + b)

    def he_mul(c):
        ea, eb = he_pair(c)
        return lambda: ea * eb, lambda r: err(r.decrypt(), a * b)

    def ts_mul(c):
        ta, tb = ts_pair(c)
        return lambda: ta * tb, lambda r: err(r.decrypt(), a * b)

    def he_dot(c):
        ea, eb = he_pair(c)
        return lambda: (ea * eb).sum(axis=0), lambda r: err(r.decrypt()[0], a @ b)

    def ts_dot(c):
        ta, tb = ts_pair(c)
        return lambda: ta.dot(tb), lambda r: err(r.decrypt()[0], a @ b)

    def he_matmul(c):
        ex = c.encrypt(xs)
        return lambda: ex @ m, lambda r: err(r.decrypt(), xs @ m)

    def ts_matmul(c):
        import tenseal as ts

        tv = ts.ckks_vector(c, xs[0])
        return lambda: tv.mm(m), lambda r: err(r.decrypt(), xs[0] @ m)

    def he_bdot(c):
        ex, ey = c.encrypt(xs), c.encrypt(ys)
        return lambda: ex.dot(ey), lambda r: err(r.decrypt(), (xs * ys).sum(axis=1))

    def ts_bdot(c):
        import tenseal as ts

        tx, ty = ts.ckks_vector(c, xs[0]), ts.ckks_vector(c, ys[0])
        return lambda: tx.dot(ty), lambda r: err(r.decrypt()[0], xs[0] @ ys[0])

    return [
        ("add", he_add, ts_add, 1),
        ("mul", he_mul, ts_mul, 1),
        ("dot", he_dot, ts_dot, 1),
        ("matmul", he_matmul, ts_matmul, SLOTS),
        ("dot, batched", he_bdot, ts_bdot, SLOTS),
    ]


def tenseal_context():
    try:
        import tenseal as ts
    except ImportError:
        return None
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    return ctx


def run(reps, scale_bits=40, threads=None, extra_special_primes=None):
    if threads:
        he.set_num_threads(threads)
    hctx = he.Context.ckks(depth=2, scale_bits=scale_bits, extra_special_primes=extra_special_primes)
    assert hctx.slots == SLOTS
    tctx = tenseal_context()
    rows = []
    for op, he_setup, ts_setup, per in cases(np.random.default_rng(0)):
        h_call, h_err = he_setup(hctx)
        t_call, t_err = ts_setup(tctx) if tctx is not None else (None, None)
        ht, tt = [], []
        # One untimed call each: first-use work (hetensor's pool threads, tables) is not the op's.
        h_call()
        if t_call is not None:
            t_call()
        for _ in range(reps):
            h_out, s = timed(h_call)
            ht.append(s)
            if t_call is not None:
                t_out, s = timed(t_call)
                tt.append(s)
        row = {
            "op": op,
            "vectors_per_hetensor_call": per,
            "hetensor_ms": statistics.median(ht) * 1e3,
            "hetensor_min_ms": min(ht) * 1e3,
            "hetensor_err": h_err(h_out),
        }
        if tt:
            row.update(
                tenseal_ms=statistics.median(tt) * 1e3,
                tenseal_min_ms=min(tt) * 1e3,
                tenseal_err=t_err(t_out),
            )
            row["speedup"] = row["tenseal_ms"] / (row["hetensor_ms"] / per)
        rows.append(row)
    return {"hetensor_threads": he.get_num_threads(), "reps": reps, "rows": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--scale-bits", type=int, default=40, help="hetensor's scale (TenSEAL: 2^40)")
    p.add_argument("--threads", type=int, default=None, help="hetensor's threads (default: all cores)")
    p.add_argument(
        "--extra-special-primes",
        type=int,
        default=None,
        help="hetensor's key-switching primes beyond one digit (default 1; 0: SEAL's precision, 3 digits instead of 6)",
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out = run(a.reps, a.scale_bits, a.threads, a.extra_special_primes)
    if a.json:
        print(json.dumps(out))
        return
    print(f"hetensor threads: {out['hetensor_threads']}; median (min) of {out['reps']}")
    print("| op | hetensor ms | hetensor max err | TenSEAL ms | TenSEAL max err | speedup, medians (mins) |")
    print("|---|---|---|---|---|---|")
    for r in out["rows"]:
        per = r["vectors_per_hetensor_call"]
        h = f"{r['hetensor_ms']:.2f} ({r['hetensor_min_ms']:.2f})"
        if per > 1:
            h += f"; {r['hetensor_ms'] / per * 1e3:.2f} µs per vector, {per} at once"
        t, te, sp = "n/a", "n/a", "n/a"
        if "tenseal_ms" in r:
            t = f"{r['tenseal_ms']:.2f} ({r['tenseal_min_ms']:.2f})"
            te = f"{r['tenseal_err']:.1e}"
            best = r["tenseal_min_ms"] / (r["hetensor_min_ms"] / per)
            sp = f"{r['speedup']:.3g}x ({best:.3g}x)"
        print(f"| {r['op']} | {h} | {r['hetensor_err']:.1e} | {t} | {te} | {sp} |")

if __name__ == "__main__":
    main()
