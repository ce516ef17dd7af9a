"""Encrypted logistic regression on Titanic with a multiprocessing.Pool.

The key holder encrypts the passengers (one ciphertext per feature, one slot per passenger)
and, every epoch, the current weights (broadcast: the same value in every slot). Pool workers
hold only the public context and the encrypted data (sent once, when the pool starts); each
epoch, the gradient

    grad_j = Σ_samples x_j · (σ3(x·w) − y),   σ3(z) = 0.5 + 0.197 z − 0.004 z³,

is computed in two rounds over the pool, split over the features (all 891 passengers fit in
the slots of one ciphertext per feature, so splitting the rows would not split the work):

1. worker k gets only its features' encrypted weights and returns its part of x·w (one
   relinearization); the key holder adds the parts (ciphertext additions, no decryption);
2. worker k gets x·w, computes σ3(x·w) − y and returns Σ_samples x_j·(σ3 − y) for its
   features (the rotations of that sum are most of the work).

Only σ3 (3 products on one ciphertext) is computed by every worker. The key holder decrypts
only the gradient and takes the step; the plaintext model trained with the same σ3 is the
reference.

    python examples/python/titanic_multiprocessing.py --workers 2 --epochs 5
"""

import argparse
import functools
import json
import multiprocessing as mp
import operator
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _data  # noqa: E402
import hetensor as he  # noqa: E402

SIGMOID3 = [0.5, 0.197, 0.0, -0.004]
_WORKER = {}  # the worker's public context and encrypted data, kept for every epoch


def _init(public_bytes, data, threads):
    he.set_num_threads(threads)
    ctx = he.Context.from_bytes(public_bytes)
    assert not ctx.has_secret_key
    _WORKER["ctx"] = ctx  # keeps the key set loaded: the tensors below unpickle under it
    _WORKER["parts"], _WORKER["y"] = pickle.loads(data)


def partial_z(task):
    """Worker, round 1: x·w per passenger over feature group `k` (pickled tensors in and out)."""
    k, w_k = pickle.loads(task)
    return pickle.dumps(_WORKER["parts"][k].dot(w_k))            # one relin         [n]


def gradient_part(task):
    """Worker, round 2: the encrypted gradient of feature group `k` given x·w."""
    k, z = pickle.loads(task)
    err = z.polyval(SIGMOID3, shallow=True) - _WORKER["y"]          # σ3(z) − y, 2 levels [n]
    return pickle.dumps((_WORKER["parts"][k] * err).sum(axis=0))    # Σ_samples x·err    [1, d_k]


def plain_gradient(x, y, w):
    return x.T @ (np.polynomial.polynomial.polyval(x @ w, SIGMOID3) - y)


def train(workers=2, epochs=5, rows=None, lr=4.0, threads=None, log=print):
    x, y = _data.titanic()
    if rows:
        x, y = x[:rows], y[:rows]
    n, d = x.shape
    stats = {"rows": n, "features": d, "workers": workers}

    # Depth: x·w, σ3 (2 levels with shallow=True: the scale is 2^40 and |x·w| stays small,
    # so its rounding is not amplified), x·err: N = 2^14, 8192 slots. Rotation keys: the powers of two
    # below the slots, for sums over the n samples and for the windows that let one sum serve
    # several features (`sum(axis=0)` packs them).
    steps = [1 << k for k in range(13)]
    ctx = he.Context.ckks(depth=4, scale_bits=40, rotations=steps)
    assert ctx.slots == 2 * steps[-1]
    t = time.perf_counter()
    public_bytes = ctx.public().to_bytes()
    he.Context.from_bytes(public_bytes)
    stats["context_bytes"] = len(public_bytes)
    stats["context_roundtrip_s"] = time.perf_counter() - t

    t = time.perf_counter()
    groups = np.array_split(np.arange(d), workers)
    parts = [ctx.encrypt(x[:, g]) for g in groups]
    y_enc = ctx.encrypt(y)
    stats["encrypt_s"] = time.perf_counter() - t

    w_enc_model = np.zeros(d)
    w_plain = np.zeros(d)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    stats["threads_per_worker"] = threads
    data = pickle.dumps((parts, y_enc))
    stats["data_bytes"] = len(data)
    pool = mp.get_context("spawn").Pool(
        workers, initializer=_init, initargs=(public_bytes, data, threads)
    )
    pool.map(abs, range(workers))  # the workers are up and hold the data before timing
    stats["epoch_s"] = []
    try:
        for epoch in range(epochs):
            t = time.perf_counter()
            w_parts = [ctx.encrypt(w_enc_model[g], broadcast=True) for g in groups]
            z_parts = pool.map(partial_z, [pickle.dumps((k, w)) for k, w in enumerate(w_parts)])
            z = functools.reduce(operator.add, map(pickle.loads, z_parts))
            tasks = [pickle.dumps((k, z)) for k in range(workers)]
            grads = [pickle.loads(g) for g in pool.map(gradient_part, tasks)]
            grad = np.concatenate([g.decrypt()[0] for g in grads])  # only the key holder can
            w_enc_model -= lr / n * grad
            stats["epoch_s"].append(time.perf_counter() - t)
            w_plain -= lr / n * plain_gradient(x, y, w_plain)
            acc = float(((x @ w_enc_model > 0) == (y > 0.5)).mean())
            log(f"epoch {epoch + 1}: {stats['epoch_s'][-1]:.2f} s, accuracy {acc:.3f}, "
                f"max |w - w_plain| {np.abs(w_enc_model - w_plain).max():.2e}")
    finally:
        pool.close()
        pool.join()
    stats["accuracy"] = float(((x @ w_enc_model > 0) == (y > 0.5)).mean())
    stats["plain_accuracy"] = float(((x @ w_plain > 0) == (y > 0.5)).mean())
    stats["max_weight_error"] = float(np.abs(w_enc_model - w_plain).max())
    return w_enc_model, w_plain, stats


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rows", type=int, default=None, help="first N passengers (default: all 891)")
    p.add_argument("--threads", type=int, default=None, help="per worker (default: cores / workers)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    quiet = (lambda *_: None) if a.json else print
    _, _, stats = train(a.workers, a.epochs, a.rows, threads=a.threads, log=quiet)
    print(json.dumps(stats) if a.json else
          f"context {stats['context_bytes'] / 1e6:.1f} MB, serialize+deserialize "
          f"{stats['context_roundtrip_s']:.2f} s; {stats['rows']} rows encrypted in "
          f"{stats['encrypt_s']:.2f} s; accuracy {stats['accuracy']:.3f} "
          f"(plaintext, same sigmoid: {stats['plain_accuracy']:.3f})")


if __name__ == "__main__":
    main()
