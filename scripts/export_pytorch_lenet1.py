#!/usr/bin/env python3
"""Export a PyTorch LeNet-1 (square activations) to safetensors for hetensor.

hetensor's `Sequential::lenet1()` expects exactly these tensors (PyTorch layout):

    conv1.weight [4, 1, 5, 5]   conv1.bias [4]
    conv2.weight [12, 4, 5, 5]  conv2.bias [12]
    fc.weight    [10, 192]      fc.bias    [10]

i.e. the `state_dict()` of the module below (attributes named conv1, conv2, fc; the
activations and pools hold no parameters). float32 or float64 are both accepted.
Inputs are MNIST digits as [N, 1, 28, 28] with pixels scaled to [0, 1] (x / 255, no
mean/std normalisation), like hetensor's loader.

    pip install torch safetensors
    python scripts/export_pytorch_lenet1.py lenet1.safetensors [trained_state_dict.pt]

The file's metadata names the architecture (arch = "lenet1-square"): `hetensor mnist
--weights` and `weights::load_lenet1` refuse a file without it, since the tensors alone do not
say which activation the network was trained with. Change the activation (e.g. a quadratic)
and the architecture is another one: export that model to ONNX (torch.onnx.export) and run
`hetensor infer --model model.onnx` instead. Run it with:

    hetensor mnist --weights lenet1.safetensors

or load it in Rust with:

    let model = hetensor::nn::weights::load_lenet1("lenet1.safetensors")?;
"""
import sys

import torch
from torch import nn
from safetensors.torch import save_file


class Square(nn.Module):
    def forward(self, x):
        return x * x


class LeNet1(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, kernel_size=5)   # 28x28 -> 24x24
        self.act1 = Square()
        self.pool1 = nn.AvgPool2d(2)                  # -> 12x12
        self.conv2 = nn.Conv2d(4, 12, kernel_size=5)  # -> 8x8
        self.act2 = Square()
        self.pool2 = nn.AvgPool2d(2)                  # -> 4x4
        self.fc = nn.Linear(12 * 4 * 4, 10)           # 192 -> 10

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))           # (channel, row, column) order


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    model = LeNet1()
    if len(sys.argv) == 3:
        model.load_state_dict(torch.load(sys.argv[2], map_location="cpu"))
    # safetensors needs contiguous tensors; keep float32 (or .double() for float64).
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    expected = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"}
    assert set(tensors) == expected, f"unexpected tensor names: {sorted(tensors)}"
    save_file(tensors, sys.argv[1], metadata={"format": "pt", "arch": "lenet1-square"})
    print(f"wrote {sys.argv[1]}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items()))


if __name__ == "__main__":
    main()
