"""InnerProduct (Flatten + Gemm on axis 1, MatMul otherwise) and Embed (Gather)."""
from __future__ import annotations

from caffeinit.onnx_export.registry import converter
from caffeinit.onnx_export.structure import reshape_keep_leading


@converter("InnerProduct")
def inner_product(g, node, inputs, outputs, blobs):
    layer, name = node.layer, node.name
    weight = blobs[0].reshape(layer.blob_shapes[0])  # [N, K], or [K, N] with transpose
    bias = [g.constant(blobs[1].reshape(-1), f"{name}/bias")] if layer.bias_term else []
    if layer.axis == 1:
        rows = g.op("Flatten", inputs, f"{name}/rows", axis=1)
        g.op("Gemm", [rows, g.constant(weight, f"{name}/weight")] + bias, name, out=outputs[0],
             transB=0 if layer.transpose else 1)
        return
    rows = reshape_keep_leading(g, inputs[0], layer.axis, [-1], f"{name}/rows")
    matrix = weight if layer.transpose else weight.T
    product = g.op("MatMul", [rows, g.constant(matrix, f"{name}/weight")], name,
                   out=None if bias else outputs[0])
    if bias:
        g.op("Add", [product] + bias, name, out=outputs[0])


@converter("Embed")
def embed(g, node, inputs, outputs, blobs):
    """Row int(x) of the weight (Cast truncates toward zero like Caffe's static_cast)."""
    name = node.name
    index = g.op("Cast", inputs, f"{name}/index", to=7)  # 7 = INT64
    rows = g.op("Gather", [g.constant(blobs[0], f"{name}/weight"), index], name,
                out=None if node.layer.bias_term else outputs[0], axis=0)
    if node.layer.bias_term:
        g.op("Add", [rows, g.constant(blobs[1].reshape(-1), f"{name}/bias")], name, out=outputs[0])
