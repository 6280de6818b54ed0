#!/usr/bin/env python3
"""PyTorch twin of `cargo xtask bench train`: the same networks, shapes and solver (SGD with
momentum 0.9, weight decay 5e-4) on synthetic data, reporting training images/s as JSON.

    python3 benches/train_pytorch.py lenet 64 100 [cpu|cuda]
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(800, 500)
        self.ip2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2, 2, ceil_mode=True)
        x = F.max_pool2d(self.conv2(x), 2, 2, ceil_mode=True)
        return self.ip2(F.relu(self.ip1(x.flatten(1))))


class AlexNetCifar(nn.Module):
    """testdata/nets/alexnet.prototxt: conv 96/256/384/384/256, LRN after the first two, max
    pooling 3/2 with Caffe's ceil rounding, fc 1024/1024/10 with dropout."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 5, padding=2)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(256 * 4 * 4, 1024)
        self.fc7 = nn.Linear(1024, 1024)
        self.fc8 = nn.Linear(1024, 10)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x):
        x = F.max_pool2d(self.lrn(F.relu(self.conv1(x))), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.lrn(F.relu(self.conv2(x))), 3, 2, ceil_mode=True)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2, ceil_mode=True)
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


def main():
    model_name, batch, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    torch.manual_seed(1)
    model = (LeNet() if model_name == "lenet" else AlexNetCifar()).to(device)
    shape = (batch, 1, 28, 28) if model_name == "lenet" else (batch, 3, 32, 32)
    x = torch.rand(shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    print(json.dumps({"images_per_s": batch * iters / secs, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
