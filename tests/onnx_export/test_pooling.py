"""Pooling exported to ONNX, checked in ONNX Runtime (CPU) against a numpy transcription of Caffe's
pooling_layer.cpp (Forward_cpu) and against the torch graph, over the full sweep H 1-12, k 1-5, s 1-4, pad 0..k-1,
MAX and AVE, CEIL and FLOOR; plus rectangular and global pooling."""
import math

import numpy as np
import pytest

from caffeinit.onnx_export import build_model
from caffeinit.net import build_net
from caffeinit.prototxt import parse_net_text
from tests.onnx_export.common import FLT_MAX, export_and_compare, input_layer, layer, rel_err, session


def caffe_pooled_hw(in_hw, kernel, stride, pad, ceil=True):
    """Caffe's output (height, width): per axis, then its clip rule on both axes when either has padding."""
    out = [(math.ceil(span) if ceil else math.floor(span)) + 1
           for span in ((n + 2 * p - k) / s for n, k, s, p in zip(in_hw, kernel, stride, pad))]
    if any(pad):
        out = [o - 1 if (o - 1) * s >= n + p else o for o, n, s, p in zip(out, in_hw, stride, pad)]
    return tuple(out)


def caffe_pooled_size(size, k, s, p, ceil=True):
    return caffe_pooled_hw((size, size), (k, k), (s, s), (p, p), ceil)[0]


def caffe_pool(x, method, kernel, stride, pad, ceil=True):
    """Caffe's CPU forward, one output cell at a time (vectorized over num and channels)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, height, width = x.shape
    out_h, out_w = caffe_pooled_hw((height, width), kernel, stride, pad, ceil)
    top = np.empty((n, c, out_h, out_w), np.float32)
    for i in range(out_h):
        for j in range(out_w):
            hs, ws = i * sh - ph, j * sw - pw
            if method == "MAX":
                he, we = min(hs + kh, height), min(ws + kw, width)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -FLT_MAX, np.float32)  # a pixel replaces it only if strictly larger
                if he > hs and we > ws:
                    best = np.maximum(best, x[:, :, hs:he, ws:we].max(axis=(2, 3)))
                top[:, :, i, j] = best
            else:
                he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
                pool_size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
                total = x[:, :, hs:he, ws:we].astype(np.float64).sum(axis=(2, 3)) if he > hs and we > ws \
                    else np.zeros((n, c))
                with np.errstate(divide="ignore", invalid="ignore"):
                    top[:, :, i, j] = (total.astype(np.float32) / np.float32(pool_size)).astype(np.float32)
    return top


def sweep_configs():
    for size in range(1, 13):
        for k in range(1, 6):
            for s in range(1, 5):
                for p in range(k):
                    for method in ("MAX", "AVE"):
                        for ceil in (True, False):
                            if caffe_pooled_size(size, k, s, p, ceil) > 0:
                                yield size, k, s, p, method, ceil


def pool_params(method, k, s, p, ceil):
    return (f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} "
            f"round_mode: {'CEIL' if ceil else 'FLOOR'} }}")


def test_pooling_sweep_matches_caffe_and_torch():
    """One net holds every configuration as its own Pooling layer, so one ORT session runs them all."""
    configs = list(sweep_configs())
    text = "".join(input_layer(f"x{size}", (2, 2, size, size)) for size in range(1, 13))
    for index, (size, k, s, p, method, ceil) in enumerate(configs):
        text += layer("Pooling", (f"x{size}",), (f"pool{index}",), pool_params(method, k, s, p, ceil))
    rng = np.random.default_rng(0)
    feeds = {f"x{size}": rng.standard_normal((2, 2, size, size)).astype(np.float32) for size in range(1, 13)}
    errors, graph, results = export_and_compare(text, feeds=feeds)  # every blob vs the torch graph
    assert len(errors) == len(configs)
    nodes = graph.model.graph.node
    assert not any(a.name == "ceil_mode" and a.i for n in nodes for a in n.attribute)  # never the runtime's ceil
    assert {n.op_type for n in nodes} == {"Pad", "MaxPool", "AveragePool", "Mul"}
    # counts of the interesting cases: the ceil overhang, pads beyond k/2 and windows wholly outside the image
    empty_max = empty_ave = 0
    for index, (size, k, s, p, method, ceil) in enumerate(configs):
        expected = caffe_pool(feeds[f"x{size}"], method, (k, k), (s, s), (p, p), ceil)
        ours = results[f"pool{index}"]
        assert ours.shape == expected.shape, (size, k, s, p, method, ceil)
        assert rel_err(ours, expected) <= 1e-6, (size, k, s, p, method, ceil)
        empty_max += int(np.sum(expected == -FLT_MAX))
        empty_ave += int(np.sum(np.isnan(expected) | (expected == 0)))
    assert empty_max > 0 and empty_ave > 0  # the -FLT_MAX and 0/0 windows were exercised


def test_pooling_sweep_count_matches_notes():
    """The notes count 1,336 (H, k, s, pad, method) CEIL configurations whose window fits the padded input; the
    sweep also runs the 2 x 28 where the window is larger than the padded input (H + 2 pad < k)."""
    ceil = [c for c in sweep_configs() if c[5]]
    assert sum(1 for size, k, s, p, _, _ in ceil if size + 2 * p >= k) == 1336
    assert len(ceil) == 1336 + 2 * 28


@pytest.mark.parametrize("params,shape", [
    ("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0", (2, 3, 9, 8)),
    ("pool: AVE kernel_h: 2 kernel_w: 4 stride_h: 3 stride_w: 1 pad_h: 1 pad_w: 3", (2, 3, 7, 10)),
    ("pool: AVE kernel_h: 1 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 0 pad_w: 2", (1, 2, 8, 5)),
    ("pool: MAX kernel_h: 1 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1", (1, 2, 4, 4)),
    ("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0", (2, 1, 6, 6)),
])
def test_rectangular_pooling(params, shape):
    text = input_layer(shape=shape) + layer("Pooling", params=f"pooling_param {{ {params} }}")
    net = build_net(parse_net_text(text), "test")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = session(build_model(net, {}).model).run(["out"], {"data": x})[0]
    p = net.layers[1].param.pooling_param
    method = "MAX" if p.pool == p.MAX else "AVE"
    expected = caffe_pool(x, method, (p.kernel_h, p.kernel_w), (p.stride_h, p.stride_w), (p.pad_h, p.pad_w))
    assert out.shape == expected.shape
    assert rel_err(out, expected) <= 1e-6


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    params = f"pooling_param {{ pool: {method} global_pooling: true }}"
    export_and_compare(input_layer(shape=(2, 3, 5, 7)) + layer("Pooling", params=params))


def test_spp_matches_torch():
    for method in ("MAX", "AVE"):
        for height in (1, 3):
            export_and_compare(input_layer(shape=(2, 3, 9, 8)) + layer(
                "SPP", params=f"spp_param {{ pool: {method} pyramid_height: {height} }}"))


def test_pooling_mask_top_is_refused():
    from caffeinit.errors import CaffeinitError

    text = input_layer() + layer("Pooling", tops=("out", "mask"), params="pooling_param { pool: MAX kernel_size: 2 }")
    with pytest.raises(CaffeinitError, match=r"layer 'out' \(Pooling\).*argmax mask"):
        build_model(build_net(parse_net_text(text), "test"), {})
