"""LRN (ONNX LRN with bias = k across channels; a pooling decomposition within a channel), BatchNorm (global or
batch statistics, no affine part), Scale, Bias and MVN."""
from __future__ import annotations

import numpy as np

from caffeinit.onnx_export.registry import converter
from caffeinit.proto import caffe_pb2


def _scalar(g, value, hint):
    return g.constant(np.float32(value), hint)


@converter("LRN")
def lrn(g, node, inputs, outputs, blobs):
    layer, name, x = node.layer, node.name, inputs[0]
    if layer.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        # ONNX: x / (bias + alpha/size * sum of squares)^beta, the same window and alpha/size as Caffe
        g.op("LRN", [x], name, out=outputs[0], size=int(layer.size), alpha=float(layer.alpha),
             beta=float(layer.beta), bias=float(layer.k))
        return
    pad = (layer.size - 1) // 2  # stride 1, pad (size-1)/2: every window is size x size, divisor size^2
    square = g.op("Mul", [x, x], f"{name}/square")
    mean_square = g.op("AveragePool", [square], f"{name}/mean_square", kernel_shape=[layer.size] * 2,
                       strides=[1, 1], pads=[pad] * 4, count_include_pad=1)
    base = g.op("Add", [g.op("Mul", [mean_square, _scalar(g, layer.alpha, f"{name}/alpha")], f"{name}/scaled"),
                        _scalar(g, 1, f"{name}/one")], f"{name}/base")
    factor = g.op("Pow", [base, _scalar(g, -layer.beta, f"{name}/neg_beta")], f"{name}/factor")
    g.op("Mul", [x, factor], name, out=outputs[0])


def _channel_axes_shape(rank: int) -> tuple:
    return (-1,) + (1,) * max(0, rank - 2)


@converter("BatchNorm")
def batch_norm(g, node, inputs, outputs, blobs):
    layer, name, x = node.layer, node.name, inputs[0]
    rank = len(node.bottom_shapes[0])
    eps = float(layer.eps)
    if layer.use_global_stats:
        stored = np.float32(blobs[2].reshape(-1)[0])
        factor = np.float32(0) if stored == 0 else np.float32(1) / stored
        mean, var = blobs[0].reshape(-1) * factor, blobs[1].reshape(-1) * factor
        if rank >= 2:
            ones, zeros = np.ones_like(mean), np.zeros_like(mean)
            g.op("BatchNormalization", [x, g.constant(ones, f"{name}/gamma"), g.constant(zeros, f"{name}/beta"),
                                        g.constant(mean, f"{name}/mean"), g.constant(var, f"{name}/var")],
                 name, out=outputs[0], epsilon=eps)
            return
        centred = g.op("Sub", [x, g.constant(mean, f"{name}/mean")], f"{name}/centred")
        std = g.constant(np.sqrt(var + np.float32(eps)), f"{name}/std")
        g.op("Div", [centred, std], name, out=outputs[0])
        return
    # batch statistics: mean and biased variance over every axis but the channel axis
    grouped = g.op("Reshape", [x, g.ints([0, layer.channels, -1] if rank >= 2 else [1, 1, -1], f"{name}/groups")],
                   f"{name}/grouped")
    axes = g.ints([0, 2], f"{name}/axes")
    mean = g.op("ReduceMean", [grouped, axes], f"{name}/batch_mean", keepdims=1)
    centred = g.op("Sub", [grouped, mean], f"{name}/centred")
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred], f"{name}/sq"), axes], f"{name}/batch_var", keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, _scalar(g, eps, f"{name}/eps")], f"{name}/var_eps")], f"{name}/std")
    normed = g.op("Div", [centred, std], f"{name}/normed")
    g.op("Reshape", [normed, g.op("Shape", [x], f"{name}/shape")], name, out=outputs[0])


def _lined_up(g, operand, operand_rank, axis, rank, hint):
    """An operand (value name) of rank ``operand_rank`` lined up from ``axis`` against a rank-``rank`` tensor."""
    trailing = rank - axis - operand_rank
    if trailing <= 0 or operand_rank == 0:
        return operand
    return g.op("Unsqueeze", [operand, g.ints(range(operand_rank, operand_rank + trailing), f"{hint}/axes")], hint)


def _blob_lined_up(g, array, axis, rank, hint):
    shape = tuple(array.shape)
    if not shape:
        return g.constant(array, hint)
    return g.constant(array.reshape(shape + (1,) * (rank - axis - len(shape))), hint)


@converter("Scale")
def scale(g, node, inputs, outputs, blobs):
    layer, name = node.layer, node.name
    rank = len(node.bottom_shapes[0])
    if layer.two_bottoms:
        factor = _lined_up(g, inputs[1], len(node.bottom_shapes[1]), layer.scale_axis, rank, f"{name}/scale")
    else:
        factor = _blob_lined_up(g, blobs[0].reshape(layer.blob_shapes[0]), layer.scale_axis, rank,
                                f"{name}/scale")
    if not layer.bias_term:
        g.op("Mul", [inputs[0], factor], name, out=outputs[0])
        return
    scaled = g.op("Mul", [inputs[0], factor], f"{name}/scaled")
    bias = _blob_lined_up(g, blobs[-1].reshape(layer.blob_shapes[-1]), layer.bias_axis, rank, f"{name}/bias")
    g.op("Add", [scaled, bias], name, out=outputs[0])


@converter("Bias")
def bias(g, node, inputs, outputs, blobs):
    layer, name = node.layer, node.name
    rank = len(node.bottom_shapes[0])
    if layer.two_bottoms:
        b = _lined_up(g, inputs[1], len(node.bottom_shapes[1]), layer.bias_axis, rank, f"{name}/bias")
    else:
        b = _blob_lined_up(g, blobs[0].reshape(layer.blob_shapes[0]), layer.bias_axis, rank, f"{name}/bias")
    g.op("Add", [inputs[0], b], name, out=outputs[0])


@converter("MVN")
def mvn(g, node, inputs, outputs, blobs):
    """Rows of Caffe's (num x dim) view: subtract the row mean, then divide by sqrt(row variance) + eps."""
    layer, name, x = node.layer, node.name, inputs[0]
    shape = node.bottom_shapes[0]
    keep = 1 if layer.across_channels or len(shape) < 2 else 2
    rows = g.op("Reshape", [x, g.ints([0] * keep + [-1], f"{name}/rows_shape")], f"{name}/rows")
    last = g.ints([-1], f"{name}/axes")
    mean = g.op("ReduceMean", [rows, last], f"{name}/mean", keepdims=1)
    result = g.op("Sub", [rows, mean], f"{name}/centred")
    if layer.normalize_variance:
        var = g.op("ReduceMean", [g.op("Mul", [result, result], f"{name}/sq"), last], f"{name}/var", keepdims=1)
        std = g.op("Add", [g.op("Sqrt", [var], f"{name}/sqrt"), _scalar(g, layer.eps, f"{name}/eps")], f"{name}/std")
        result = g.op("Div", [result, std], f"{name}/normed")
    # Caffe's top is 4-D whatever the bottom's axes (missing ones are 1); the batch stays the input's
    top = [0] + [int(d) for d in node.top_shapes[0][1:]]
    g.op("Reshape", [result, g.ints(top, f"{name}/shape")], name, out=outputs[0])
