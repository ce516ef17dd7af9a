"""hetensor: homomorphic encryption (CKKS, BFV) on numpy arrays.

Tensors use the batched layout: axis 0 is the samples (one per slot of every ciphertext), every
other element is one ciphertext. A whole batch costs what one sample costs.

>>> import numpy as np, hetensor as he
>>> ctx = he.Context.ckks(depth=2, scale_bits=40)
>>> x = ctx.encrypt(np.array([[1.0, 2.0], [3.0, 4.0]]))   # 2 samples, 2 features
>>> y = (x * x + 1.0) @ np.array([[1.0], [0.5]])          # encrypted, [2, 1]
>>> np.round(y.decrypt(), 3).tolist()
[[4.5], [18.5]]

Workers get ``ctx.public()`` (pickle it, or ``ctx.public().to_bytes()``); tensors pickle in
the compact format and find their context in the receiving process by key set.
"""

from ._hetensor import (
    BFVTensor,
    CKKSTensor,
    Context,
    DecodeError,
    HetensorError,
    KeyMismatchError,
    LevelError,
    Model,
    ModelError,
    NoiseBudgetError,
    ParameterError,
    ShapeError,
    get_num_threads,
    set_num_threads,
    sum_rotations,
)

__all__ = [
    "BFVTensor",
    "CKKSTensor",
    "Context",
    "DecodeError",
    "HetensorError",
    "KeyMismatchError",
    "LevelError",
    "Model",
    "ModelError",
    "NoiseBudgetError",
    "ParameterError",
    "ShapeError",
    "get_num_threads",
    "set_num_threads",
    "sum_rotations",
]
