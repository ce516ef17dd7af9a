"""Batched encrypted LeNet-1 on numpy MNIST: one image per slot, 4096 images per batch.

The key holder encrypts the images, the bundled LeNet-1 runs on the ciphertexts (conv, square,
average pooling, dense: CKKS, N = 2^13, 5 levels, 128-bit), and the key holder decrypts the
logits, which are compared with the same model in plaintext.

    python examples/python/mnist_lenet1.py --limit 10000
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _data  # noqa: E402
import hetensor as he  # noqa: E402


def run(limit=10000, batch=4096, log=print):
    images, labels = _data.mnist_test(limit)
    model = he.Model.lenet1()
    ctx = he.Context.ckks(log_n=13, scale_bits=25, preset=True, rotations=[])
    batch = min(batch, ctx.slots)
    logits, t0 = [], time.perf_counter()
    for start in range(0, len(images), batch):
        x = ctx.encrypt(images[start:start + batch])   # 784 ciphertexts, ~0.3 GB
        # donate=True: the model frees x's ciphertexts once its first layer has read them.
        logits.append(model(x, donate=True).decrypt())  # [b, 10]
        log(f"images {start}..{start + len(logits[-1])}: {time.perf_counter() - t0:.1f} s")
    seconds = time.perf_counter() - t0
    logits = np.concatenate(logits)
    plain = model.forward(images)
    return {
        "images": len(images),
        "seconds": seconds,
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "plain_accuracy": float((plain.argmax(1) == labels).mean()),
        "agreement": float((logits.argmax(1) == plain.argmax(1)).mean()),
        "max_logit_error": float(np.abs(logits - plain).max()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = run(a.limit, a.batch, log=(lambda *_: None) if a.json else print)
    print(json.dumps(r) if a.json else
          f"{r['images']} images in {r['seconds']:.1f} s: accuracy {r['accuracy']:.4f} "
          f"(plaintext {r['plain_accuracy']:.4f}), agreement {r['agreement']:.4f}, "
          f"max logit error {r['max_logit_error']:.3f}")


if __name__ == "__main__":
    main()
