#!/usr/bin/env python3
"""Golden forward outputs for trainer-candle, from an independent NumPy implementation of Caffe's
layer semantics (PyTorch is not available on our machines; NumPy is a small PyPI install).

Run once; the output is committed as testdata/golden/forward.json:
    pip install numpy && python3 testdata/tools/golden.py

The net below covers Convolution (stride, pad, group, dilation), ReLU (leaky), LRN (across and
within channels), Pooling (MAX and AVE with Caffe's ceil rounding and padding, global),
BatchNorm with stored statistics + Scale, Eltwise (SUM with coefficients, PROD, MAX), Concat,
InnerProduct, Sigmoid, TanH, Flatten and Softmax. Weights and input are seeded random numbers;
the JSON holds the prototxt, the input, every weight and every blob, all float64.
"""
import json
import math
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "forward.json")

PROTOTXT = """name: "golden"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 1.5 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 2 group: 2 dilation: 2 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { use_global_stats: true } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" lrn_param { local_size: 3 alpha: 0.2 beta: 0.5 norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool3" type: "Pooling" bottom: "norm2" top: "pool3" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "pool2" bottom: "pool3" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 } }
layer { name: "prod" type: "Eltwise" bottom: "pool2" bottom: "pool3" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "pool1" top: "cat" }
layer { name: "gpool" type: "Pooling" bottom: "cat" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param { num_output: 6 } }
layer { name: "sig" type: "Sigmoid" bottom: "ip1" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "ip1" top: "tanh" }
layer { name: "ip2" type: "InnerProduct" bottom: "tanh" top: "ip2" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


def conv(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - (dilation * (kh - 1) + 1)) // stride + 1
    ow = (wd + 2 * pad - (dilation * (kw - 1) + 1)) // stride + 1
    y = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        for oc in range(g * og, (g + 1) * og):
            for i in range(oh):
                for j in range(ow):
                    patch = xp[:, g * cg:(g + 1) * cg,
                               i * stride:i * stride + dilation * (kh - 1) + 1:dilation,
                               j * stride:j * stride + dilation * (kw - 1) + 1:dilation]
                    y[:, oc, i, j] = np.sum(patch * w[oc], axis=(1, 2, 3)) + b[oc]
    return y


def pool(x, method, k, s, p, global_pool=False):
    n, c, h, w = x.shape
    if global_pool:
        k, s, p = None, 1, 0
        kh, kw = h, w
    else:
        kh = kw = k
    def out_len(l, kk):
        o = int(math.ceil((l + 2 * p - kk) / s)) + 1
        if p > 0 and (o - 1) * s >= l + p:
            o -= 1
        return o
    oh, ow = out_len(h, kh), out_len(w, kw)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + kh, h + p), min(ws + kw, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            if method == "MAX":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                y[:, :, i, j] = win.sum(axis=(2, 3)) / size
    return y


def lrn_across(x, n, alpha, beta, k):
    c = x.shape[1]
    sq = x ** 2
    scale = np.full_like(x, k)
    pre = (n - 1) // 2
    for ch in range(c):
        lo, hi = max(0, ch - pre), min(c, ch - pre + n)
        scale[:, ch] += alpha / n * sq[:, lo:hi].sum(axis=1)
    return x * scale ** (-beta)


def lrn_within(x, n, alpha, beta):
    # Caffe: pool(AVE, n, pad (n-1)/2, stride 1) of x^2, then power(shift 1, scale alpha).
    avg = pool(x ** 2, "AVE", n, 1, (n - 1) // 2)
    return x * (1 + alpha * avg) ** (-beta)


def main():
    rng = np.random.RandomState(4242)
    r = lambda *shape: rng.standard_normal(shape)
    weights = {
        "conv1.weight": r(4, 3, 3, 3) * 0.5, "conv1.bias": r(4) * 0.1,
        "conv2.weight": r(4, 2, 2, 2) * 0.5, "conv2.bias": r(4) * 0.1,
        "bn2.running_mean": r(4) * 0.2, "bn2.running_var": np.abs(r(4)) + 0.5, "bn2.scale_factor": np.array([2.0]),
        "scale2.weight": r(4), "scale2.bias": r(4),
    }
    x = r(2, 3, 9, 8)
    blobs = {"data": x}
    c1 = conv(x, weights["conv1.weight"], weights["conv1.bias"], 2, 1, 1, 1)
    c1 = np.where(c1 > 0, c1, 0.1 * c1)
    blobs["conv1"] = c1
    blobs["norm1"] = lrn_across(c1, 3, 0.3, 0.75, 1.5)
    blobs["pool1"] = pool(blobs["norm1"], "MAX", 3, 2, 1)
    c2 = conv(blobs["norm1"], weights["conv2.weight"], weights["conv2.bias"], 1, 1, 2, 2)
    f = weights["bn2.scale_factor"][0]
    mean, var = weights["bn2.running_mean"] / f, weights["bn2.running_var"] / f
    c2 = (c2 - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    c2 = c2 * weights["scale2.weight"][None, :, None, None] + weights["scale2.bias"][None, :, None, None]
    blobs["conv2"] = c2
    blobs["norm2"] = lrn_within(c2, 3, 0.2, 0.5)
    blobs["pool2"] = pool(blobs["norm2"], "AVE", 3, 2, 1)
    blobs["pool3"] = pool(blobs["norm2"], "MAX", 3, 2, 1)
    blobs["sum"] = 0.5 * blobs["pool2"] - 1.5 * blobs["pool3"]
    blobs["prod"] = blobs["pool2"] * blobs["pool3"]
    blobs["max"] = np.maximum(blobs["sum"], blobs["prod"])
    blobs["cat"] = np.concatenate([blobs["max"], blobs["pool1"]], axis=1)
    blobs["gpool"] = pool(blobs["cat"], "AVE", None, 1, 0, global_pool=True)
    blobs["flat"] = blobs["cat"].reshape(2, -1)
    k = blobs["flat"].shape[1]
    weights["ip1.weight"] = r(6, k) * 0.2
    weights["ip1.bias"] = r(6) * 0.1
    weights["ip2.weight"] = r(3, 6)
    weights["ip2.bias"] = r(3) * 0.1
    blobs["ip1"] = blobs["flat"] @ weights["ip1.weight"].T + weights["ip1.bias"]
    blobs["sig"] = 1 / (1 + np.exp(-blobs["ip1"]))
    blobs["tanh"] = np.tanh(blobs["ip1"])
    blobs["ip2"] = blobs["tanh"] @ weights["ip2.weight"].T + weights["ip2.bias"]
    e = np.exp(blobs["ip2"] - blobs["ip2"].max(axis=1, keepdims=True))
    blobs["prob"] = e / e.sum(axis=1, keepdims=True)
    enc = lambda a: {"shape": list(a.shape), "data": [float(v) for v in a.ravel()]}
    doc = {
        "generator": "testdata/tools/golden.py (NumPy reference of Caffe semantics)",
        "prototxt": PROTOTXT,
        "input": enc(x),
        "weights": {k: enc(v) for k, v in weights.items()},
        "blobs": {k: enc(v) for k, v in blobs.items() if k != "data"},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: " + ", ".join(f"{k}{list(v.shape)}" for k, v in blobs.items()))


if __name__ == "__main__":
    main()
