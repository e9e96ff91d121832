"""Structural layers, Softmax, ArgMax and Reduction exported to ONNX: ORT CPU vs the torch graph on every blob."""
import numpy as np
import pytest

from tests.onnx_export.common import export_and_compare, input_layer, layer

TWO = input_layer() + input_layer("data2")
DATA2 = ("data", "data2")
CASES = {
    "Concat": [TWO + layer("Concat", DATA2),
               TWO + layer("Concat", DATA2, params="concat_param { axis: -1 }"),
               input_layer() + input_layer("data2", (2, 5, 6, 6))
               + layer("Concat", DATA2, params="concat_param { concat_dim: 1 }")],
    "Slice": [input_layer(shape=(2, 6, 4, 4))
              + layer("Slice", tops=("a", "b", "c"), params="slice_param { slice_point: 1 slice_point: 4 }"),
              input_layer() + layer("Slice", tops=("a", "b"), params="slice_param { axis: 2 }"),
              input_layer() + layer("Slice", tops=("a",))],
    "Split": [input_layer() + layer("Split", tops=("a", "b"))],
    "Flatten": [input_layer() + layer("Flatten"),
                input_layer() + layer("Flatten", params="flatten_param { axis: 2 }"),
                input_layer() + layer("Flatten", params="flatten_param { axis: 0 end_axis: 1 }"),
                input_layer() + layer("Flatten", params="flatten_param { axis: 2 end_axis: 1 }")],
    "Reshape": [input_layer() + layer("Reshape", params="reshape_param { shape { dim: 0 dim: -1 dim: 4 } }"),
                input_layer() + layer("Reshape", params="reshape_param { shape { dim: 9 dim: 4 } axis: 2 }"),
                input_layer() + layer("Reshape", params="reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }"),
                input_layer() + layer("Reshape", params="reshape_param { shape { dim: -1 } axis: -3 }")],
    "Crop": [input_layer() + input_layer("data2", (2, 3, 3, 4))
             + layer("Crop", DATA2, params="crop_param { offset: 1 }"),
             input_layer() + input_layer("data2", (2, 2, 3, 4))
             + layer("Crop", DATA2, params="crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }")],
    "Eltwise": [TWO + layer("Eltwise", DATA2),
                TWO + layer("Eltwise", DATA2, params="eltwise_param { operation: PROD }"),
                TWO + layer("Eltwise", DATA2, params="eltwise_param { operation: MAX }"),
                TWO + input_layer("data3")
                + layer("Eltwise", DATA2 + ("data3",), params="eltwise_param { coeff: 0.5 coeff: -1 coeff: 2 }"),
                TWO + input_layer("data3")
                + layer("Eltwise", DATA2 + ("data3",), params="eltwise_param { operation: PROD }")],
    "Tile": [input_layer() + layer("Tile", params="tile_param { axis: 2 tiles: 3 }"),
             input_layer() + layer("Tile", params="tile_param { axis: 0 tiles: 2 }")],
    "Softmax": [input_layer() + layer("Softmax"),
                input_layer() + layer("Softmax", params="softmax_param { axis: -1 }"),
                input_layer() + layer("Softmax", params="softmax_param { axis: 2 }")],
    "Reduction": [input_layer() + layer("Reduction"),
                  input_layer() + layer("Reduction", params="reduction_param { operation: ASUM axis: 1 coeff: 2 }"),
                  input_layer() + layer("Reduction", params="reduction_param { operation: SUMSQ axis: 2 }"),
                  input_layer() + layer("Reduction", params="reduction_param { operation: MEAN axis: -1 coeff: -3 }")],
    "Parameter": [input_layer() + layer("Parameter", (), ("p",), "parameter_param { shape { dim: 3 dim: 6 } }")
                  + layer("Scale", ("data", "p"), params="scale_param { axis: 1 }")],
    "Silence": [input_layer() + layer("ReLU", tops=("r",)) + layer("Silence", ("r",), ())],
    "HDF5Output": [TWO + layer("HDF5Output", DATA2, (), 'hdf5_output_param { file_name: "unused.h5" }', name="h5")
                   + layer("AbsVal")],
}
NETS = [pytest.param(net, id=f"{t}-{i}") for t, nets in CASES.items() for i, net in enumerate(nets)]


@pytest.mark.parametrize("net", NETS)
def test_structure_layer_matches_torch(net):
    export_and_compare(net)


@pytest.mark.parametrize("params", ["", "argmax_param { top_k: 3 out_max_val: true }", "argmax_param { axis: 1 }",
                                    "argmax_param { axis: 2 top_k: 2 out_max_val: true }",
                                    "argmax_param { axis: -1 top_k: 4 }"])
def test_argmax_breaks_ties_like_caffe(params):
    """Inputs rounded to a few levels have many ties; Caffe's sort gives the larger index first."""
    net = input_layer(shape=(2, 3, 4, 5)) + layer("ArgMax", params=params)
    x = np.round(np.random.default_rng(3).standard_normal((2, 3, 4, 5))).astype(np.float32)
    export_and_compare(net, feeds={"data": x})


def test_argmax_ties_hand_computed():
    """Caffe: [1, 3, 3, 0] -> index 2 first (verified with real Caffe in the notes)."""
    net = input_layer(shape=(1, 4, 1, 1)) + layer("ArgMax", params="argmax_param { top_k: 2 out_max_val: true }")
    x = np.array([1, 3, 3, 0], np.float32).reshape(1, 4, 1, 1)
    errors, graph, _ = export_and_compare(net, feeds={"data": x})
    from tests.onnx_export.common import session
    out = session(graph.model).run(["out"], {"data": x})[0]
    np.testing.assert_array_equal(out.reshape(-1), [2, 1, 3, 3])


def test_batch_reindex_and_filter():
    net = (input_layer(shape=(4, 3, 2, 2)) + input_layer("index", (5,)) + input_layer("keep", (4, 1))
           + layer("BatchReindex", ("data", "index"), ("picked",))
           + layer("Filter", ("data", "keep"), ("kept",)))
    feeds = {"data": np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32),
             "index": np.array([3, 0, 0, 2, 1], np.float32), "keep": np.array([[1], [0], [2], [0]], np.float32)}
    export_and_compare(net, feeds=feeds)


ON_THE_BATCH_AXIS = {
    "Reshape-before-batch": input_layer(shape=(2, 3, 4)) + layer(
        "Reshape", params="reshape_param { shape { dim: 1 } axis: 0 num_axes: 0 }"),
    "Crop-axis-0": input_layer(shape=(2, 3, 6, 6)) + input_layer("data2", (2, 2, 3, 4))
    + layer("Crop", DATA2, params="crop_param { axis: 0 offset: 0 offset: 1 offset: 2 offset: 1 }"),
    "Slice-axis-0": input_layer(shape=(3, 2)) + layer(
        "Slice", tops=("a", "b", "c"), params="slice_param { axis: 0 slice_point: 1 slice_point: 2 }"),
    "Reduction-MEAN-axis-0": input_layer(shape=(2, 3)) + layer(
        "Reduction", params="reduction_param { operation: MEAN axis: 0 coeff: 3 }"),
    "ArgMax-axis-0": input_layer(shape=(2, 3, 4)) + layer("ArgMax", params="argmax_param { axis: 0 top_k: 2 }"),
}


@pytest.mark.parametrize("net", [pytest.param(net, id=name) for name, net in ON_THE_BATCH_AXIS.items()])
def test_layer_on_the_batch_axis_follows_a_dynamic_batch(net):
    """Sizes on axis 0 come from the input at run time, never the prototxt's batch: at batch 5 the graph (declared
    with a dynamic N) gives the torch graph's numbers and shapes (Caffe reshaped to 5)."""
    _, graph, _ = export_and_compare(net)
    assert graph.inputs["data"][0] == "N"
    export_and_compare(net, run_batch=5)
