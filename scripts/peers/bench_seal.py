#!/usr/bin/env python3
"""Time Microsoft SEAL (through TenSEAL's raw `tenseal.sealapi` binding) op by op.

Usage (from the repository root, after scripts/peers/setup.sh):
    venv-seal/bin/python scripts/peers/bench_seal.py --config scripts/peers/configs.json \
        --out bench-results/seal.json [--reps R] [--log-n 13,14]

SEAL is single-threaded (the sealapi binding releases no thread pool), so no
thread setting is needed.  Every timed call goes through pybind11, which adds
roughly a microsecond per call; that is recorded in the notes.
"""
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

import tenseal  # noqa: E402
import tenseal.sealapi as s  # noqa: E402


def seal_version():
    """TenSEAL does not expose SEAL's version; read it from the header SEAL
    writes in front of any serialized object (magic, header size, major, minor)."""
    import tempfile
    p = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    p.set_poly_modulus_degree(4096)
    p.set_coeff_modulus(s.CoeffModulus.Create(4096, [40, 40]))
    with tempfile.NamedTemporaryFile(suffix=".seal") as f:
        p.save(f.name)
        hdr = open(f.name, "rb").read(16)
    return f"SEAL {hdr[3]}.{hdr[4]} (serialization header) via tenseal {tenseal.__version__} sealapi"


def chain_meta(ctx, cfg):
    first = ctx.first_context_data()
    key = ctx.key_context_data()
    q = [m.bit_count() for m in first.parms().coeff_modulus()]
    full = [m.value() for m in key.parms().coeff_modulus()]
    qp_bits = sum(math.log2(v) for v in full)
    q_bits = sum(math.log2(m.value()) for m in first.parms().coeff_modulus())
    return {"config": cfg["id"], "scheme": cfg["scheme"], "log_n": cfg["log_n"],
            "limbs": len(q), "log_qp": round(qp_bits, 1),
            "n": first.parms().poly_modulus_degree(), "log_q": round(q_bits, 1),
            "q_prime_bits": q, "special_primes": len(full) - len(q),
            "special_prime_bits": [m.bit_count() for m in key.parms().coeff_modulus()][len(q):],
            # SEAL decomposes the key-switched polynomial per RNS limb of Q.
            "dnum": len(q), "key_switching": "SEAL (per-limb digits, 1 special prime)"}


def make_context(cfg):
    N = 1 << cfg["log_n"]
    sc = cfg["seal"]
    if cfg["scheme"] == "ckks":
        parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(N)
        parms.set_coeff_modulus(s.CoeffModulus.Create(N, sc["coeff_bits"]))
    else:
        parms = s.EncryptionParameters(s.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(N)
        assert sc["coeff_modulus"] == "BFVDefault"
        parms.set_coeff_modulus(s.CoeffModulus.BFVDefault(N, s.SEC_LEVEL_TYPE.TC128))
        parms.set_plain_modulus(s.PlainModulus.Batching(N, sc["plain_modulus_batching_bits"]))
    # SEAL's built-in 128-bit table stops at N = 2^15 (it rejects 2^16 under TC128), so for
    # larger N the harness enforces the HE-standard bound itself and tells SEAL NONE.
    sec = s.SEC_LEVEL_TYPE.TC128 if N <= 32768 else s.SEC_LEVEL_TYPE.NONE
    ctx = s.SEALContext(parms, True, sec)
    if not ctx.parameters_set():
        raise SystemExit(f"SEAL rejected {cfg['id']}: {ctx.parameters_error_message()}")
    log_qp = sum(math.log2(m.value()) for m in parms.coeff_modulus())
    bound = pc.HE_STD_128_MAX_LOGQP[cfg["log_n"]]
    if log_qp > bound:
        raise SystemExit(f"{cfg['id']}: log2 QP {log_qp:.1f} exceeds the 128-bit bound {bound}")
    return ctx


def bench_ckks(cfg, ctx, rec, args):
    reps = pc.reps_for(cfg, args)
    W = pc.warmup_for(cfg, args)
    meta = chain_meta(ctx, cfg)
    scale = 2.0 ** cfg["seal"]["scale_bits"]
    meta["scale_bits"] = cfg["seal"]["scale_bits"]
    kg = s.KeyGenerator(ctx)
    pk = s.PublicKey(); kg.create_public_key(pk)
    rk = s.RelinKeys(); kg.create_relin_keys(rk)
    gk = s.GaloisKeys()
    # Galois key for the single step +1 only (a full set at 2^16 is slow and huge).  The
    # list[int] overload of create_galois_keys takes Galois ELEMENTS, not steps.
    kg.create_galois_keys([ctx.first_context_data().galois_tool().get_elt_from_step(1)], gk)
    enc = s.Encryptor(ctx, pk)
    dec = s.Decryptor(ctx, kg.secret_key())
    ev = s.Evaluator(ctx)
    ce = s.CKKSEncoder(ctx)
    slots = ce.slot_count()
    rng = random.Random(1234 + cfg["log_n"])
    x = [rng.uniform(-1, 1) for _ in range(slots)]
    y = [rng.uniform(-1, 1) for _ in range(slots)]
    px = s.Plaintext(); ce.encode(x, scale, px)
    py = s.Plaintext(); ce.encode(y, scale, py)
    a = s.Ciphertext(); enc.encrypt(px, a)
    b = s.Ciphertext(); enc.encrypt(py, b)

    # ---- correctness and precision (vs the plaintext, all slots): a fresh encryption, one
    # multiply (+relin +rescale) and a rotation; the errors go into those ops' rows
    pt = s.Plaintext()

    def decrypted(ct):
        dec.decrypt(ct, pt)
        return ce.decode_double(pt)[:slots]

    fresh = pc.slot_error(x, decrypted(a))
    prod = s.Ciphertext()
    ev.multiply(a, b, prod); ev.relinearize_inplace(prod, rk); ev.rescale_to_next_inplace(prod)
    mul = pc.slot_error([x[i] * y[i] for i in range(slots)], decrypted(prod))
    rec.check(cfg["id"], "ckks_mul_relin_rescale", mul["max_err_log2"] < math.log2(1e-4),
              f"max |dec(a*b) - x*y| = 2^{mul['max_err_log2']} over {slots} slots")
    rot = s.Ciphertext(); ev.rotate_vector(a, 1, gk, rot)
    rotated = pc.slot_error([x[(i + 1) % slots] for i in range(slots)], decrypted(rot))
    rec.check(cfg["id"], "ckks_rotate", rotated["max_err_log2"] < math.log2(1e-4),
              f"max |dec(rot(a,1))[i] - x[i+1]| = 2^{rotated['max_err_log2']}")

    # ---- timings (all out-of-place into a reused destination)
    dst = s.Ciphertext()
    ptd = s.Plaintext()
    rec.result(meta, "encrypt", pc.time_op(lambda: enc.encrypt(px, dst), reps, W), **fresh)
    rec.result(meta, "decrypt", pc.time_op(lambda: dec.decrypt(a, ptd), reps, W))
    rec.result(meta, "add", pc.time_op(lambda: ev.add(a, b, dst), reps, W))

    def mul_relin():
        ev.multiply(a, b, dst); ev.relinearize_inplace(dst, rk)
    rec.result(meta, "mul_relin", pc.time_op(mul_relin, reps, W))

    def mul_relin_rescale():
        ev.multiply(a, b, dst); ev.relinearize_inplace(dst, rk); ev.rescale_to_next_inplace(dst)
    rec.result(meta, "mul_relin_rescale", pc.time_op(mul_relin_rescale, reps, W), **mul)

    unres = s.Ciphertext(); ev.multiply(a, b, unres); ev.relinearize_inplace(unres, rk)
    rec.result(meta, "rescale", pc.time_op(lambda: ev.rescale_to_next(unres, dst), reps, W))
    rec.result(meta, "rotate", pc.time_op(lambda: ev.rotate_vector(a, 1, gk, dst), reps, W), **rotated)
    bench_ntt_limb(ctx, ev, a, meta, rec, reps, W, ckks=True)


def bench_ntt_limb(ctx, ev, ct, meta, rec, reps, W, ckks):
    """SEAL exposes no bare NTT, but Evaluator.transform_to_ntt on a
    coefficient-form ciphertext at the LAST level (exactly one RNS limb) is a
    forward negacyclic NTT of each of its 2 polynomials (after an O(N) copy
    into the destination).  Reported per polynomial-limb (time / 2)."""
    low = s.Ciphertext()
    ev.mod_switch_to(ct, ctx.last_parms_id(), low)
    if low.coeff_modulus_size() != 1:
        rec.note(f"{meta['config']}: last level has {low.coeff_modulus_size()} limbs; ntt_limb skipped")
        return
    if ckks:  # CKKS ciphertexts live in NTT form; take it back to coefficients first
        coef = s.Ciphertext(); ev.transform_from_ntt(low, coef)
    else:
        coef = low
    assert not coef.is_ntt_form()
    dst = s.Ciphertext()
    polys = coef.size()
    t = pc.time_op(lambda: ev.transform_to_ntt(coef, dst), reps, W)
    last_bits = ctx.last_context_data().parms().coeff_modulus()[0].bit_count()
    rec.result(meta, "ntt_limb", pc.scale_timing(t, 1.0 / polys), ntt_prime_bits=last_bits,
               ntt_method=f"transform_to_ntt of a {polys}-poly 1-limb ciphertext / {polys}")


def bench_bfv(cfg, ctx, rec, args):
    reps = pc.reps_for(cfg, args)
    W = pc.warmup_for(cfg, args)
    meta = chain_meta(ctx, cfg)
    t_mod = ctx.first_context_data().parms().plain_modulus().value()
    meta["plain_modulus"] = t_mod
    kg = s.KeyGenerator(ctx)
    pk = s.PublicKey(); kg.create_public_key(pk)
    rk = s.RelinKeys(); kg.create_relin_keys(rk)
    gk = s.GaloisKeys()
    # Galois key for the single step +1 only (a full set at 2^16 is slow and huge).  The
    # list[int] overload of create_galois_keys takes Galois ELEMENTS, not steps.
    kg.create_galois_keys([ctx.first_context_data().galois_tool().get_elt_from_step(1)], gk)
    enc = s.Encryptor(ctx, pk)
    dec = s.Decryptor(ctx, kg.secret_key())
    ev = s.Evaluator(ctx)
    be = s.BatchEncoder(ctx)
    slots = be.slot_count()
    half = slots // 2
    rng = random.Random(4321 + cfg["log_n"])
    x = [rng.randrange(t_mod) for _ in range(slots)]
    y = [rng.randrange(t_mod) for _ in range(slots)]
    px = s.Plaintext(); be.encode(x, px)
    py = s.Plaintext(); be.encode(y, py)
    a = s.Ciphertext(); enc.encrypt(px, a)
    b = s.Ciphertext(); enc.encrypt(py, b)

    prod = s.Ciphertext(); ev.multiply(a, b, prod); ev.relinearize_inplace(prod, rk)
    pt = s.Plaintext(); dec.decrypt(prod, pt)
    got = be.decode_uint64(pt)
    bad = sum(1 for i in range(slots) if got[i] != (x[i] * y[i]) % t_mod)
    rec.check(cfg["id"], "bfv_mul_relin", bad == 0,
              f"{slots - bad}/{slots} slots == x*y mod {t_mod}; noise budget left "
              f"{dec.invariant_noise_budget(prod)} bits")
    rot = s.Ciphertext(); ev.rotate_rows(a, 1, gk, rot)
    dec.decrypt(rot, pt); got = be.decode_uint64(pt)
    want = [x[r * half + (i + 1) % half] for r in (0, 1) for i in range(half)]
    bad = sum(1 for i in range(slots) if got[i] != want[i])
    rec.check(cfg["id"], "bfv_rotate_rows", bad == 0, f"{slots - bad}/{slots} slots == row-wise left rotation by 1")

    dst = s.Ciphertext()
    ptd = s.Plaintext()
    rec.result(meta, "encrypt", pc.time_op(lambda: enc.encrypt(px, dst), reps, W))
    rec.result(meta, "decrypt", pc.time_op(lambda: dec.decrypt(a, ptd), reps, W))
    rec.result(meta, "add", pc.time_op(lambda: ev.add(a, b, dst), reps, W))

    def mul_relin():
        ev.multiply(a, b, dst); ev.relinearize_inplace(dst, rk)
    rec.result(meta, "mul_relin", pc.time_op(mul_relin, reps, W))
    rec.result(meta, "rotate", pc.time_op(lambda: ev.rotate_rows(a, 1, gk, dst), reps, W))
    bench_ntt_limb(ctx, ev, a, meta, rec, reps, W, ckks=False)


def main():
    args = pc.parse_args("seal")
    rec = pc.Recorder("seal", seal_version())
    rec.doc["python_call_overhead_us"] = round(pc.python_call_overhead_us(), 3)
    rec.note("SEAL via tenseal.sealapi (pybind11); single-threaded library. Each timed call pays Python + "
             "pybind11 dispatch (~1 us; the empty-Python-call cost is in python_call_overhead_us).")
    rec.note("encrypt = public-key encryption of a pre-encoded plaintext; decrypt = Decryptor.decrypt only "
             "(no decode).")
    rec.note("add/mul/rescale/rotate are out-of-place into a reused destination ciphertext (SEAL copies "
             "the first operand into it, then works in place).")
    rec.note("mul_relin_rescale = multiply + relinearize_inplace + rescale_to_next_inplace; rescale = "
             "rescale_to_next of a relinearized product at the top level.")
    rec.note("key_switch: omitted - SEAL's Evaluator exposes no stand-alone key switch (switch_key_inplace "
             "is private); relinearize and rotate are the key-switching ops.")
    rec.note("CKKS precision (max_err_log2/mean_err_log2 on encrypt, mul_relin_rescale, rotate): log2 of the "
             "max/mean |decrypted - plaintext result| over all slots, inputs uniform in [-1, 1], one output "
             "of the op (public-key encryption; a*b relinearized and rescaled; rotation by 1).")
    rec.note("rotate: CKKS rotate_vector(+1) / BFV rotate_rows(+1) with a Galois key for that single step.")
    rec.note("ntt_limb: SEAL exposes no bare NTT; measured as Evaluator.transform_to_ntt of a coefficient-form "
             "ciphertext at the last level (1 limb, 2 polynomials), divided by 2; includes an O(N) copy. "
             "(sealapi's util.ntt_negacyclic_harvey takes a Python list, so list conversion would dominate.)")
    rec.note("BFV plaintext modulus is PlainModulus.Batching(N, 20) (a 20-bit prime), coeff modulus "
             "CoeffModulus.BFVDefault(N, 128-bit).")
    rec.note("Security: SEALContext is built with sec_level TC128 (SEAL enforces the HE-standard bound) for "
             "N <= 2^15; SEAL has no 128-bit table entry for N = 2^16, so there the harness checks "
             "log2 QP <= 1770 itself and passes sec_level NONE.")
    configs = pc.load_configs(args)
    for cfg in configs:
        ctx = make_context(cfg)
        if cfg["scheme"] == "ckks":
            bench_ckks(cfg, ctx, rec, args)
        else:
            bench_bfv(cfg, ctx, rec, args)
    rec.write(args.out)


if __name__ == "__main__":
    main()
