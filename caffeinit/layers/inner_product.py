"""InnerProduct and Embed (Caffe's inner_product_layer.cpp, embed_layer.cpp)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffeinit.fillers import fill
from caffeinit.layers.base import Layer
from caffeinit.layers.conv import OptionalOp, relu_attr
from caffeinit.layers.registry import register_layer
from caffeinit.layers.structure import canonical_axis
from caffeinit.proto import caffe_pb2

_LINEAR_POINTWISE = OptionalOp("_linear_pointwise")


@register_layer
class InnerProduct(Layer):
    """Top = bottom.shape[:axis] + [num_output]; each row of count(axis) inputs times W^T ([N, K]), or times W
    ([K, N]) with ``transpose``; plus a bias [N] when bias_term."""
    type_name = "InnerProduct"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.inner_product_param
        self.num_output, self.bias_term, self.transpose = p.num_output, p.bias_term, p.transpose
        if self.num_output <= 0:
            raise self.error("num_output must be positive")

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self, self.param.inner_product_param.axis, len(shape), "inner_product_param.axis")
        self.inputs = math.prod(shape[self.axis:])
        if self.inputs == 0:
            raise self.error(f"no inputs to combine: bottom {list(shape)} is empty from axis {self.axis}")
        weight = (self.inputs, self.num_output) if self.transpose else (self.num_output, self.inputs)
        self.blob_shapes = [weight] + ([(self.num_output,)] if self.bias_term else [])
        return [shape[:self.axis] + (self.num_output,)]

    def in_place_problem(self, index, bottom_shape, top_shape):
        return super().in_place_problem(index, bottom_shape, top_shape) or \
            "Caffe's matrix product would write the top over the bottom it reads"

    def fill_blobs(self, rng):
        p = self.param.inner_product_param
        blobs = [fill(p.weight_filler, self.blob_shapes[0], rng, f"layer '{self.name}' weight")]
        if self.bias_term:
            blobs.append(fill(p.bias_filler, self.blob_shapes[1], rng, f"layer '{self.name}' bias"))
        return blobs

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        rows = x.reshape(-1, self.inputs)
        weight = blobs[0].to(x.dtype).reshape(self.blob_shapes[0])
        bias = blobs[1].to(x.dtype).reshape(-1) if self.bias_term else None
        y = F.linear(rows, weight.t() if self.transpose else weight, bias)
        return [y.reshape(tuple(x.shape[:self.axis]) + (self.num_output,))]

    def forward_inference(self, bottoms, blobs, relu_slope: float | None = None):
        """Inference-only CPU forward through oneDNN's matmul (about 2x torch's GEMM on large layers at small
        batches), with Caffe's ReLU (``relu_slope``: its negative_slope) fused when given; ``forward``'s values up to
        float rounding. None where it does not apply (``transpose``, not float32 CPU data, autograd on, no oneDNN)."""
        x = bottoms[0]
        if self.transpose or not _LINEAR_POINTWISE.available or torch.is_grad_enabled() or x.device.type != "cpu" or \
                x.dtype != torch.float32 or blobs[0].dtype != torch.float32:
            return None
        bias = blobs[1].reshape(-1) if self.bias_term else None
        attr, scalars = relu_attr(relu_slope)
        y = _LINEAR_POINTWISE(x.reshape(-1, self.inputs), blobs[0].reshape(self.blob_shapes[0]), bias, attr, scalars,
                              "")
        if y is None:
            return None
        return [y.reshape(tuple(x.shape[:self.axis]) + (self.num_output,))]


@register_layer
class Embed(Layer):
    """Looks up row int(x) (truncated, as Caffe's static_cast) of the [input_dim, num_output] weight for every
    bottom element; top = bottom.shape + [num_output]."""
    type_name = "Embed"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.embed_param
        self.input_dim, self.num_output, self.bias_term = p.input_dim, p.num_output, p.bias_term
        if self.input_dim <= 0:
            raise self.error("embed_param.input_dim must be positive")
        if self.num_output <= 0:
            raise self.error("embed_param.num_output must be positive")

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.blob_shapes = [(self.input_dim, self.num_output)] + ([(self.num_output,)] if self.bias_term else [])
        return [shape + (self.num_output,)]

    def fill_blobs(self, rng):
        p = self.param.embed_param
        blobs = [fill(p.weight_filler, self.blob_shapes[0], rng, f"layer '{self.name}' weight")]
        if self.bias_term:
            blobs.append(fill(p.bias_filler, self.blob_shapes[1], rng, f"layer '{self.name}' bias"))
        return blobs

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        values = x.detach()
        valid = torch.isfinite(values) & (values > -1) & (values < self.input_dim)  # truncation toward zero
        if not bool(valid.all()):
            bad = values[~valid].reshape(-1)[0].item()
            raise self.error(f"bottom value {bad:g} is not an index in [0, {self.input_dim})")
        index = torch.trunc(values).to(torch.int64)
        y = F.embedding(index, blobs[0].to(x.dtype))
        if self.bias_term:
            y = y + blobs[1].to(x.dtype).reshape(-1)
        return [y]
