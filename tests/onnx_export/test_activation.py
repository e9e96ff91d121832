"""Element-wise layers exported to ONNX: ORT CPU vs the torch graph on every blob."""
import numpy as np
import pytest

from tests.onnx_export.common import export_and_compare, input_layer, layer

CASES = {
    "ReLU": ["", "relu_param { negative_slope: 0.1 }"],
    "PReLU": ["", "prelu_param { channel_shared: true }"],
    "ELU": ["", "elu_param { alpha: 0.5 }"],
    "Sigmoid": [""],
    "TanH": [""],
    "AbsVal": [""],
    "BNLL": [""],
    "Power": ["power_param { power: 2 scale: 0.5 shift: 3 }", "power_param { power: 0.5 scale: 2 shift: 5 }",
              "power_param { power: 3 scale: 0 shift: 2 }", "power_param { power: 0 }"],
    "Exp": ["", "exp_param { base: 2 scale: 0.5 shift: 1 }", "exp_param { scale: -1 shift: 0.5 }"],
    "Log": ["log_param { shift: 6 }", "log_param { base: 10 scale: 2 shift: 7 }", ""],
    "Threshold": ["", "threshold_param { threshold: 0.3 }"],
    "Clip": ["clip_param { min: -0.5 max: 0.7 }", "clip_param { min: 0.7 max: -0.5 }"],  # min > max: min
    "Swish": ["", "swish_param { beta: 1.5 }"],
    "Dropout": ["dropout_param { dropout_ratio: 0.3 }"],
}
NETS = [pytest.param(input_layer() + layer(t, params=p), id=f"{t}-{i}")
        for t, params in CASES.items() for i, p in enumerate(params)]


@pytest.mark.parametrize("net", NETS)
def test_activation_matches_torch(net):
    export_and_compare(net)


def test_in_place_chain_keeps_every_value():
    net = (input_layer() + layer("Convolution", tops=("conv",), params="convolution_param { num_output: 4 "
                                 "kernel_size: 3 }")
           + layer("ReLU", ("conv",), ("conv",), name="relu") + layer("Dropout", ("conv",), ("conv",), name="drop"))
    errors, graph, _ = export_and_compare(net)
    assert set(errors) == {"conv", "conv@relu", "conv@drop"}
    # the net output keeps its Caffe blob name; the pre-activation value moved aside
    assert graph.value_names["conv@drop"] == "conv"
    assert [o.name for o in graph.model.graph.output][0] == "conv"


def test_bnll_over_a_wide_range_matches_torch():
    """Softplus against the layer's float64 form of Caffe's formula, on inputs from -40 to 40."""
    x = np.linspace(-40, 40, 2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
    export_and_compare(input_layer() + layer("BNLL"), feeds={"data": x})


@pytest.mark.parametrize("params,name,expected", [
    # Caffe's Dtype arithmetic: log(base) rounded to float, then the float product / quotient
    ("exp_param { base: 10 scale: 0.7 }", "out/scale", np.float32(np.log(10)) * np.float32(0.7)),
    ("log_param { base: 10 }", "out/base_scale", np.float32(1) / np.float32(np.log(10))),
    ("log_param { base: 7 scale: 2 }", "out/base_scale", np.float32(1) / np.float32(np.log(7))),
])
def test_exp_and_log_constants_are_caffes_float_ones(params, name, expected):
    """Rounding log(base) * scale or 1 / log(base) once from double gives another float for these bases."""
    from onnx import numpy_helper

    type_name = "Exp" if params.startswith("exp") else "Log"
    _, graph, _ = export_and_compare(input_layer(shape=(2, 5)) + layer(type_name, params=params))
    constants = {t.name: numpy_helper.to_array(t) for t in graph.model.graph.initializer}
    assert constants[name] == expected
