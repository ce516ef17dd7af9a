#!/usr/bin/env python3
"""Writes the small ONNX test models of tests/data/onnx/ and onnxruntime's outputs for them.

    python3 -m venv target/onnx-venv && target/onnx-venv/bin/pip install onnx onnxruntime numpy
    target/onnx-venv/bin/python scripts/make_test_onnx.py [--out tests/data/onnx]

Models (seeded random weights, so the files are reproducible and small):
  lenet1_square     LeNet-1, activations x*x (Mul) and Pow(x, 2), Flatten + Gemm
  lenet1_quadratic  LeNet-1 with 0.125 x^2 + 0.5 x + 0.25 as PyTorch exports it (Pow, Mul, Add),
                    Reshape + MatMul + Add for the classifier
  cryptonets        conv 5x5 stride 2 padding 1 (5 maps) -> x^2 -> fc 845->100 -> x^2 -> fc 100->10
  residual_bn       conv + BatchNormalization, x^2, depthwise conv, residual Add, 1x1 conv,
                    Concat, Sub, AveragePool, Transpose, GlobalAveragePool, Flatten, Gemm
  relu_unsupported  conv -> Relu (hetensor must refuse it, naming the node)

For each model M: M.onnx and M.json = {"input_shape", "input", "output_shape", "output"}
(row-major, onnxruntime's float32 results as decimals) for 3 inputs.
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
rng = np.random.default_rng(20240517)


def weight(*shape, fan_in=None):
    fan_in = fan_in or int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


class Builder:
    def __init__(self, input_shape):
        self.nodes, self.inits, self.n = [], [], 0
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])

    def const(self, array, name=None):
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.n += 1
        out = f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.n}", **attrs))
        return out

    def conv(self, x, cout, cin, k, stride=1, pad=0, group=1):
        w = self.const(weight(cout, cin // group, k, k))
        b = self.const(0.1 * rng.standard_normal(cout))
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=group)

    def gemm(self, x, fin, fout):
        w = self.const(weight(fout, fin))
        b = self.const(0.1 * rng.standard_normal(fout))
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, out, out_len, name):
        output = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", out_len])
        graph = helper.make_graph(self.nodes, name, [self.input], [output], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="hetensor scripts/make_test_onnx.py")
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def pow2(b, x):
    return b.op("Pow", [x, b.const(2.0)])


def quadratic(b, x):
    """0.125 x^2 + 0.5 x + 0.25, node for node as torch.onnx.export writes `a*x**2 + b*x + c`."""
    sq = b.op("Mul", [pow2(b, x), b.const(0.125)])
    lin = b.op("Mul", [x, b.const(0.5)])
    return b.op("Add", [b.op("Add", [sq, lin]), b.const(0.25)])


def lenet1(act1, act2, classifier):
    b = Builder([1, 28, 28])
    x = b.conv("input", 4, 1, 5)
    x = b.op("AveragePool", [act1(b, x)], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, 12, 4, 5)
    x = b.op("AveragePool", [act2(b, x)], kernel_shape=[2, 2], strides=[2, 2])
    return b, classifier(b, x)


def flatten_gemm(b, x):
    return b.gemm(b.op("Flatten", [x], axis=1), 192, 10)


def reshape_matmul(b, x):
    x = b.op("Reshape", [x, shape_const(b, [0, -1])])
    x = b.op("MatMul", [x, b.const(weight(10, 192).T)])
    return b.op("Add", [x, b.const(0.1 * rng.standard_normal(10))])


def shape_const(b, dims):
    name = f"shape{len(b.inits)}"
    b.inits.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), name))
    return name


def square_mul(b, x):
    return b.op("Mul", [x, x])


def cryptonets():
    b = Builder([1, 28, 28])
    x = square_mul(b, b.conv("input", 5, 1, 5, stride=2, pad=1))
    x = pow2(b, b.gemm(b.op("Flatten", [x], axis=1), 845, 100))
    return b, b.gemm(x, 100, 10)


def residual_bn():
    b = Builder([3, 8, 8])
    x = b.conv("input", 4, 3, 3, pad=1)
    bn = [b.const(v) for v in (1 + 0.2 * rng.standard_normal(4), 0.1 * rng.standard_normal(4),
                               0.1 * rng.standard_normal(4), 0.5 + rng.random(4))]
    a = square_mul(b, b.op("BatchNormalization", [x, *bn], epsilon=1e-5))
    c = b.op("Add", [a, b.conv(a, 4, 4, 3, pad=1, group=4)])
    e = b.op("Concat", [c, b.conv(c, 4, 4, 1)], axis=1)
    f = b.op("Sub", [e, b.const(0.1 * rng.standard_normal((1, 8, 1, 1)))])
    g = b.op("AveragePool", [f], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("GlobalAveragePool", [b.op("Transpose", [g], perm=[0, 1, 3, 2])])
    return b, b.gemm(b.op("Flatten", [h], axis=1), 8, 3)


def relu_unsupported():
    b = Builder([1, 8, 8])
    x = b.op("Relu", [b.conv("input", 2, 1, 3)])
    return b, b.gemm(b.op("Flatten", [x], axis=1), 72, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/onnx")
    out_dir = ap.parse_args().out
    os.makedirs(out_dir, exist_ok=True)
    models = {
        "lenet1_square": lambda: lenet1(square_mul, pow2, flatten_gemm),
        "lenet1_quadratic": lambda: lenet1(quadratic, quadratic, reshape_matmul),
        "cryptonets": cryptonets,
        "residual_bn": residual_bn,
    }
    for name, build in models.items():
        b, out = build()
        out_len = {"residual_bn": 3}.get(name, 10)
        m = b.model(out, out_len, name)
        path = os.path.join(out_dir, f"{name}.onnx")
        onnx.save(m, path)
        shape = [3] + [d.dim_value for d in b.input.type.tensor_type.shape.dim[1:]]
        x = rng.random(shape, dtype=np.float32)
        y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump({"input_shape": list(x.shape), "input": [float(v) for v in x.ravel()],
                       "output_shape": list(y.shape), "output": [float(v) for v in y.ravel()]}, f)
        print(f"{path}: {os.path.getsize(path)} bytes, output {y.shape}, max |y| {np.abs(y).max():.3f}")
    b, out = relu_unsupported()
    onnx.save(b.model(out, 2, "relu_unsupported"), os.path.join(out_dir, "relu_unsupported.onnx"))


if __name__ == "__main__":
    main()
