"""Bytes from a worker, a file or a pickle are untrusted: every decoder either returns what was
written or raises `hetensor.DecodeError` (or another `HetensorError`) with a message. Never a
panic (pyo3's `PanicException` escapes `except Exception`), never a huge allocation from a
header's claim. Mutations are drawn from a fixed seed, so a failure repeats."""

import pickle
import struct

import numpy as np
import pytest

import hetensor as he

RNG_SEED = 19


@pytest.fixture(scope="module")
def ckks():
    return he.Context.ckks(depth=1, scale_bits=40, log_n=13)


@pytest.fixture(scope="module")
def bfv():
    return he.Context.bfv(log_n=13, plain_bits=20)


def tensors(ckks, bfv):
    x = np.random.default_rng(RNG_SEED).normal(size=(6, 2))
    return [
        (he.CKKSTensor, ckks.encrypt(x), ckks),
        (he.CKKSTensor, ckks.public().encrypt(x) * 2.0, ckks),  # public-key: two polys each
        (he.BFVTensor, bfv.encrypt(np.arange(12).reshape(6, 2)), bfv),
    ]


def decodes_or_refuses(decode, blob):
    """Decodes `blob`, or checks that the refusal is hetensor's own, with a message. Returns the
    decoded object or None."""
    try:
        return decode(blob)
    except he.HetensorError as e:
        assert str(e), "a refusal without a message"
        return None


def mutations(blob, rng, flips, cuts):
    """Single-byte flips at random places, the header's bytes first, and truncations."""
    n = len(blob)
    places = list(range(min(n, 64))) + list(rng.integers(0, n, flips))
    for i in places:
        b = bytearray(blob)
        b[i] ^= 1 << int(rng.integers(0, 8))
        yield bytes(b)
    for cut in sorted({0, 1, 4, 7, 8, 40, n - 1} | set(rng.integers(0, n, cuts).tolist())):
        if 0 <= cut < n:
            yield blob[:cut]


def test_tensor_bytes_decode_or_are_refused(ckks, bfv):
    rng = np.random.default_rng(RNG_SEED)
    for cls, t, ctx in tensors(ckks, bfv):
        blob = t.to_bytes()
        assert np.array_equal(cls.from_bytes(blob).decrypt(ctx), t.decrypt(ctx))
        refused = 0
        for bad in mutations(blob, rng, flips=150, cuts=40):
            got = decodes_or_refuses(lambda b: cls.from_bytes(b, ctx), bad)
            if got is None:
                refused += 1
                continue
            # A flip the format cannot see (the `clean` flag, a small batch) gives a tensor that
            # decrypts or is refused like any other.
            decodes_or_refuses(lambda _: got.decrypt(ctx), None)
        # Every ciphertext is checksummed: nearly every change is caught.
        assert refused >= 0.9 * (64 + 150 + 40)


def test_pickles_are_decoded_by_the_same_checks(ckks):
    t = ckks.encrypt(np.ones((3, 2)))
    blob = pickle.dumps(t)
    raw = t.to_bytes()
    start = blob.find(raw[:16])
    assert start > 0, "the pickle carries the tensor's bytes"
    bad = bytearray(blob)
    bad[start + len(raw) // 2] ^= 0x10
    with pytest.raises(he.DecodeError):
        pickle.loads(bytes(bad))


def header_with(raw, *, nd=None, dims=None, batch=None):
    """`raw` (a tensor's bytes) with its header's axes or batch rewritten: magic 4, version /
    tag / flags 3, fingerprint, key id, batch, axis count, axes (little-endian u64s)."""
    b = bytearray(raw)
    off = 4 + 3 + 8 + 8
    if batch is not None:
        b[off : off + 8] = struct.pack("<Q", batch)
    off += 8
    if nd is not None:
        b[off : off + 8] = struct.pack("<Q", nd)
    if dims is not None:
        for i, d in enumerate(dims):
            b[off + 8 + 8 * i : off + 16 + 8 * i] = struct.pack("<Q", d)
    return bytes(b)


def test_header_claims_are_bounded_by_the_bytes(ckks):
    t = ckks.encrypt(np.ones((3, 2)))  # batch 3 in the slots; one axis of 2 ciphertexts
    raw = t.to_bytes()
    assert he.CKKSTensor.from_bytes(header_with(raw, dims=[2]), ckks).shape == t.shape
    cases = [
        ("more ciphertexts than the", header_with(raw, dims=[1 << 40])),
        # Two axes whose product overflows (the second is the first frame's length prefix).
        ("more ciphertexts than the", header_with(raw, nd=2, dims=[1 << 62, 4])),
        ("axes", header_with(raw, nd=1 << 50)),
        ("batch 0 outside", header_with(raw, batch=0)),
        ("outside", header_with(raw, batch=1 << 40)),
    ]
    for message, bad in cases:
        with pytest.raises(he.DecodeError, match=message):
            he.CKKSTensor.from_bytes(bad, ckks)


def test_context_bytes_decode_or_are_refused():
    rng = np.random.default_rng(RNG_SEED)
    ctx = he.Context.ckks(depth=1, scale_bits=40, log_n=13, rotations=[1])  # small, all key kinds
    blob = ctx.public().to_bytes()
    assert he.Context.from_bytes(blob).key_id == ctx.key_id
    refused = 0
    for bad in mutations(blob, rng, flips=40, cuts=20):
        got = decodes_or_refuses(he.Context.from_bytes, bad)
        if got is None:
            refused += 1
        else:
            assert not got.has_secret_key
    assert refused >= 0.9 * (64 + 40 + 20)
