"""Convolution, Deconvolution and Im2col exported to ONNX: ORT CPU vs the torch graph on every blob."""
import pytest

from tests.onnx_export.common import export_and_compare, input_layer, layer

CONV = [
    "convolution_param { num_output: 4 kernel_size: 3 }",
    "convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3 }",
    "convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 2 }",
    "convolution_param { num_output: 5 kernel_size: 2 dilation: 2 pad: 1 bias_term: false }",
    "convolution_param { num_output: 3 kernel_size: 3 group: 3 stride: 2 }",
]
NETS = [pytest.param(input_layer(shape=(2, 3, 7, 7)) + layer(t, params=p), id=f"{t}-{i}")
        for t in ("Convolution", "Deconvolution") for i, p in enumerate(CONV)]
NETS += [
    pytest.param(input_layer(shape=(2, 3, 5, 6, 4)) + layer("Convolution", params="convolution_param { num_output: 2 "
                 "kernel_size: 3 kernel_size: 2 kernel_size: 1 pad: 1 }"), id="Convolution-3d"),
    pytest.param(input_layer() + input_layer("data2") + layer("Convolution", ("data", "data2"), ("a", "b"),
                 "convolution_param { num_output: 2 kernel_size: 1 }", name="shared"), id="Convolution-2-bottoms"),
    pytest.param(input_layer(shape=(2, 3, 7, 6)) + layer("Im2col", params="convolution_param { kernel_size: 3 "
                 "stride: 2 pad: 1 }"), id="Im2col-0"),
    pytest.param(input_layer(shape=(2, 2, 5, 5)) + layer("Im2col", params="convolution_param { kernel_h: 2 "
                 "kernel_w: 3 dilation: 2 }"), id="Im2col-1"),
    # windows larger than the padded input by less than the stride (one output reading zeros past the end)
    pytest.param(input_layer(shape=(2, 3, 2, 5)) + layer("Convolution", params="convolution_param { num_output: 2 "
                 "kernel_size: 3 stride: 2 }"), id="Convolution-window-past-the-end"),
    pytest.param(input_layer(shape=(2, 3, 2, 2)) + layer("Im2col", params="convolution_param { kernel_size: 3 "
                 "stride: 2 }"), id="Im2col-window-past-the-end"),
]


@pytest.mark.parametrize("net", NETS)
def test_convolution_matches_torch(net):
    export_and_compare(net)
