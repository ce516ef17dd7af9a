"""The numpy API against numpy itself (CKKS: within its precision; BFV: exactly)."""

import pickle

import numpy as np
import pytest

import hetensor as he


@pytest.fixture(scope="module")
def ckks():
    return he.Context.ckks(depth=3, scale_bits=40)


@pytest.fixture(scope="module")
def bfv():
    return he.Context.bfv(log_n=13, plain_bits=20)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(50, 3)), rng.normal(size=(50, 3))


def close(t, want, tol=1e-6):
    got = t.decrypt()
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, atol=tol)


def test_ckks_elementwise(ckks, data):
    a, b = data
    A, B = ckks.encrypt(a), ckks.encrypt(b)
    close(A + B, a + b)
    close(A - B, a - b)
    close(A * B, a * b)
    close(-A, -a)
    close(2.0 - A, 2.0 - a)
    close(A * 3.0, a * 3.0)
    close(A * b, a * b)  # one plaintext value per sample
    close(A + np.array([1.0, 2.0, 3.0]), a + [1.0, 2.0, 3.0])  # the same for every sample
    close(A.square(), a * a)
    close(A.polyval([0.5, 0.25, 0.0, -0.02]), 0.5 + 0.25 * a - 0.02 * a**3)
    assert (A * B).level == A.level - 1


def test_ckks_levels_and_scales_align(ckks, data):
    a, b = data
    A, B = ckks.encrypt(a), ckks.encrypt(b)
    close(A * B + A, a * b + a)  # a fresh operand meets a product one level down
    close((A * B) * (A * B) - B, (a * b) ** 2 - b)
    # Integer constants are exact at scale 1: no level; others take one rescale.
    for k in (2, -1, 0, 7.0):
        assert (A * k).level == A.level and (A * k).scale == A.scale, k
        close(A * k, a * k)
    assert (A * np.array([3, -2, 1])).level == A.level
    close(A * np.array([3, -2, 1]), a * [3, -2, 1])
    assert (A * 2.5).level == A.level - 1
    close(A * 2.5, a * 2.5)


def test_ckks_matmul_sum_rotate(ckks, data):
    a, _ = data
    A = ckks.encrypt(a)
    w = np.random.default_rng(1).normal(size=(3, 4))
    close(A @ w, a @ w)
    close(A @ w[:, 0], a @ w[:, 0])
    close(A.sum(axis=1), a.sum(axis=1))
    B = ckks.encrypt(a[:, ::-1].copy())
    close(A.dot(B), (a * a[:, ::-1]).sum(axis=1))
    assert A.dot(B).level == A.level - 1
    close(A.sum(axis=0), a.sum(axis=0, keepdims=True))
    close((A + 1.0).sum(axis=0), (a + 1.0).sum(axis=0, keepdims=True))  # padding masked
    padded = np.vstack([a, np.zeros((ckks.slots - len(a), 3))])
    close(A.rotate(5), np.roll(padded, -5, axis=0)[: len(a)])
    close(A.rotate(3).rotate(-3), a)  # composed from power-of-two keys


def test_sum_rotations_and_their_radix(data):
    """The default keys (`sum_rotations(slots)`: powers of two and 3·4^k) sum in radix-4
    rounds; keys for the powers of two only (`radix=2`) sum by doubling: both give numpy's."""
    a, _ = data
    assert he.sum_rotations(16) == [1, 2, 3, 4, 8, 12]
    assert he.sum_rotations(16, 2) == [1, 2, 4, 8]
    for steps in (None, he.sum_rotations(64, 2)):
        ctx = he.Context.ckks(depth=2, scale_bits=40, log_n=13, rotations=steps)
        close(ctx.encrypt(a).sum(axis=0), a.sum(axis=0, keepdims=True), tol=1e-4)


def test_sums_over_samples_share_rotations_across_features():
    """`sum(axis=0)` of many features packs them into windows of shared sums where the keys
    allow (the default keys: 9 features of 900 samples in 2 groups at 4096 slots); with keys
    for the sum only (powers of two below 1024) each feature is summed alone. Both give
    numpy's sums, also for a tensor whose padding must be masked first."""
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(900, 9)), rng.normal(size=(900, 1))
    want = x.sum(axis=0, keepdims=True)
    for steps in (None, he.sum_rotations(1024, 2)):
        ctx = he.Context.ckks(depth=2, scale_bits=40, log_n=13, rotations=steps)
        X = ctx.encrypt(x)
        close(X.sum(axis=0), want, tol=1e-4)
        close((X * ctx.encrypt(y)).sum(axis=0), (x * y).sum(axis=0, keepdims=True), tol=1e-4)
        close((X + 1.0).sum(axis=0), want + len(x), tol=1e-4)  # padding masked


def test_ckks_without_the_extra_special_prime(data):
    """`extra_special_primes=0` (SEAL's key-switching precision, fewer digits) still computes
    products, sums and rotations to ~1e-5; a negative count is refused by the binding."""
    a, b = data
    fast = he.Context.ckks(depth=2, scale_bits=40, log_n=13, extra_special_primes=0)
    A, B = fast.encrypt(a), fast.encrypt(b)
    close(A * B, a * b, tol=1e-5)
    close(A.dot(B), (a * b).sum(axis=1), tol=1e-5)
    close(A.sum(axis=0), a.sum(axis=0, keepdims=True), tol=1e-4)
    with pytest.raises(OverflowError):
        he.Context.ckks(depth=2, extra_special_primes=-1)


def test_broadcast_tensor(ckks, data):
    a, _ = data
    w = ckks.encrypt(np.array([1.0, -2.0, 0.5]), broadcast=True)
    assert w.shape == [3] and w.batch is None
    close(w, [1.0, -2.0, 0.5])
    close(ckks.encrypt(a) * w, a * [1.0, -2.0, 0.5])
    close(w * a, a * [1.0, -2.0, 0.5])  # per-sample plaintext: the result gets a batch
    assert (w * a).batch == len(a) and (w - a).shape == [len(a), 3]
    close((w - a).sum(axis=0), ([1.0, -2.0, 0.5] - a).sum(axis=0, keepdims=True))


def test_bfv_exact(bfv):
    x = np.arange(-6, 6).reshape(4, 3)
    X = bfv.encrypt(x)
    assert X.decrypt().dtype == np.int64
    np.testing.assert_array_equal((X * X + X * 2 - 1).decrypt(), x * x + 2 * x - 1)
    np.testing.assert_array_equal((X @ np.array([[1], [2], [3]])).decrypt(), x @ [[1], [2], [3]])
    np.testing.assert_array_equal(X.sum(axis=0).decrypt(), x.sum(axis=0, keepdims=True))
    np.testing.assert_array_equal(X.dot(X).decrypt(), (x * x).sum(axis=1))
    np.testing.assert_array_equal(X.polyval([1, 2, 3]).decrypt(), 1 + 2 * x + 3 * x * x)
    np.testing.assert_array_equal((X - x).decrypt(), np.zeros_like(x))
    with pytest.raises(TypeError):
        X + np.array([0.5, 1.5, 2.5])


def test_bfv_context_from_the_parameter_api():
    """Context.bfv on BfvParams: explicit primes and digits, the noise budget enforced, the
    key set round-tripped; rows rotate exactly."""
    small = he.Context.bfv(log_n=13, plain_bits=20, q_primes=3, dnum=3, rotations=[1])
    assert small.scheme == "bfv" and small.slots == 8192 and small.max_level == 2
    t = small.plain_modulus
    assert t.bit_length() == 20 and t % (2 * 8192) == 1  # a batching prime
    x = np.arange(-8, 8).reshape(8, 2)
    X = small.encrypt(x)
    np.testing.assert_array_equal((X * X).decrypt(), x * x)
    # Three primes hold one product: the second is refused, not decrypted wrong.
    with pytest.raises(he.NoiseBudgetError, match="noise budget"):
        X * X * X
    padded = np.vstack([x, np.zeros((4096 - 8, 2), dtype=np.int64)])
    np.testing.assert_array_equal(X.rotate(1).decrypt(), np.roll(padded, -1, axis=0)[:8])
    # Values wrap modulo t, shown centered.
    big = small.encrypt(np.array([[t // 2]]))
    assert (big + 1).decrypt()[0, 0] == t // 2 + 1 - t
    full = he.Context.from_bytes(small.to_bytes(secret_key=True))
    assert full.has_secret_key and full.plain_modulus == t and full.key_id == small.key_id
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(X)).decrypt(full), x)
    worker = pickle.loads(pickle.dumps(small.public()))
    np.testing.assert_array_equal((worker.encrypt(x) * 3).decrypt(small), 3 * x)
    with pytest.raises(he.ParameterError, match="preset"):
        he.Context.bfv(log_n=12)
    # Fewer digits: a smaller relinearization key, the same results.
    two = he.Context.bfv(log_n=13, plain_bits=20, q_primes=4, dnum=2, rotations=[])
    four = he.Context.bfv(log_n=13, plain_bits=20, q_primes=4, rotations=[])
    assert two.max_level == four.max_level == 3
    assert len(two.public().to_bytes()) < len(four.public().to_bytes())
    np.testing.assert_array_equal((two.encrypt(x) * two.encrypt(x)).decrypt(), x * x)
    # `dnum` alone applies to the preset's primes (it was ignored): the 2^13 preset fills the
    # 128-bit budget, so two digits (a larger special modulus) are refused, not dropped.
    with pytest.raises(he.ParameterError, match="128-bit"):
        he.Context.bfv(log_n=13, dnum=2, rotations=[])
    with pytest.raises(he.ParameterError):
        he.Context.bfv(log_n=13, dnum=100)
    with pytest.raises(he.ParameterError, match="60"):
        he.Context.bfv(plain_bits=70)
    with pytest.raises(he.ParameterError, match="128-bit"):
        he.Context.bfv(log_n=13, q_primes=20)


def test_pickle_and_bytes(ckks, data):
    a, _ = data
    A = ckks.encrypt(a)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(A)).decrypt(), a, atol=1e-6)
    pub = pickle.loads(pickle.dumps(ckks.public()))
    assert not pub.has_secret_key and pub.key_id == ckks.key_id
    with pytest.raises(he.HetensorError, match="secret key"):
        pickle.dumps(ckks)
    # A worker's result, made under the public context, is decrypted by the key holder.
    from_worker = pickle.loads(pickle.dumps(pub.encrypt(a) * 2.0))
    np.testing.assert_allclose(from_worker.decrypt(), 2 * a, atol=1e-6)
    full = he.Context.from_bytes(ckks.to_bytes(secret_key=True))
    assert full.has_secret_key
    np.testing.assert_allclose(A.decrypt(full), a, atol=1e-6)
    assert len(ckks.to_bytes()) < len(ckks.to_bytes(secret_key=True))


def test_errors_keep_messages(ckks, bfv, data):
    a, b = data
    A, B = ckks.encrypt(a), ckks.encrypt(b)
    with pytest.raises(he.LevelError, match="out of levels"):
        (A * B * B * B).square()
    with pytest.raises(he.DecodeError, match="truncated input"):
        he.Context.from_bytes(b"not a context")
    with pytest.raises(he.DecodeError, match="bad magic"):
        he.Context.from_bytes(b"not a context, but long enough for a header")
    blob = bytearray(A.to_bytes())
    blob[100] ^= 1
    with pytest.raises(he.DecodeError):
        he.CKKSTensor.from_bytes(bytes(blob))
    with pytest.raises(he.KeyMismatchError, match="no secret key"):
        ckks.public().encrypt(a).decrypt()
    with pytest.raises(he.ShapeError, match="batch sizes"):
        A + ckks.encrypt(a[:10])
    with pytest.raises(he.ParameterError, match="128-bit"):
        he.Context.ckks(depth=40, scale_bits=50, log_n=13)
    other = he.Context.ckks(depth=1, scale_bits=40)
    with pytest.raises(he.KeyMismatchError):
        A.decrypt(other)
    with pytest.raises(TypeError):
        bfv.encrypt(np.zeros((2, 2), dtype=np.int64)) + A
    assert issubclass(he.DecodeError, he.HetensorError)


def test_numpy_operands_on_the_left_give_tensors(ckks, bfv, data):
    a, _ = data
    A = ckks.encrypt(a)
    w = np.array([0.5, -2.0, 3.0])
    # numpy defers to the tensor (`__array_ufunc__ = None`) instead of building an object array.
    for got, want in [
        (w + A, w + a),
        (w * A, w * a),
        (w - A, w - a),
        (np.float64(1.5) * A, 1.5 * a),
        (np.float64(1.5) - A, 1.5 - a),
    ]:
        assert isinstance(got, he.CKKSTensor)
        close(got, want)
    ints = np.arange(12).reshape(4, 3)
    B = bfv.encrypt(ints)
    got = np.array([1, 2, 3]) * B
    assert isinstance(got, he.BFVTensor)
    np.testing.assert_array_equal(got.decrypt(), ints * [1, 2, 3])
    with pytest.raises(he.ShapeError, match="the samples"):
        np.ones((3, 50)) @ A  # [batch, d]: m @ x would mix samples; x @ m.T is meant


def test_plaintext_matrix_on_the_left(ckks):
    """m @ x contracts the tensor's second-to-last axis, as numpy does, when it is a feature
    axis; against numpy for batched and broadcast tensors, 2-D and 1-D m."""
    rng = np.random.default_rng(5)
    x, m, v = rng.uniform(-1, 1, (5, 3, 4)), rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, 3)
    X = ckks.encrypt(x)
    b, c = rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, 4)
    B, C = ckks.encrypt(b, broadcast=True), ckks.encrypt(c, broadcast=True)
    w = rng.uniform(-1, 1, (2, 4))
    for got, want in [(m @ X, m @ x), (v @ X, v @ x), (m @ B, m @ b), (v @ B, v @ b), (w @ C, w @ c), (c @ C, c @ c)]:
        assert isinstance(got, he.CKKSTensor)
        close(got, want)
    for bad, words in [(np.ones((2, 2, 3)), "1-D or 2-D"), (np.ones((2, 4)), "4 columns but the tensor's axis 1 has 3")]:
        with pytest.raises(he.ShapeError, match=words):
            bad @ X


def test_indexing_picks_features_like_numpy(ckks, bfv):
    """x[...] against numpy's basic indexing: features picked, axes kept or dropped, a prefix
    of the samples; what would move samples between slots is refused, not rotated."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (5, 3, 4))
    X = ckks.encrypt(x)
    for key in [
        (slice(None), 1),
        (Ellipsis, slice(1, 3)),
        (slice(None), slice(None, None, -1), 2),
        (slice(None), -1, slice(0, 4, 2)),
        slice(0, 2),
        (slice(3), 0, -1),
        (Ellipsis,),
        (),
    ]:
        got = X[key]
        assert isinstance(got, he.CKKSTensor) and got.shape == list(x[key].shape), key
        close(got, x[key])
    # The samples dropped by a prefix still sit in their slots: a sum over samples masks them.
    close(X[:2].sum(axis=0), x[:2].sum(axis=0, keepdims=True))
    ints = np.arange(24).reshape(4, 6)
    B = bfv.encrypt(ints)
    np.testing.assert_array_equal(B[:, 1::2].decrypt(), ints[:, 1::2])
    one = bfv.encrypt(ints[0], broadcast=True)
    np.testing.assert_array_equal(one[-2:].decrypt(), ints[0][-2:])
    for key, error, words in [
        (0, he.ShapeError, "prefix"),
        (slice(1, 3), he.ShapeError, "prefix"),
        ((slice(None), 5), IndexError, "out of bounds for axis 1 with size 3"),
        ((slice(None), 1, 2, 3), IndexError, "too many indices"),
        ((Ellipsis, 0, Ellipsis), IndexError, "single ellipsis"),
        ((slice(None), slice(2, 2)), IndexError, "selects nothing"),
        ((slice(None), None), IndexError, "newaxis"),
        ("a", TypeError, "not str"),
    ]:
        with pytest.raises(error, match=words):
            X[key]


def test_powers_and_numpy_protocols(ckks, bfv):
    """x ** n against numpy in ceil(log2 n) levels; np.sum works; what numpy or Python would
    otherwise turn into object arrays or failures at the first index is a clear TypeError."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (6, 2))
    X = ckks.encrypt(x)
    for n, levels in [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (7, 3)]:
        got = X**n
        assert X.level - got.level == levels, n
        close(got, x**n)
    ints = np.arange(-3, 3).reshape(6, 1)
    np.testing.assert_array_equal((bfv.encrypt(ints) ** 5).decrypt(), ints**5)
    # polyval: ceil(log2 d) + 1 levels, or ceil(log2(d + 1)) with shallow=True (CKKS).
    sigma3 = [0.5, 0.197, 0.0, -0.004]
    want = np.polynomial.polynomial.polyval(x, sigma3)
    for shallow, levels in [(False, 3), (True, 2)]:
        got = X.polyval(sigma3, shallow=shallow)
        assert X.level - got.level == levels
        close(got, want)
    with pytest.raises(he.HetensorError, match="Horner"):
        bfv.encrypt(ints).polyval([1, 2, 3], shallow=True)
    close(np.sum(X, axis=1), x.sum(axis=1))
    for bad, error, words in [
        (lambda: X**0, he.HetensorError, "ones"),
        (lambda: X**16, he.LevelError, r"x \*\* 16 needs 4 levels but the ciphertext is at level 3"),
        (lambda: X.polyval(np.ones(9)), he.LevelError, "degree 8 needs 4 levels but the ciphertext is at level 3"),
        (lambda: X.polyval(np.ones(16), shallow=True), he.LevelError, "degree 15 needs 4 levels"),
        (lambda: X**1.5, TypeError, "integer exponent"),
        (lambda: X**-1, TypeError, "integer exponent"),
        (lambda: pow(X, 2, 5), TypeError, "modulus"),
        (lambda: 1 / X, TypeError, "polyval"),
        (lambda: list(X), TypeError, "not iterable"),
        (lambda: np.asarray(X), TypeError, "decrypt"),
        (lambda: np.sum(X, out=np.zeros(2)), TypeError, "no dtype or out"),
        (lambda: ckks.encrypt(np.ones((4, 0))), he.ShapeError, "holds no values"),
        (lambda: X * np.nan, he.HetensorError, "not finite"),
    ]:
        with pytest.raises(error, match=words):
            bad()


def test_division_by_plaintext(ckks, bfv, data):
    a, _ = data
    A = ckks.encrypt(a)
    close(A / 4, a / 4)
    close(A / np.array([2.0, -0.5, 8.0]), a / [2.0, -0.5, 8.0])
    with pytest.raises(ZeroDivisionError):
        A / np.array([1.0, 0.0, 2.0])
    with pytest.raises(TypeError, match="encrypted tensor"):
        A / A
    with pytest.raises(TypeError, match="dot"):
        A @ A
    with pytest.raises(TypeError, match="integers modulo t"):
        bfv.encrypt(np.arange(3).reshape(3, 1)) / 2


def test_odd_inputs_are_refused_with_messages(ckks, bfv):
    with pytest.raises(he.ShapeError, match="empty batch"):
        ckks.encrypt(np.zeros((0, 3)))
    # numpy would wrap 2^64 - 1 to -1 on the way to int64.
    with pytest.raises(he.HetensorError, match="18446744073709551615"):
        bfv.encrypt(np.array([2**64 - 1], dtype=np.uint64))
    small = np.array([2**20 - 1], dtype=np.uint64)  # fits int64, then the range of t decides
    with pytest.raises(he.HetensorError, match="signed range"):
        bfv.encrypt(small)
    np.testing.assert_array_equal(bfv.encrypt(np.array([7], dtype=np.uint64)).decrypt(), [7])
    few = he.Context.ckks(depth=1, scale_bits=40, log_n=13, rotations=[1])
    with pytest.raises(he.KeyMismatchError, match="rotation step 2 .*rotations="):
        few.encrypt(np.ones((3, 1))).rotate(2)
    A = ckks.encrypt(np.ones((2, 1)))
    with pytest.raises(TypeError, match="BFVTensor"):
        A + bfv.encrypt(np.ones((2, 1), dtype=np.int64))
    # BFV takes floats holding integers (x * 2.0), and says which value is not one.
    ints = np.arange(4).reshape(2, 2)
    B = bfv.encrypt(ints.astype(np.float64))
    np.testing.assert_array_equal((B * 2.0).decrypt(), ints * 2)
    for bad, words in [(1.5, "value 1.5 is not"), (np.nan, "value NaN is not"), (2.0**63, "is not a 64-bit")]:
        with pytest.raises(TypeError, match=words):
            B + bad
    with pytest.raises(TypeError, match="Python integers beyond 64 bits"):
        B + 2**70


def test_threads():
    assert he.get_num_threads() >= 1
    with pytest.raises(ValueError):
        he.set_num_threads(0)
    with pytest.raises(ValueError, match="1..=1024"):
        he.set_num_threads(10**6)  # refused before starting any thread
    import os
    import subprocess
    import sys

    probe = "import hetensor as he; he.Context.ckks(depth=1, log_n=13); print(he.get_num_threads())"
    for value, ok in [("3", True), ("abc", False), ("0", False), ("100000", False)]:
        env = dict(os.environ, HETENSOR_NUM_THREADS=value)
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
        if ok:
            assert r.returncode == 0 and r.stdout.strip() == value, r.stderr
        else:
            assert r.returncode != 0 and "HETENSOR_NUM_THREADS must be a thread count" in r.stderr, r.stderr


def test_stub_names_match_the_module():
    import ast
    import os

    import hetensor._hetensor as mod

    stub = os.path.join(os.path.dirname(he.__file__), "_hetensor.pyi")
    tree = ast.parse(open(stub).read())
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    public = {n for n in dir(mod) if not n.startswith("__")}
    assert public == names - {"_Tensor"}


def test_heavy_calls_release_the_gil(ckks):
    """Python keeps running in another thread while a tensor operation runs."""
    import threading
    import time

    x = np.random.default_rng(0).normal(size=(ckks.slots, 64))
    span = {}

    def work():
        span["start"] = time.perf_counter()
        ckks.encrypt(x).square()
        span["end"] = time.perf_counter()

    ticks = []
    t = threading.Thread(target=work)
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    inside = [s for s in ticks if span["start"] <= s <= span["end"]]
    gaps = np.diff([span["start"]] + inside + [span["end"]])
    # Holding the GIL would stop this loop for the whole operation (one gap = the span).
    assert gaps.max() < 0.5 * (span["end"] - span["start"])


def test_readme_example_runs():
    import os
    import re

    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")
    text = open(readme).read()
    section = text[text.index("## Use it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def _square_in_child(data):
    ctx = he.Context.from_bytes(data[0])  # noqa: F841 (the tensor unpickles under it)
    return pickle.dumps(pickle.loads(data[1]).square())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_forked_worker_gets_its_own_thread_pool(ckks, data):
    """A child forked after the parent used hetensor computes (the parent's pool has no
    threads there); concurrent.futures works with pickled tensors."""
    import concurrent.futures
    import multiprocessing as mp

    a, _ = data
    A = ckks.encrypt(a)
    A.square()  # the parent's pool is running
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
        out = ex.submit(_square_in_child, (ckks.public().to_bytes(), pickle.dumps(A)))
        got = pickle.loads(out.result(timeout=120))
    np.testing.assert_allclose(got.decrypt(), a * a, atol=1e-6)
