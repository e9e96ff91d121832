"""Pooling (MAX, AVE) lowered so that no runtime's ceil_mode is involved.

Caffe's output size (ceil or floor rounding, plus its clip rule when padded) comes from the layer's geometry. Where
the last window runs past the padded input (the "overhang"), the input is padded explicitly (begin = pad, end =
pad + overhang; -FLT_MAX for MAX, 0 for AVE), pooled in floor mode without pads and, for AVE, multiplied by a
constant map k_h*k_w / Caffe's divisor, where Caffe's divisor counts pad cells but not the overhang.
"""
from __future__ import annotations

import numpy as np

from caffeinit.errors import layer_error
from caffeinit.onnx_export.graph import FLT_MAX
from caffeinit.onnx_export.registry import converter
from caffeinit.proto import caffe_pb2

MAX, AVE = caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE


def caffe_divisor(in_size: int, out_size: int, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Caffe's AVE divisor along one axis: the window clipped to [-pad, in + pad), before clipping to the image
    (pad cells count, the ceil overhang does not; <= 0 for a window wholly outside)."""
    start = np.arange(out_size) * stride - pad
    return (np.minimum(start + kernel, in_size + pad) - start).astype(np.float32)


def lower_pooling(g, x, method, kernel, stride, pad, in_hw, out_hw, hint, out=None):
    """Caffe's 2-D MAX/AVE pooling of ``x`` (N, C, *in_hw) into ``out_hw`` windows, without ceil_mode."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    (height, width), (out_h, out_w) = in_hw, out_hw
    over_h = max(0, (out_h - 1) * sh + kh - (height + 2 * ph))
    over_w = max(0, (out_w - 1) * sw + kw - (width + 2 * pw))
    pool_op = "MaxPool" if method == MAX else "AveragePool"
    window = dict(kernel_shape=[kh, kw], strides=[sh, sw])
    if method == AVE:
        window["count_include_pad"] = 1
    if over_h == 0 and over_w == 0:
        # every window lies inside the padded input: the runtime's own padding gives Caffe's numbers
        return g.op(pool_op, [x], hint, out=out, pads=[ph, pw, ph, pw], **window)
    pads = g.ints([0, 0, ph, pw, 0, 0, ph + over_h, pw + over_w], f"{hint}/pads")
    fill = g.constant(np.float32(-FLT_MAX if method == MAX else 0.0), f"{hint}/pad_value")
    padded = g.op("Pad", [x, pads, fill], f"{hint}/padded", mode="constant")
    if method == MAX:
        return g.op(pool_op, [padded], hint, out=out, **window)
    pooled = g.op(pool_op, [padded], f"{hint}/floor_pool", **window)
    divisor = np.outer(caffe_divisor(height, out_h, kh, sh, ph), caffe_divisor(width, out_w, kw, sw, pw))
    with np.errstate(divide="ignore"):
        correction = np.float32(kh * kw) / divisor  # an empty window: 0 * -x = -0, 0 * inf = nan, as Caffe's 0/0
    return g.op("Mul", [pooled, g.constant(correction.reshape(1, 1, out_h, out_w), f"{hint}/divisor_correction")],
                hint, out=out)


def _check_method(node, method):
    if method not in (MAX, AVE):
        raise layer_error(node.name, node.type, "STOCHASTIC pooling cannot be exported to ONNX")


@converter("Pooling")
def pooling(g, node, inputs, outputs, blobs):
    geometry = node.layer.geometry
    _check_method(node, geometry.method)
    if len(outputs) != 1:
        raise layer_error(node.name, node.type, "the argmax mask (second top) cannot be exported to ONNX")
    if node.param.pooling_param.global_pooling:
        g.op("GlobalMaxPool" if geometry.method == MAX else "GlobalAveragePool", inputs, node.name, out=outputs[0])
        return
    lower_pooling(g, inputs[0], geometry.method, geometry.kernel, geometry.stride, geometry.pad, geometry.in_hw,
                  geometry.out_hw, node.name, out=outputs[0])


@converter("SPP")
def spp(g, node, inputs, outputs, blobs):
    """Each pyramid level pooled, flattened per item and concatenated on axis 1."""
    levels = node.layer.levels
    _check_method(node, node.layer.method)
    if len(levels) == 1:
        level = levels[0]
        lower_pooling(g, inputs[0], level.method, level.kernel, level.stride, level.pad, level.in_hw, level.out_hw,
                      node.name, out=outputs[0])
        return
    flat = []
    for i, level in enumerate(levels):
        hint = f"{node.name}/level{i}"
        pooled = lower_pooling(g, inputs[0], level.method, level.kernel, level.stride, level.pad, level.in_hw,
                               level.out_hw, hint)
        flat.append(g.op("Flatten", [pooled], f"{hint}/flat", axis=1))
    g.op("Concat", flat, node.name, out=outputs[0], axis=1)
