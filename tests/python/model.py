"""A small Fashion-MNIST classifier defined in plain PyTorch (docs/python.md).

    python3 tests/python/model.py OUT.pt [--seed N]

scripts the model with torch.jit.script and saves it: the file fedsim, fedcoord and fedclient
take with --model torchscript --model-path OUT.pt. The initial weights are the ones saved here.

Conv + BatchNorm + Linear on purpose: parameters (float32), BatchNorm's running statistics
(float32 buffers) and its num_batches_tracked counter (an int64 buffer) all travel through the
platform and come back under their state_dict names.
"""
import argparse

import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=5, stride=2, padding=2)  # 1x28x28 -> 8x14x14
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)  # -> 8x7x7 (no tensors: not a layer group)
        self.fc = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))  # logits: the platform applies cross-entropy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="TorchScript file to write (.pt)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.jit.script(SmallNet()).save(a.out)
    print(f"model.py: wrote {a.out}")


if __name__ == "__main__":
    main()
