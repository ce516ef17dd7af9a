#!/usr/bin/env python3
"""TenSEAL side of `hetensor io-bench`: the seed workflow's serialization costs, measured.

Context: N = 16384, coeff_mod_bit_sizes summing to 438 bits, scale 2^40, relinearization keys and
TenSEAL's default Galois keys (power-of-two rotations). Then the 891 Titanic rows, one CKKSVector
each (as the seed did), encrypted, serialized and deserialized. Prints one JSON object.
Run with the venv from scripts/peers/setup.sh: venv-seal/bin/python scripts/peers/tenseal_io.py
"""
import csv, json, math, resource, sys, time

import tenseal as ts

path = sys.argv[1] if len(sys.argv) > 1 else "data/titanic/train.csv"

t = time.perf_counter()
ctx = ts.context(ts.SCHEME_TYPE.CKKS, 16384, coeff_mod_bit_sizes=[60, 40, 40, 40, 40, 40, 40, 40, 40, 58])
ctx.global_scale = 2**40
ctx.generate_galois_keys()
keygen = time.perf_counter() - t

t = time.perf_counter()
public = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)
ser = time.perf_counter() - t
t = time.perf_counter()
loaded = ts.context_from(public)
deser = time.perf_counter() - t

# Same 10 features + bias as hetensor's loader (standardization does not change the costs).
rows = []
with open(path) as f:
    for r in csv.DictReader(f):
        age = float(r["Age"]) if r["Age"] else 28.0
        fare = float(r["Fare"]) if r["Fare"] else 14.45
        rows.append([
            1.0 if r["Sex"] == "female" else 0.0,
            1.0 if r["Pclass"] == "1" else 0.0,
            1.0 if r["Pclass"] == "2" else 0.0,
            age / 30.0, float(r["SibSp"]), float(r["Parch"]), math.log1p(fare),
            1.0 if r["Embarked"] == "C" else 0.0,
            1.0 if r["Embarked"] == "Q" else 0.0,
            1.0,
        ])

t = time.perf_counter()
enc = [ts.ckks_vector(ctx, r) for r in rows]
encrypt = time.perf_counter() - t
t = time.perf_counter()
blobs = [v.serialize() for v in enc]
ser_rows = time.perf_counter() - t
t = time.perf_counter()
back = [ts.ckks_vector_from(ctx, b) for b in blobs]
deser_rows = time.perf_counter() - t

print(json.dumps({
    "library": "TenSEAL " + getattr(ts, "__version__", "?"),
    "ring_degree": 16384,
    "log_q": 438,
    "keygen_seconds": keygen,
    "public_context_bytes": len(public),
    "context_serialize_seconds": ser,
    "context_deserialize_seconds": deser,
    "rows": len(rows),
    "per_row_encrypt_seconds": encrypt,
    "per_row_serialize_seconds": ser_rows,
    "per_row_deserialize_seconds": deser_rows,
    "per_row_bytes": sum(len(b) for b in blobs),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}, indent=1))
