#!/usr/bin/env python3
"""Converts the UCI 8x8 handwritten digits (as shipped by scikit-learn) to MNIST-style IDX files.

Run once; the outputs are committed under testdata/data/digits/:
    pip install scikit-learn numpy && python3 testdata/tools/make_digits.py

Each 8x8 image (values 0..16) is resized bilinearly to 20x20 and centred in a 28x28 frame with a
4-pixel margin (as MNIST centres its digits in a 20x20 box), scaled to 0..255, so that the classic
LeNet prototxt runs unchanged. The 1797 examples are split with a fixed permutation into 1437
training and 360 test examples. Files are gzipped with mtime 0 so that reruns are byte-identical.
"""
import gzip
import os
import struct

import numpy as np
from sklearn.datasets import load_digits

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "digits")
SEED = 20151122
N_TRAIN = 1437


def resize_bilinear(img, size):
    """Bilinear resize of a square image with aligned corners."""
    n = img.shape[0]
    pos = np.linspace(0, n - 1, size)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    t = pos - lo
    rows = img[lo, :] * (1 - t)[:, None] + img[hi, :] * t[:, None]
    return rows[:, lo] * (1 - t)[None, :] + rows[:, hi] * t[None, :]


def to_28(img8):
    big = resize_bilinear(img8.astype(np.float64) / 16.0, 20)
    frame = np.zeros((28, 28))
    frame[4:24, 4:24] = big
    return np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)


def write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(header + arr.astype(np.uint8).tobytes())


def main():
    digits = load_digits()
    images = np.stack([to_28(im) for im in digits.images])
    labels = digits.target.astype(np.uint8)
    order = np.random.RandomState(SEED).permutation(len(labels))
    tr, te = order[:N_TRAIN], order[N_TRAIN:]
    os.makedirs(OUT, exist_ok=True)
    write_idx(os.path.join(OUT, "train-images-idx3-ubyte.gz"), images[tr])
    write_idx(os.path.join(OUT, "train-labels-idx1-ubyte.gz"), labels[tr])
    write_idx(os.path.join(OUT, "t10k-images-idx3-ubyte.gz"), images[te])
    write_idx(os.path.join(OUT, "t10k-labels-idx1-ubyte.gz"), labels[te])
    print(f"wrote {len(tr)} training and {len(te)} test examples to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
