"""The Python examples at a small size, each checked against its plaintext twin."""

import os
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "python")
sys.path.insert(0, EXAMPLES)


def test_titanic_multiprocessing_matches_plaintext_training():
    import titanic_multiprocessing as t

    w, w_plain, stats = t.train(workers=2, epochs=2, rows=200, log=lambda *_: None)
    # Same σ3 polynomial, same steps: CKKS error only (~1e-9 measured at 2^40).
    np.testing.assert_allclose(w, w_plain, atol=1e-5)
    assert np.abs(w).max() > 1e-2  # it moved
    assert stats["rows"] == 200 and len(stats["epoch_s"]) == 2


def test_credit_federated_matches_plaintext_averaging():
    import credit_federated as c

    w, w_plain, stats = c.train(banks=3, rounds=3, log=lambda *_: None)
    np.testing.assert_allclose(w, w_plain, atol=1e-5)
    assert stats["accuracy"] > 0.7  # ~0.8 on the held-out fifth (plaintext reference ~0.85)


def test_mnist_lenet1_agrees_with_plaintext_model():
    import mnist_lenet1 as m

    r = m.run(limit=16, log=lambda *_: None)
    assert r["images"] == 16
    assert r["agreement"] == 1.0
    assert r["max_logit_error"] < 1.0  # 2^25 chain: ~0.3 at most over all 10,000 images


def test_ray_mnist_on_a_local_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install ray); the example needs it")
    import ray_mnist as rm

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = rm.run(images=8, shards=2, log=lambda *_: None)
    finally:
        ray.shutdown()
    assert r["shards"] == 2 and r["images"] == 8
    assert r["agreement"] == 1.0 and r["max_logit_error"] < 1.0
