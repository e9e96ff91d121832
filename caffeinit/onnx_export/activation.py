"""Element-wise layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Clip, Swish,
Dropout (TEST phase: identity)."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from caffeinit.onnx_export.registry import converter


def _scalar(g, value, hint):
    return g.constant(np.float32(value), hint)


@converter("ReLU")
def relu(g, node, inputs, outputs, blobs):
    slope = float(node.param.relu_param.negative_slope)
    if slope == 0:
        g.op("Relu", inputs, node.name, out=outputs[0])
    else:
        g.op("LeakyRelu", inputs, node.name, out=outputs[0], alpha=slope)


@converter("PReLU")
def prelu(g, node, inputs, outputs, blobs):
    rank = len(node.bottom_shapes[0])
    slope = blobs[0].reshape(-1)
    if not node.param.prelu_param.channel_shared:
        slope = slope.reshape((-1,) + (1,) * (rank - 2))  # broadcast over axis 1
    g.op("PRelu", [inputs[0], g.constant(slope, f"{node.name}/slope")], node.name, out=outputs[0])


@converter("ELU")
def elu(g, node, inputs, outputs, blobs):
    g.op("Elu", inputs, node.name, out=outputs[0], alpha=float(node.param.elu_param.alpha))


@converter("Sigmoid")
def sigmoid(g, node, inputs, outputs, blobs):
    g.op("Sigmoid", inputs, node.name, out=outputs[0])


@converter("TanH")
def tanh(g, node, inputs, outputs, blobs):
    g.op("Tanh", inputs, node.name, out=outputs[0])


@converter("AbsVal")
def absval(g, node, inputs, outputs, blobs):
    g.op("Abs", inputs, node.name, out=outputs[0])


@converter("BNLL")
def bnll(g, node, inputs, outputs, blobs):
    g.op("Softplus", inputs, node.name, out=outputs[0])  # log(1 + e^x)


@converter("Dropout")
def dropout(g, node, inputs, outputs, blobs):
    g.op("Identity", inputs, node.name, out=outputs[0])  # TEST phase: a copy


def _affine(g, x, scale, shift, hint):
    """scale * x + shift, skipping the identity parts."""
    if scale != 1:
        x = g.op("Mul", [x, _scalar(g, scale, f"{hint}/scale")], f"{hint}/scaled")
    if shift != 0:
        x = g.op("Add", [x, _scalar(g, shift, f"{hint}/shift")], f"{hint}/shifted")
    return x


def _finish(g, x, out, hint):
    """Write ``x`` under the name ``out`` (an Identity when no node produced it yet)."""
    g.op("Identity", [x], hint, out=out)


@converter("Power")
def power(g, node, inputs, outputs, blobs):
    p = node.param.power_param
    power_, scale, shift = np.float32(p.power), np.float32(p.scale), np.float32(p.shift)
    name = node.name
    if power_ * scale == 0:
        value = np.float32(1) if power_ == 0 else np.power(shift, power_)
        shape = g.op("Shape", inputs, f"{name}/shape")
        g.op("ConstantOfShape", [shape], name, out=outputs[0],
             value=numpy_helper.from_array(np.asarray([value], np.float32)))
        return
    y = _affine(g, inputs[0], scale, shift, name)
    if power_ != 1:
        y = g.op("Pow", [y, _scalar(g, power_, f"{name}/power")], name, out=outputs[0])
    if y != outputs[0]:
        _finish(g, y, outputs[0], name)


@converter("Exp")
def exp(g, node, inputs, outputs, blobs):
    """base ^ (shift + scale x) = exp(ln(base) scale x) * base ^ shift, as Caffe computes it (the layer's float
    constants, so that ONNX multiplies by exactly the torch graph's and Caffe's numbers)."""
    inner, outer = np.float32(node.layer.inner_scale), np.float32(node.layer.outer_scale)
    name = node.name
    y = _affine(g, inputs[0], inner, 0, name)
    if outer == 1:
        g.op("Exp", [y], name, out=outputs[0])
    else:
        g.op("Mul", [g.op("Exp", [y], f"{name}/exp"), _scalar(g, outer, f"{name}/outer")], name, out=outputs[0])


@converter("Log")
def log(g, node, inputs, outputs, blobs):
    layer = node.layer  # its constants are Caffe's float arithmetic (1 / log(base) rounded twice)
    base_scale = np.float32(layer.base_scale)
    name = node.name
    y = _affine(g, inputs[0], np.float32(layer.scale), np.float32(layer.shift), name)
    if base_scale == 1:
        g.op("Log", [y], name, out=outputs[0])
    else:
        g.op("Mul", [g.op("Log", [y], f"{name}/ln"), _scalar(g, base_scale, f"{name}/base_scale")], name,
             out=outputs[0])


@converter("Threshold")
def threshold(g, node, inputs, outputs, blobs):
    t = np.float32(node.param.threshold_param.threshold)
    above = g.op("Greater", [inputs[0], _scalar(g, t, f"{node.name}/threshold")], f"{node.name}/above")
    g.op("Cast", [above], node.name, out=outputs[0], to=1)  # 1 = FLOAT


@converter("Clip")
def clip(g, node, inputs, outputs, blobs):
    p = node.param.clip_param
    low, high = _scalar(g, p.min, f"{node.name}/min"), _scalar(g, p.max, f"{node.name}/max")
    if p.min <= p.max:
        g.op("Clip", [inputs[0], low, high], node.name, out=outputs[0])
    else:  # Caffe's max(min, min(x, max)) is min everywhere; ONNX's Clip would give max
        g.op("Max", [g.op("Min", [inputs[0], high], f"{node.name}/upper"), low], node.name, out=outputs[0])


@converter("Swish")
def swish(g, node, inputs, outputs, blobs):
    beta = np.float32(node.param.swish_param.beta)
    gate = g.op("Sigmoid", [_affine(g, inputs[0], beta, 0, node.name)], f"{node.name}/gate")
    g.op("Mul", [inputs[0], gate], node.name, out=outputs[0])
