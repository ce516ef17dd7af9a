#!/usr/bin/env python3
"""Time OpenFHE's CKKS bootstrapping (the `openfhe` pip wheel, openfhe-python) as the
anchor for issue #15.

Follows OpenFHE's own example examples/pke/simple-ckks-bootstrapping.py, but at
HEStd_128_classic, N = 2^16 and full slots (2^15):

    depth = levels_after + GetBootstrapDepth(level_budget, secret_dist)
    EvalBootstrapSetup(level_budget) ; KeyGen ; EvalMultKeyGen ; EvalBootstrapKeyGen(sk, slots)
    encrypt a random vector in [-1, 1] at level depth-1 (one level left, as the example does)
    time EvalBootstrap (R runs, no warm-up), decrypt, max error over every slot

Usage (from the repository root; the wheel's extension needs CPython 3.10):
    ~/.pyenv/versions/3.10.13/bin/python -m venv /work/V310 && /work/V310/bin/pip install openfhe numpy
    /work/V310/bin/python scripts/peers/bench_openfhe_bootstrap.py --threads 2 \
        --secret sparse --level-budget 4,4 --levels-after 4 --scale-bits 59 --first-mod 60 --dnum 4

OMP_NUM_THREADS is set from --threads before openfhe is imported.  JSON goes to stdout,
progress to stderr.  At 128-bit security and N = 2^16, OpenFHE refuses the example's
59/60-bit moduli with a uniform ternary secret at any depth that leaves >= 4 levels, so
the chain (scale bits, dnum, secret) has to be chosen; GenCryptoContext is the judge
(--check-only builds just the context).  EvalBootstrap also refuses first_mod - scale_bits > 8
("Degree [10] must be less than or equal to the correction factor [8]").
"""
import argparse
import os
import sys


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-n", type=int, default=16)
    ap.add_argument("--log-slots", type=int, default=None, help="default: log_n - 1 (full slots)")
    ap.add_argument("--secret", choices=["uniform", "sparse"], default="uniform")
    ap.add_argument("--level-budget", default="4,4")
    ap.add_argument("--levels-after", type=int, default=10)
    ap.add_argument("--scale-bits", type=int, default=59)
    ap.add_argument("--first-mod", type=int, default=60)
    ap.add_argument("--dnum", type=int, default=0, help="number of large digits; 0 = OpenFHE's default")
    ap.add_argument("--scaling", choices=["FLEXIBLEAUTO", "FIXEDAUTO", "FLEXIBLEAUTOEXT"], default="FLEXIBLEAUTO")
    ap.add_argument("--security", choices=["128", "none"], default="128")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=1,
                    help="EvalBootstrap numIterations (2 = OpenFHE's iterative / meta-BTS; needs --precision)")
    ap.add_argument("--precision", type=int, default=0, help="EvalBootstrap precision argument (bits) for iterations>1")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--check-only", action="store_true", help="only build the context and report the chain")
    return ap.parse_args()


ARGS = parse()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)  # must precede the openfhe import
os.environ.setdefault("OMP_DYNAMIC", "false")

import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import openfhe as o  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def current_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def chain_moduli(cc):
    """Q's primes, read from the serialized context (the Python API does not list them)."""
    out = []

    def walk(x):
        if isinstance(x, dict):
            cm = x.get("cm")
            if "rd" in x and isinstance(cm, dict) and isinstance(cm.get("v"), int):
                out.append(cm["v"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    try:
        walk(json.loads(o.Serialize(cc, o.JSON)))
    except Exception as e:  # serialization is only for reporting
        log("could not read the chain:", e)
    return out


def version():
    try:
        import importlib.metadata as md
        return md.version("openfhe")
    except Exception:
        return "unknown"


def main():
    a = ARGS
    dist = o.SecretKeyDist.UNIFORM_TERNARY if a.secret == "uniform" else o.SecretKeyDist.SPARSE_TERNARY
    level_budget = [int(v) for v in a.level_budget.split(",")]
    boot_depth = o.CryptoContext.GetBootstrapDepth(level_budget, dist)
    depth = a.levels_after + boot_depth
    N = 1 << a.log_n
    slots = 1 << (a.log_slots if a.log_slots is not None else a.log_n - 1)

    p = o.CCParamsCKKSRNS()
    p.SetSecretKeyDist(dist)
    p.SetSecurityLevel(o.SecurityLevel.HEStd_128_classic if a.security == "128" else o.SecurityLevel.HEStd_NotSet)
    p.SetRingDim(N)
    p.SetScalingModSize(a.scale_bits)
    p.SetFirstModSize(a.first_mod)
    p.SetScalingTechnique(getattr(o.ScalingTechnique, a.scaling))
    p.SetMultiplicativeDepth(depth)
    p.SetKeySwitchTechnique(o.KeySwitchTechnique.HYBRID)
    if a.dnum:
        p.SetNumLargeDigits(a.dnum)
    if slots != N // 2:
        p.SetBatchSize(slots)

    rec = {
        "library": f"openfhe-python {version()}", "native_int": o.get_native_int(),
        "threads": a.threads, "log_n": a.log_n, "slots": slots,
        "security": "HEStd_128_classic" if a.security == "128" else "HEStd_NotSet",
        "secret": str(dist).split(".")[-1], "level_budget": level_budget,
        "scaling": a.scaling, "scale_bits": a.scale_bits, "first_mod_bits": a.first_mod,
        "dnum_requested": a.dnum or None, "bootstrap_depth": boot_depth,
        "levels_after_requested": a.levels_after, "mult_depth": depth,
        "iterations": a.iterations, "precision_arg": a.precision or None,
    }

    t0 = time.perf_counter()
    try:
        cc = o.GenCryptoContext(p)
    except Exception as e:
        msg = str(e)
        rec["error"] = msg[msg.find("():") + 3:].strip() if "():" in msg else msg
        print(json.dumps(rec, indent=1))
        return 2
    for f in (o.PKESchemeFeature.PKE, o.PKESchemeFeature.KEYSWITCH, o.PKESchemeFeature.LEVELEDSHE,
              o.PKESchemeFeature.ADVANCEDSHE, o.PKESchemeFeature.FHE):
        cc.Enable(f)
    rec["context_s"] = round(time.perf_counter() - t0, 3)
    rec["ring_dim"] = cc.GetRingDimension()
    q = chain_moduli(cc)
    if q:
        rec["q_limbs"] = len(q)
        rec["log_q"] = round(sum(math.log2(m) for m in q), 1)
        rec["q_prime_bits"] = [round(math.log2(m), 1) for m in q]
    if a.check_only:
        print(json.dumps(rec, indent=1))
        return 0

    t0 = time.perf_counter()
    cc.EvalBootstrapSetup(level_budget, [0, 0], slots)
    rec["bootstrap_setup_s"] = round(time.perf_counter() - t0, 3)
    log(f"setup {rec['bootstrap_setup_s']} s, rss {current_rss_mib()} MiB")

    t0 = time.perf_counter()
    kp = cc.KeyGen()
    cc.EvalMultKeyGen(kp.secretKey)
    cc.EvalBootstrapKeyGen(kp.secretKey, slots)
    rec["keygen_s"] = round(time.perf_counter() - t0, 3)
    rec["rotation_keys"] = len(cc.GetExistingEvalAutomorphismKeyIndices(kp.secretKey.GetKeyTag()))
    rec["rss_after_keygen_mib"] = current_rss_mib()
    log(f"keygen {rec['keygen_s']} s, {rec['rotation_keys']} rotation keys, rss {rec['rss_after_keygen_mib']} MiB")

    rng = np.random.default_rng(a.seed)
    x = rng.uniform(-1.0, 1.0, slots)
    ptxt = cc.MakeCKKSPackedPlaintext(x.tolist(), 1, depth - 1, None, slots)
    ptxt.SetLength(slots)
    ct = cc.Encrypt(kp.publicKey, ptxt)
    rec["levels_before"] = depth - ct.GetLevel()

    times, errs, out = [], [], None
    for r in range(a.reps):
        t0 = time.perf_counter()
        if a.iterations > 1:
            out = cc.EvalBootstrap(ct, a.iterations, a.precision)
        else:
            out = cc.EvalBootstrap(ct)
        dt = time.perf_counter() - t0
        times.append(round(dt, 3))
        dec = cc.Decrypt(out, kp.secretKey)
        dec.SetLength(slots)
        y = np.array(dec.GetRealPackedValue())
        err = np.abs(y - x)
        errs.append(err)
        rec.setdefault("openfhe_log_precision", []).append(round(dec.GetLogPrecision(), 2))
        log(f"bootstrap {r}: {dt:.3f} s, max err {err.max():.3e} ({-math.log2(err.max()):.2f} bits), "
            f"rss {current_rss_mib()} MiB")

    err = np.concatenate(errs)
    rec["bootstrap_s"] = times
    rec["bootstrap_s_min"] = min(times)
    rec["bootstrap_s_median"] = float(np.median(times))
    rec["max_err"] = float(err.max())
    rec["precision_bits_max_err"] = round(-math.log2(err.max()), 2)
    rec["precision_bits_mean_err"] = round(-math.log2(err.mean()), 2)
    rec["precision_bits_rms_err"] = round(-math.log2(math.sqrt(float((err ** 2).mean()))), 2)
    rec["levels_after"] = depth - out.GetLevel() - (out.GetNoiseScaleDeg() - 1)
    rec["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
