"""Convolution, Deconvolution (ConvTranspose, Caffe's weight layout is ONNX's) and Im2col (a grouped one-hot Conv)."""
from __future__ import annotations

import math

import numpy as np

from caffeinit.errors import layer_error
from caffeinit.onnx_export.registry import converter


def _check_channel_axis(node):
    if node.layer.axis != 1:
        raise layer_error(node.name, node.type, f"convolution_param.axis {node.layer.axis} cannot be exported "
                          "(ONNX convolves with channels on axis 1)")


def _geometry(layer):
    """Caffe's zeros past the end that a too-large last window reads (``layer.extra``) pad the end."""
    n = len(layer.kernel)
    pads = list(layer.pad) + [p + e for p, e in zip(layer.pad, layer.extra)]
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=pads,
                dilations=list(layer.dilation)) if n else {}


@converter("Convolution", "Deconvolution")
def convolution(g, node, inputs, outputs, blobs):
    _check_channel_axis(node)
    layer = node.layer
    op = "ConvTranspose" if node.type == "Deconvolution" else "Conv"
    weights = [g.constant(blobs[0], f"{node.name}/weight")]
    if layer.bias_term:
        weights.append(g.constant(blobs[1].reshape(-1), f"{node.name}/bias"))
    for x, y in zip(inputs, outputs):  # several bottoms share the weights
        g.op(op, [x] + weights, node.name, out=y, group=layer.group, **_geometry(layer))


@converter("Im2col")
def im2col(g, node, inputs, outputs, blobs):
    """Output channel c*kh*kw + i*kw + j holds input channel c at kernel offset (i, j): a depthwise Conv whose
    kernels are one-hot picks exactly those values."""
    _check_channel_axis(node)
    layer = node.layer
    taps = math.prod(layer.kernel)
    one_hot = np.zeros((layer.channels * taps, 1, taps), np.float32)
    one_hot[np.arange(layer.channels * taps), 0, np.tile(np.arange(taps), layer.channels)] = 1
    weight = g.constant(one_hot.reshape((layer.channels * taps, 1) + tuple(layer.kernel)), f"{node.name}/one_hot")
    g.op("Conv", [inputs[0], weight], node.name, out=outputs[0], group=layer.channels, **_geometry(layer))
