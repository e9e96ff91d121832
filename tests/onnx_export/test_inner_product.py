"""InnerProduct and Embed exported to ONNX: ORT CPU vs the torch graph on every blob."""
import numpy as np
import pytest

from tests.onnx_export.common import export_and_compare, input_layer, layer

NETS = [pytest.param(input_layer(shape=shape) + layer("InnerProduct", params=f"inner_product_param {{ {p} }}"),
                     id=f"InnerProduct-{i}")
        for i, (shape, p) in enumerate([
            ((2, 3, 4, 4), "num_output: 5"),
            ((2, 3, 4, 4), "num_output: 5 transpose: true"),
            ((2, 3, 4, 4), "num_output: 5 bias_term: false"),
            ((2, 3, 4, 4), "num_output: 7 axis: 3"),
            ((2, 3, 4, 4), "num_output: 2 axis: -2 transpose: true"),
            ((2, 3, 4, 4), "num_output: 4 axis: 0"),
            ((2, 6), "num_output: 3"),
        ])]


@pytest.mark.parametrize("net", NETS)
def test_inner_product_matches_torch(net):
    export_and_compare(net)


@pytest.mark.parametrize("bias", ["true", "false"])
def test_embed_truncates_indices_like_caffe(bias):
    net = input_layer(shape=(2, 5)) + layer("Embed", params=f"embed_param {{ input_dim: 7 num_output: 3 "
                                                            f"bias_term: {bias} }}")
    x = np.array([[0, 1.9, 6.99, 3, 2.5], [6, 0.2, 4, 5.5, 1]], np.float32)
    export_and_compare(net, feeds={"data": x})
