"""hetensor.Model.from_onnx: ONNX files run encrypted through the Rust lowering, checked
against the plaintext graph interpreter and against numpy's outputs written beside the test
models (scripts/make_test_onnx.py)."""

import json
import os
import sys

import numpy as np
import pytest

import hetensor as he

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ONNX_TESTS = os.path.join(ROOT, "tests", "data", "onnx")
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))


def test_trained_cryptonets_on_mnist():
    """data/cryptonets.onnx (trained, 98.2 %) on 8 test digits: the encrypted logits match the
    interpreter's and the labels they predict."""
    import _data

    model = he.Model.from_onnx(os.path.join(ROOT, "data", "cryptonets.onnx"))
    assert model.input_shape == [1, 28, 28] and model.output_shape == [10]
    assert model.output_bound is None
    images, labels = _data.mnist_test(40)
    ctx = model.context(images[8:])  # calibrated on other digits than those it runs on
    assert ctx.has_secret_key and ctx.max_level >= model.levels
    assert model.output_bound > 0
    x = images[:8]
    y = model(ctx.encrypt(x))
    assert y.shape == [8, 10] and isinstance(y, he.CKKSTensor)
    got, want = y.decrypt(), model.forward(x)
    assert want.shape == (8, 10)
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (want.argmax(1) == labels[:8]).mean() >= 0.75  # it is the trained model


def test_residual_batchnorm_model_matches_numpy():
    """A residual block with BatchNorm: the encrypted output against numpy's (the .json beside
    the model), not only against this crate's interpreter."""
    model = he.Model.from_onnx(os.path.join(ONNX_TESTS, "residual_bn.onnx"))
    with open(os.path.join(ONNX_TESTS, "residual_bn.json")) as f:
        ref = json.load(f)
    x = np.array(ref["input"]).reshape(ref["input_shape"])
    want = np.array(ref["output"]).reshape(ref["output_shape"])
    ctx = model.context(np.random.default_rng(3).uniform(size=(32, *model.input_shape)))
    got = model(ctx.encrypt(x)).decrypt()
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))
    np.testing.assert_allclose(model.forward(x), want, atol=1e-5)


def test_model_errors():
    with pytest.raises(he.ModelError):
        he.Model.from_onnx(os.path.join(ONNX_TESTS, "relu_unsupported.onnx"))
    with pytest.raises(FileNotFoundError, match="no_such.onnx"):
        he.Model.from_onnx(os.path.join(ONNX_TESTS, "no_such.onnx"))
    with pytest.raises(he.DecodeError):
        he.Model.from_onnx(os.path.join(ONNX_TESTS, "residual_bn.json"))
    with pytest.raises(OSError, match="cannot read ONNX model .*onnx"):
        he.Model.from_onnx(ONNX_TESTS)  # a directory
    model = he.Model.from_onnx(os.path.join(ONNX_TESTS, "residual_bn.onnx"))
    with pytest.raises(he.ShapeError, match="calibration"):
        model.context(np.zeros((4, 5)))
    short = he.Context.ckks(depth=2, scale_bits=25, log_n=13, rotations=[])
    with pytest.raises(he.ParameterError, match="levels"):
        model(short.encrypt(np.zeros((2, *model.input_shape))))
    ctx = he.Context.ckks(depth=model.levels, scale_bits=25, rotations=[])
    with pytest.raises(he.ShapeError, match="shape"):
        model(ctx.encrypt(np.zeros((2, 5))))
    x = ctx.encrypt(np.zeros((2, *model.input_shape)))
    for bound in [-1.0, 0.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="output_bound"):
            model(x, output_bound=bound)
    # A NaN would drop out of the calibration maxima: the sample is named instead.
    calib = np.zeros((3, *model.input_shape))
    calib[1].flat[5] = np.nan
    with pytest.raises(he.HetensorError, match="calibration sample 1"):
        model.context(calib)


def test_donated_input_gives_the_same_words_and_is_then_refused():
    """model(x, donate=True) runs on the same ciphertexts as model(x): the decrypted outputs
    are identical (the evaluation is deterministic). The donated tensor is then unusable, and
    refused input is not given away."""
    import pickle

    import _data

    model = he.Model.lenet1()
    ctx = he.Context.ckks(log_n=13, scale_bits=25, preset=True, rotations=[])
    images, _ = _data.mnist_test(6)
    x = ctx.encrypt(images)
    twin = pickle.loads(pickle.dumps(x))  # the same ciphertexts, separately owned
    want = model(twin).decrypt()
    assert not twin.donated
    got = model(x, donate=True).decrypt()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, model.forward(images), atol=0.05)
    assert x.donated and "donated" in repr(x)
    for use in (lambda: x.shape, lambda: x.decrypt(), lambda: x + x, lambda: model(x)):
        with pytest.raises(ValueError, match="donated"):
            use()
    # Refused (a broadcast tensor has no batch axis): the input is still there.
    one = ctx.encrypt(images[0], broadcast=True)
    with pytest.raises(he.ShapeError, match="batch"):
        model(one, donate=True)
    assert not one.donated and one.shape == [1, 28, 28]
    # Donating the twin too gives the same words; donating it twice is refused.
    y = model(twin, donate=True)
    with pytest.raises(ValueError, match="donated"):
        model(twin, donate=True)
    np.testing.assert_array_equal(y.decrypt(), want)


def test_preset_refuses_what_its_chain_cannot_hold():
    """preset=True fixes the chain: a depth or slot count beyond it, or a key-switching choice,
    is refused (they were silently ignored); what it holds is accepted."""
    ctx = he.Context.ckks(log_n=13, scale_bits=25, preset=True, depth=5, slots=4096, rotations=[])
    assert ctx.max_level == 5 and ctx.slots == 4096
    for kwargs, words in [
        (dict(depth=6), "5 levels, not depth=6"),
        (dict(slots=8192), "4096 slots, not slots=8192"),
        (dict(extra_special_primes=0), "extra_special_primes"),
    ]:
        with pytest.raises(he.ParameterError, match=words):
            he.Context.ckks(log_n=13, scale_bits=25, preset=True, rotations=[], **kwargs)
