"""Layers that move, combine or summarize blobs: Concat, Slice, Split, Flatten, Reshape, Crop, Eltwise, Tile,
Softmax, ArgMax, Reduction, BatchReindex, Filter, Parameter, Silence, HDF5Output.

Reshape targets copy leading dims with ONNX's 0 and let -1 infer, so a dynamic batch size flows through.
"""
from __future__ import annotations

import numpy as np

from caffeinit.onnx_export.registry import converter
from caffeinit.proto import caffe_pb2

INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def reshape_keep_leading(g, x, keep: int, tail, hint, out=None):
    """Reshape ``x`` to (its first ``keep`` dims) + ``tail`` (may hold one -1)."""
    return g.op("Reshape", [x, g.ints([0] * keep + list(tail), f"{hint}/shape")], hint, out=out)


@converter("Concat")
def concat(g, node, inputs, outputs, blobs):
    rank = len(node.bottom_shapes[0])
    p = node.param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    g.op("Concat", inputs, node.name, out=outputs[0], axis=_axis(axis, rank))


@converter("Slice")
def slice_(g, node, inputs, outputs, blobs):
    rank = len(node.bottom_shapes[0])
    p = node.param.slice_param
    axis = _axis(p.slice_dim if p.HasField("slice_dim") else p.axis, rank)
    if len(outputs) == 1:
        g.op("Identity", inputs, node.name, out=outputs[0])
        return
    sizes = [shape[axis] for shape in node.top_shapes]
    if axis == 0 and p.slice_point:
        # the batch axis: at another batch size Caffe's last top takes what its slice points leave
        bounds = list(p.slice_point)
        for i, out in enumerate(outputs):
            begin = bounds[i - 1] if i else 0
            end = bounds[i] if i < len(bounds) else INT64_MAX
            g.op("Slice", [inputs[0], g.ints([begin], f"{node.name}/starts"), g.ints([end], f"{node.name}/ends"),
                           g.ints([0], f"{node.name}/axes")], node.name, out=out)
        return
    g.op("Split", [inputs[0], g.ints(sizes, f"{node.name}/sizes")], node.name, out=outputs, axis=axis)


@converter("Split")
def split(g, node, inputs, outputs, blobs):
    for out in outputs:
        g.op("Identity", inputs, node.name, out=out)


@converter("Flatten")
def flatten(g, node, inputs, outputs, blobs):
    shape = node.bottom_shapes[0]
    p = node.param.flatten_param
    start, end = _axis(p.axis, len(shape)), _axis(p.end_axis, len(shape))
    reshape_keep_leading(g, inputs[0], start, [-1] + list(shape[end + 1:]), node.name, out=outputs[0])


@converter("Reshape")
def reshape(g, node, inputs, outputs, blobs):
    """Caffe's dims (0 = copy, -1 = infer) mean the same in ONNX at the same output positions."""
    shape = node.bottom_shapes[0]
    p = node.param.reshape_param
    start = p.axis if p.axis >= 0 else len(shape) + p.axis + 1
    end = len(shape) if p.num_axes == -1 else start + p.num_axes
    if end == 0:  # dims inserted before the batch axis: the input's own shape follows them, whatever its batch
        target = g.op("Concat", [g.ints(list(p.shape.dim), f"{node.name}/dims"),
                                 g.op("Shape", inputs, f"{node.name}/input_shape")], f"{node.name}/shape", axis=0)
        g.op("Reshape", [inputs[0], target], node.name, out=outputs[0])
        return
    reshape_keep_leading(g, inputs[0], start, list(p.shape.dim) + list(shape[end:]), node.name, out=outputs[0])


@converter("Crop")
def crop(g, node, inputs, outputs, blobs):
    big, small = node.bottom_shapes
    p = node.param.crop_param
    start = _axis(p.axis, len(big))
    offsets = list(p.offset)
    axes = list(range(start, len(big)))
    begins = [0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - start] for i in axes]
    name = node.name
    if start == 0:  # the batch axis: the second bottom's own sizes, whatever its batch
        ends = g.op("Add", [g.op("Shape", [inputs[1]], f"{name}/reference_shape"), g.ints(begins, f"{name}/offsets")],
                    f"{name}/ends")
    else:
        ends = g.ints([b + small[i] for b, i in zip(begins, axes)], f"{name}/ends")
    g.op("Slice", [inputs[0], g.ints(begins, f"{name}/starts"), ends, g.ints(axes, f"{name}/axes")], name,
         out=outputs[0])


@converter("Eltwise")
def eltwise(g, node, inputs, outputs, blobs):
    p = node.param.eltwise_param
    name = node.name
    if p.operation == caffe_pb2.EltwiseParameter.PROD:
        x = inputs[0]
        for i, b in enumerate(inputs[1:], start=1):
            x = g.op("Mul", [x, b], name, out=outputs[0] if i == len(inputs) - 1 else None)
    elif p.operation == caffe_pb2.EltwiseParameter.MAX:
        g.op("Max", inputs, name, out=outputs[0])
    else:
        coeffs = list(p.coeff) or [1.0] * len(inputs)
        terms = [x if c == 1 else g.op("Mul", [x, g.constant(np.float32(c), f"{name}/coeff{i}")],
                                       f"{name}/term{i}")
                 for i, (x, c) in enumerate(zip(inputs, coeffs))]
        g.op("Sum", terms, name, out=outputs[0])


@converter("Tile")
def tile(g, node, inputs, outputs, blobs):
    shape = node.bottom_shapes[0]
    p = node.param.tile_param
    repeats = [1] * len(shape)
    repeats[_axis(p.axis, len(shape))] = p.tiles
    g.op("Tile", [inputs[0], g.ints(repeats, f"{node.name}/repeats")], node.name, out=outputs[0])


@converter("Softmax")
def softmax(g, node, inputs, outputs, blobs):
    axis = _axis(node.param.softmax_param.axis, len(node.bottom_shapes[0]))
    g.op("Softmax", inputs, node.name, out=outputs[0], axis=axis)


@converter("Reduction")
def reduction(g, node, inputs, outputs, blobs):
    shape = node.bottom_shapes[0]
    p = node.param.reduction_param
    axis = _axis(p.axis, len(shape))
    name = node.name
    ops = {caffe_pb2.ReductionParameter.SUM: "ReduceSum", caffe_pb2.ReductionParameter.MEAN: "ReduceSum",
           caffe_pb2.ReductionParameter.ASUM: "ReduceL1", caffe_pb2.ReductionParameter.SUMSQ: "ReduceSumSquare"}
    coeff = float(p.coeff)
    flat = reshape_keep_leading(g, inputs[0], axis, [-1], f"{name}/flat")
    last = g.ints([-1], f"{name}/axes")
    if p.operation == caffe_pb2.ReductionParameter.MEAN and axis == 0:
        # the count includes the batch axis: Caffe's coeff / count (in float) at the batch the graph runs
        count = g.op("Cast", [g.op("Size", inputs, f"{name}/size")], f"{name}/count", to=1)  # 1 = FLOAT
        factor = g.op("Div", [g.constant(np.float32(coeff), f"{name}/coeff"), count], f"{name}/factor")
        total = g.op(ops[p.operation], [flat, last], f"{name}/total", keepdims=0)
        g.op("Mul", [total, factor], name, out=outputs[0])
        return
    if p.operation == caffe_pb2.ReductionParameter.MEAN:
        coeff /= int(np.prod(shape[axis:], dtype=np.int64))
    if coeff == 1:
        g.op(ops[p.operation], [flat, last], name, out=outputs[0], keepdims=0)
    else:
        total = g.op(ops[p.operation], [flat, last], f"{name}/total", keepdims=0)
        g.op("Mul", [total, g.constant(np.float32(coeff), f"{name}/coeff")], name, out=outputs[0])


def _top_k_last_index_first(g, x, axis, size, k, hint):
    """Values and float indices of the k largest along ``axis``; ties go to the larger index, as Caffe's sort of
    (value, index) pairs gives. ONNX TopK puts the lower index first, so it runs on the reversed axis."""
    flipped = g.op("Slice", [x, g.ints([-1], f"{hint}/start"), g.ints([INT64_MIN], f"{hint}/end"),
                             g.ints([axis], f"{hint}/axis"), g.ints([-1], f"{hint}/step")], f"{hint}/flipped")
    values, order = g.op("TopK", [flipped, g.ints([k], f"{hint}/k")], f"{hint}/topk", n_out=2, axis=axis,
                         largest=1, sorted=1)
    if axis == 0:  # the batch axis: its last index at the batch the graph runs
        last = g.op("Sub", [g.op("Shape", [x], f"{hint}/size", start=0, end=1), g.ints([1], f"{hint}/one")],
                    f"{hint}/last")
    else:
        last = g.constant(np.int64(size - 1), f"{hint}/last", np.int64)
    index = g.op("Sub", [last, order], f"{hint}/index")
    return values, g.op("Cast", [index], f"{hint}/index_float", to=1)


@converter("ArgMax")
def argmax(g, node, inputs, outputs, blobs):
    shape = node.bottom_shapes[0]
    p = node.param.argmax_param
    name, k = node.name, int(p.top_k)
    if p.HasField("axis"):
        axis = _axis(p.axis, len(shape))
        values, index = _top_k_last_index_first(g, inputs[0], axis, shape[axis], k, name)
        g.op("Identity", [values if p.out_max_val else index], name, out=outputs[0])
        return
    size = int(np.prod(shape[1:], dtype=np.int64))
    flat = reshape_keep_leading(g, inputs[0], 1, [-1], f"{name}/flat")
    values, index = _top_k_last_index_first(g, flat, 1, size, k, name)
    top = node.top_shapes[0]
    if p.out_max_val:
        pair = g.op("Concat", [reshape_keep_leading(g, t, 1, [1, k], f"{name}/{what}")
                               for t, what in ((index, "i"), (values, "v"))], f"{name}/pair", axis=1)
        reshape_keep_leading(g, pair, 1, list(top[1:]), name, out=outputs[0])
    else:
        reshape_keep_leading(g, index, 1, list(top[1:]), name, out=outputs[0])


@converter("BatchReindex")
def batch_reindex(g, node, inputs, outputs, blobs):
    index = g.op("Cast", [inputs[1]], f"{node.name}/index", to=7)  # 7 = INT64
    g.op("Gather", [inputs[0], index], node.name, out=outputs[0], axis=0)


@converter("Filter")
def filter_(g, node, inputs, outputs, blobs):
    name = node.name
    selector = g.op("Reshape", [inputs[-1], g.ints([-1], f"{name}/flat")], f"{name}/selector")
    keep = g.op("Not", [g.op("Equal", [selector, g.constant(np.float32(0), f"{name}/zero")], f"{name}/is_zero")],
                f"{name}/keep")
    for x, out in zip(inputs[:-1], outputs):
        g.op("Compress", [x, keep], name, out=out, axis=0)


@converter("Parameter")
def parameter(g, node, inputs, outputs, blobs):
    g.op("Identity", [g.constant(blobs[0], f"{node.name}/blob")], node.name, out=outputs[0])


@converter("Silence", "HDF5Output")
def sink(g, node, inputs, outputs, blobs):
    """No output: nothing to compute."""
