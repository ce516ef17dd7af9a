#!/usr/bin/env python3
"""Time OpenFHE (the `openfhe` pip package, openfhe-python) op by op, single-threaded.

Usage (from the repository root, after scripts/peers/setup.sh):
    venv-openfhe/bin/python scripts/peers/bench_openfhe.py --config scripts/peers/configs.json \
        --out bench-results/openfhe.json [--reps R] [--log-n 13,14]

OMP_NUM_THREADS is forced to 1 *before* openfhe is imported (OpenFHE parallelises
over RNS limbs with OpenMP otherwise).
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"  # must precede the openfhe import
os.environ.setdefault("OMP_DYNAMIC", "false")

import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

import openfhe as o  # noqa: E402


def openfhe_version():
    try:
        import importlib.metadata as md
        return f"openfhe-python {md.version('openfhe')}"
    except Exception:
        return "openfhe (unknown version)"


def _moduli_in(js):
    """Every single-tower modulus ("cm": {"v": int} next to "rd") in a cereal JSON dump, in order."""
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
    walk(json.loads(js))
    return out


def _find_key(js, key):
    hits = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == key and not isinstance(v, (dict, list)):
                    hits.append(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(json.loads(js))
    return hits


def chain_meta(cc, cfg):
    """OpenFHE's Python API does not list the primes; read Q from the serialized
    context and P from the serialized relinearization key (its towers are Q u P).
    Must be called right after EvalMultKeyGen with a cleared key map."""
    ctx_js = o.Serialize(cc, o.JSON)
    q = _moduli_in(ctx_js)
    key_js = o.SerializeEvalMultKeyString(o.JSON, "")
    p = []
    for m in _moduli_in(key_js):
        if m not in q and m not in p:
            p.append(m)
    dnum = _find_key(ctx_js, "dnum")
    log_q = sum(math.log2(m) for m in q)
    log_p = sum(math.log2(m) for m in p)
    bound = pc.HE_STD_128_MAX_LOGQP.get(cfg["log_n"])
    if bound is not None and log_q + log_p > bound + 0.5:
        raise SystemExit(f"{cfg['id']}: log2 QP {log_q + log_p:.1f} exceeds the 128-bit bound {bound}")
    ks = cc.GetKeySwitchTechnique()
    return {"config": cfg["id"], "scheme": cfg["scheme"], "log_n": cfg["log_n"],
            "limbs": len(q), "log_qp": round(log_q + log_p, 1),
            "n": cc.GetRingDimension(), "log_q": round(log_q, 1),
            "q_prime_bits": [round(math.log2(m), 1) for m in q],
            "special_primes": len(p), "special_prime_bits": [round(math.log2(m), 1) for m in p],
            "dnum": (dnum[0] if dnum else None) if "HYBRID" in str(ks) else None,
            "key_switching": str(ks).split(".")[-1]}


def keygen_common(cc, cfg):
    for f in (o.PKE, o.KEYSWITCH, o.LEVELEDSHE):
        cc.Enable(f)
    o.ClearEvalMultKeys()
    cc.ClearEvalAutomorphismKeys()
    kp = cc.KeyGen()
    cc.EvalMultKeyGen(kp.secretKey)
    meta = chain_meta(cc, cfg)
    cc.EvalRotateKeyGen(kp.secretKey, [1])
    kp2 = cc.KeyGen()
    ksk = cc.KeySwitchGen(kp.secretKey, kp2.secretKey)
    return kp, kp2, ksk, meta


def bench_ckks(cfg, rec, args):
    oc = cfg["openfhe"]
    N = 1 << cfg["log_n"]
    p = o.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(oc["depth"])
    p.SetScalingModSize(oc["scaling_mod_bits"])
    p.SetFirstModSize(oc["first_mod_bits"])
    p.SetRingDim(N)
    p.SetBatchSize(N // 2)
    p.SetScalingTechnique(o.FIXEDMANUAL)
    p.SetSecurityLevel(o.HEStd_128_classic)
    p.SetKeySwitchTechnique(o.HYBRID)
    if oc.get("dnum"):
        p.SetNumLargeDigits(oc["dnum"])
    cc = o.GenCryptoContext(p)
    kp, kp2, ksk, meta = keygen_common(cc, cfg)
    meta.update(scale_bits=oc["scaling_mod_bits"], first_mod_bits=oc["first_mod_bits"],
                scaling_technique="FIXEDMANUAL", security="HEStd_128_classic")
    reps, W = pc.reps_for(cfg, args), pc.warmup_for(cfg, args)
    slots = N // 2
    rng = random.Random(1234 + cfg["log_n"])
    x = [rng.uniform(-1, 1) for _ in range(slots)]
    y = [rng.uniform(-1, 1) for _ in range(slots)]
    px = cc.MakeCKKSPackedPlaintext(x)
    py = cc.MakeCKKSPackedPlaintext(y)
    a = cc.Encrypt(kp.publicKey, px)
    b = cc.Encrypt(kp.publicKey, py)
    sk = kp.secretKey

    def dec(ct, key=sk):
        pt = cc.Decrypt(ct, key)
        pt.SetLength(slots)
        return pt.GetRealPackedValue()

    # Precision (vs the plaintext, all slots) of a fresh encryption, one mul+relin+rescale and
    # a rotation; the errors go into those ops' rows.
    fresh = pc.slot_error(x, dec(a))
    mul = pc.slot_error([x[i] * y[i] for i in range(slots)], dec(cc.Rescale(cc.EvalMult(a, b))))
    rec.check(cfg["id"], "ckks_mul_relin_rescale", mul["max_err_log2"] < math.log2(1e-4),
              f"max |dec(a*b) - x*y| = 2^{mul['max_err_log2']} over {slots} slots")
    rotated = pc.slot_error([x[(i + 1) % slots] for i in range(slots)], dec(cc.EvalRotate(a, 1)))
    rec.check(cfg["id"], "ckks_rotate", rotated["max_err_log2"] < math.log2(1e-4),
              f"max |dec(rot(a,1))[i] - x[i+1]| = 2^{rotated['max_err_log2']}")
    got = dec(cc.KeySwitch(a, ksk), kp2.secretKey)
    err = max(abs(got[i] - x[i]) for i in range(slots))
    rec.check(cfg["id"], "ckks_key_switch", err < 1e-4, f"max |dec_sk2(ks(a)) - x| = {err:.3e}")

    rec.result(meta, "encrypt", pc.time_op(lambda: cc.Encrypt(kp.publicKey, px), reps, W), **fresh)
    rec.result(meta, "decrypt", pc.time_op(lambda: cc.Decrypt(a, sk), reps, W),
               includes_decode=True)
    rec.result(meta, "add", pc.time_op(lambda: cc.EvalAdd(a, b), reps, W))
    rec.result(meta, "mul_relin", pc.time_op(lambda: cc.EvalMult(a, b), reps, W))
    rec.result(meta, "mul_relin_rescale", pc.time_op(lambda: cc.Rescale(cc.EvalMult(a, b)), reps, W),
               **mul)
    unres = cc.EvalMult(a, b)
    rec.result(meta, "rescale", pc.time_op(lambda: cc.Rescale(unres), reps, W))
    rec.result(meta, "rotate", pc.time_op(lambda: cc.EvalRotate(a, 1), reps, W), **rotated)
    rec.result(meta, "key_switch", pc.time_op(lambda: cc.KeySwitch(a, ksk), reps, W))


def bench_bfv(cfg, rec, args):
    oc = cfg["openfhe"]
    N = 1 << cfg["log_n"]
    p = o.CCParamsBFVRNS()
    p.SetPlaintextModulus(oc["plain_modulus"])
    p.SetMultiplicativeDepth(oc["depth"])
    p.SetRingDim(N)
    p.SetSecurityLevel(o.HEStd_128_classic)
    cc = o.GenCryptoContext(p)
    kp, kp2, ksk, meta = keygen_common(cc, cfg)
    t_mod = cc.GetPlaintextModulus()
    meta.update(plain_modulus=t_mod, depth=oc["depth"], security="HEStd_128_classic",
                multiplication_technique=str(p.GetMultiplicationTechnique()).split(".")[-1])
    reps, W = pc.reps_for(cfg, args), pc.warmup_for(cfg, args)
    slots = N
    half = N // 2
    rng = random.Random(4321 + cfg["log_n"])
    # OpenFHE packs signed values in (-t/2, t/2]; compare modulo t.
    x = [rng.randrange(t_mod) - t_mod // 2 for _ in range(slots)]
    y = [rng.randrange(t_mod) - t_mod // 2 for _ in range(slots)]
    px = cc.MakePackedPlaintext(x)
    py = cc.MakePackedPlaintext(y)
    a = cc.Encrypt(kp.publicKey, px)
    b = cc.Encrypt(kp.publicKey, py)
    sk = kp.secretKey

    def dec(ct, key=sk):
        pt = cc.Decrypt(ct, key)
        pt.SetLength(slots)
        return [v % t_mod for v in pt.GetPackedValue()]

    got = dec(cc.EvalMult(a, b))
    bad = sum(1 for i in range(slots) if got[i] != (x[i] * y[i]) % t_mod)
    rec.check(cfg["id"], "bfv_mul_relin", bad == 0, f"{slots - bad}/{slots} slots == x*y mod {t_mod}")
    got = dec(cc.EvalRotate(a, 1))
    row_wise = [x[r * half + (i + 1) % half] % t_mod for r in (0, 1) for i in range(half)]
    full = [x[(i + 1) % slots] % t_mod for i in range(slots)]
    bad_rows = sum(1 for i in range(slots) if got[i] != row_wise[i])
    bad_full = sum(1 for i in range(slots) if got[i] != full[i])
    rec.check(cfg["id"], "bfv_rotate", min(bad_rows, bad_full) == 0,
              "EvalRotate(+1) == " + ("row-wise (2 x N/2) left rotation by 1" if bad_rows == 0
                                       else "full-vector left rotation by 1"))
    got = dec(cc.KeySwitch(a, ksk), kp2.secretKey)
    bad = sum(1 for i in range(slots) if got[i] != x[i] % t_mod)
    rec.check(cfg["id"], "bfv_key_switch", bad == 0, f"{slots - bad}/{slots} slots == x after key switch")

    rec.result(meta, "encrypt", pc.time_op(lambda: cc.Encrypt(kp.publicKey, px), reps, W))
    rec.result(meta, "decrypt", pc.time_op(lambda: cc.Decrypt(a, sk), reps, W),
               includes_decode=True)
    rec.result(meta, "add", pc.time_op(lambda: cc.EvalAdd(a, b), reps, W))
    rec.result(meta, "mul_relin", pc.time_op(lambda: cc.EvalMult(a, b), reps, W))
    rec.result(meta, "rotate", pc.time_op(lambda: cc.EvalRotate(a, 1), reps, W))
    rec.result(meta, "key_switch", pc.time_op(lambda: cc.KeySwitch(a, ksk), reps, W))


def main():
    args = pc.parse_args("openfhe")
    rec = pc.Recorder("openfhe", openfhe_version())
    rec.doc["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    rec.doc["python_call_overhead_us"] = round(pc.python_call_overhead_us(), 3)
    rec.note("OpenFHE via openfhe-python (pybind11), OMP_NUM_THREADS=1 set before import. Each timed call pays "
             "Python + pybind11 dispatch (~1 us; the empty-Python-call cost is in python_call_overhead_us).")
    rec.note("encrypt = public-key encryption of a pre-encoded plaintext.")
    rec.note("decrypt INCLUDES decoding: openfhe-python's CryptoContext.Decrypt always decodes the plaintext "
             "(CKKS: CRT + inverse canonical embedding; BFV: scale-and-round + slot unpacking); there is no "
             "decrypt-only call in the Python API.")
    rec.note("All ops are out-of-place (OpenFHE returns a new ciphertext, so each call allocates).")
    rec.note("CKKS uses FIXEDMANUAL scaling: mul_relin = EvalMult (multiply + relinearize, no rescale); "
             "mul_relin_rescale = Rescale(EvalMult(a, b)); rescale = Rescale of a relinearized top-level product.")
    rec.note("CKKS precision (max_err_log2/mean_err_log2 on encrypt, mul_relin_rescale, rotate): log2 of the "
             "max/mean |decrypted - plaintext result| over all slots, inputs uniform in [-1, 1], one output "
             "of the op; FIXEDMANUAL decodes at the nominal scale 2^scaling_mod_bits.")
    rec.note("rotate = EvalRotate(+1) with a rotation key for that single index (CKKS: slot rotation; "
             "BFV: see checks for the slot semantics).")
    rec.note("key_switch = CryptoContext.KeySwitch(ct, KeySwitchGen(sk1, sk2)) at the top level.")
    rec.note("ntt_limb: omitted - openfhe-python exposes no NTT (DCRTPoly has no methods in the binding).")
    rec.note("rescale: n/a for BFV (OpenFHE BFV works at a single level).")
    rec.note("limbs/log_qp/special primes are read from the serialized context (Q) and relinearization key (Q u P).")
    for cfg in pc.load_configs(args):
        if cfg["scheme"] == "ckks":
            bench_ckks(cfg, rec, args)
        else:
            bench_bfv(cfg, rec, args)
    rec.write(args.out)


if __name__ == "__main__":
    main()
