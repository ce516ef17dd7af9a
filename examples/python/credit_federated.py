"""Federated credit approval (UCI crx) with encrypted aggregation.

Roles, each holding only what it needs:
- data owners (banks) hold their shard and the *public* context; each round they train the
  global model locally in plaintext and encrypt their update n_k·(w_k − w) (the weights packed
  one per slot of one ciphertext);
- the aggregator holds only the public context: it adds the encrypted updates and multiplies
  by 1/Σn_k, never seeing any bank's update;
- the key holder decrypts only the average and publishes the new global model.
Everything that crosses between roles is pickled, as it would be over a network.

    python examples/python/credit_federated.py --banks 3 --rounds 10
"""

import argparse
import json
import os
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _data  # noqa: E402
import hetensor as he  # noqa: E402


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def local_train(x, y, w, epochs=5, lr=0.5):
    w = w.copy()
    for _ in range(epochs):
        w -= lr / len(y) * x.T @ (sigmoid(x @ w) - y)
    return w


def bank(public_bytes, x, y, w):
    """A data owner: local training, then its update encrypted under the public context."""
    ctx = he.Context.from_bytes(public_bytes)
    update = len(y) * (local_train(x, y, w) - w)
    return pickle.dumps(ctx.encrypt(update))  # [d]: one weight per slot, one ciphertext


def aggregator(public_bytes, updates, total):
    ctx = he.Context.from_bytes(public_bytes)  # noqa: F841 (tensors below unpickle under it)
    acc = pickle.loads(updates[0])
    for u in updates[1:]:
        acc = acc + pickle.loads(u)
    return pickle.dumps(acc * (1.0 / total))


def train(banks=3, rounds=10, seed=0, log=print):
    x, y = _data.credit()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, train_idx = order[: len(y) // 5], order[len(y) // 5:]
    shards = np.array_split(train_idx, banks)

    key_holder = he.Context.ckks(depth=1, scale_bits=40, rotations=[])
    public_bytes = key_holder.public().to_bytes()
    w = np.zeros(x.shape[1])
    w_ref = np.zeros(x.shape[1])  # the same federated averaging in plaintext
    for r in range(rounds):
        updates = [bank(public_bytes, x[s], y[s], w) for s in shards]
        avg = pickle.loads(aggregator(public_bytes, updates, len(train_idx)))
        w = w + avg.decrypt()
        w_ref = w_ref + sum(len(s) * (local_train(x[s], y[s], w_ref) - w_ref) for s in shards) / len(train_idx)
        acc = float(((x[test] @ w > 0) == (y[test] > 0.5)).mean())
        log(f"round {r + 1}: held-out accuracy {acc:.3f}, max |w - w_plain| {np.abs(w - w_ref).max():.1e}")
    return w, w_ref, {
        "banks": banks,
        "rounds": rounds,
        "accuracy": float(((x[test] @ w > 0) == (y[test] > 0.5)).mean()),
        "plain_accuracy": float(((x[test] @ w_ref > 0) == (y[test] > 0.5)).mean()),
        "max_weight_error": float(np.abs(w - w_ref).max()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--banks", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    _, _, s = train(a.banks, a.rounds, log=(lambda *_: None) if a.json else print)
    print(json.dumps(s) if a.json else
          f"held-out accuracy {s['accuracy']:.3f} (plaintext federated averaging "
          f"{s['plain_accuracy']:.3f}), max weight difference {s['max_weight_error']:.1e}")


if __name__ == "__main__":
    main()
