"""Encrypted MNIST inference sharded over Ray tasks.

The key holder (the driver) encrypts MNIST batches and puts the *public* context in the object
store once (ray.put); each Ray task gets that reference and one encrypted batch, runs the
bundled LeNet-1 on it, and returns the encrypted logits. Only the driver can decrypt.

    python examples/python/ray_mnist.py --images 256 --shards 4            # local Ray
    RAY_ADDRESS=auto python examples/python/ray_mnist.py --images 10000     # a Ray cluster
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _data  # noqa: E402
import hetensor as he  # noqa: E402

_CONTEXTS = {}  # per worker process: public contexts by key set (loaded once, kept alive)


@ray.remote
def infer(public_bytes, batch):
    """A Ray task: the public context (shared once via ray.put) and an encrypted batch in,
    encrypted logits out."""
    import hetensor as he

    ctx = _CONTEXTS.get(hash(public_bytes))
    if ctx is None:
        ctx = _CONTEXTS[hash(public_bytes)] = he.Context.from_bytes(public_bytes)
    assert not ctx.has_secret_key
    x = he.CKKSTensor.from_bytes(batch, ctx)
    return he.Model.lenet1()(x).to_bytes()


def run(images=256, shards=4, log=print):
    x, labels = _data.mnist_test(images)
    ctx = he.Context.ckks(log_n=13, scale_bits=25, preset=True, rotations=[])
    public_ref = ray.put(ctx.public().to_bytes())             # crosses the network once
    parts = np.array_split(np.arange(len(x)), shards)
    t0 = time.perf_counter()
    futures = [infer.remote(public_ref, ctx.encrypt(x[p]).to_bytes()) for p in parts if len(p)]
    logits = np.concatenate([he.CKKSTensor.from_bytes(r, ctx).decrypt() for r in ray.get(futures)])
    seconds = time.perf_counter() - t0
    plain = he.Model.lenet1().forward(x)
    r = {
        "images": len(x),
        "shards": len(futures),
        "seconds": seconds,
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "agreement": float((logits.argmax(1) == plain.argmax(1)).mean()),
        "max_logit_error": float(np.abs(logits - plain).max()),
    }
    log(r)
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray only")
    a = p.parse_args()
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=a.num_cpus)
    try:
        r = run(a.images, a.shards, log=lambda *_: None)
    finally:
        ray.shutdown()
    print(json.dumps(r))


if __name__ == "__main__":
    main()
