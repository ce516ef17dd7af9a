"""Loaders for the data sets bundled in the repository's data/ (numpy only)."""

import csv
import gzip
import os

import numpy as np

DATA = os.environ.get(
    "HETENSOR_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data")
)


def titanic(path=None):
    """Kaggle Titanic: X [891, 9] (bias, class 1/2, sex, age, family size, log fare,
    embarked C/Q; continuous columns standardized), y [891] in {0, 1}."""
    with open(path or os.path.join(DATA, "titanic", "train.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    ages = [float(r["Age"]) for r in rows if r["Age"]]
    median_age = float(np.median(ages))
    feats, labels = [], []
    for r in rows:
        age = float(r["Age"]) if r["Age"] else median_age
        fare = np.log1p(float(r["Fare"] or 0.0))
        feats.append([
            1.0,
            r["Pclass"] == "1",
            r["Pclass"] == "2",
            r["Sex"] == "female",
            age,
            int(r["SibSp"]) + int(r["Parch"]),
            fare,
            r["Embarked"] == "C",
            r["Embarked"] == "Q",
        ])
        labels.append(float(r["Survived"]))
    x = np.array(feats, dtype=float)
    for c in (4, 5, 6):
        x[:, c] = (x[:, c] - x[:, c].mean()) / x[:, c].std()
    return x, np.array(labels)


def credit(path=None):
    """UCI credit approval (crx): rows with '?' dropped, categoricals one-hot, continuous
    standardized, a bias column first; y = 1 for '+'."""
    with open(path or os.path.join(DATA, "credit", "crx.data")) as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    rows = [r for r in rows if "?" not in r]
    continuous = {1, 2, 7, 10, 13, 14}
    cols = [np.ones(len(rows))]
    for j in range(15):
        v = [r[j] for r in rows]
        if j in continuous:
            a = np.array(v, dtype=float)
            if j in (13, 14):
                a = np.log1p(a)
            cols.append((a - a.mean()) / a.std())
        else:
            for level in sorted(set(v))[1:]:
                cols.append(np.array([x == level for x in v], dtype=float))
    return np.stack(cols, axis=1), np.array([r[15] == "+" for r in rows], dtype=float)


def _idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def mnist_test(limit=None):
    """The MNIST test set: images [n, 1, 28, 28] in [0, 1], labels [n]."""
    d = os.path.join(DATA, "mnist")
    images = _idx(os.path.join(d, "t10k-images-idx3-ubyte.gz"))[:limit]
    labels = _idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))[:limit]
    return images.reshape(-1, 1, 28, 28).astype(np.float64) / 255.0, labels.astype(np.int64)
